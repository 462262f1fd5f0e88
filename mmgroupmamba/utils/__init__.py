from .compat import apply_compat_patches, load_trusted_local_checkpoint
from .official_checkpoint import (NotAGroupMambaCheckpoint, convert_official_state_dict,
                                  infer_official_arch, is_official_state_dict,
                                  unwrap_state_dict)
from .pretrained import backbone_state_dict_from_checkpoint, load_backbone_weights

__all__ = ['apply_compat_patches', 'load_trusted_local_checkpoint',
           'NotAGroupMambaCheckpoint', 'convert_official_state_dict',
           'infer_official_arch', 'is_official_state_dict', 'unwrap_state_dict',
           'backbone_state_dict_from_checkpoint', 'load_backbone_weights']
