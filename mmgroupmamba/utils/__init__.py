from .checkpoint_io import (TRUST_ENV, UnreadableCheckpointError, UnsafeCheckpointError,
                            atomic_write, checkpoint_safe_globals, load_checkpoint_file,
                            save_checkpoint_file, trusted_checkpoints,
                            unlisted_globals)
from .compat import apply_compat_patches
from .official_checkpoint import (NotAGroupMambaCheckpoint, convert_official_state_dict,
                                  infer_official_arch, is_official_state_dict,
                                  unwrap_state_dict)
from .pretrained import backbone_state_dict_from_checkpoint, load_backbone_weights

__all__ = ['TRUST_ENV', 'UnreadableCheckpointError', 'UnsafeCheckpointError',
           'atomic_write', 'checkpoint_safe_globals', 'load_checkpoint_file',
           'save_checkpoint_file', 'trusted_checkpoints', 'unlisted_globals',
           'apply_compat_patches',
           'NotAGroupMambaCheckpoint', 'convert_official_state_dict',
           'infer_official_arch', 'is_official_state_dict', 'unwrap_state_dict',
           'backbone_state_dict_from_checkpoint', 'load_backbone_weights']
