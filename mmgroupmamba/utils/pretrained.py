"""Load pretrained weights into a GroupMamba backbone, loudly.

Accepts our checkpoints (a classifier's ``backbone.*`` or a bare backbone) and the
released ones (flat, or under ``model``/``model_ema``/``state_dict``). A checkpoint with
no matching key or with mismatched shapes is an error, not a warning followed by a random
initialisation.
"""
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .official_checkpoint import (convert_official_state_dict, is_official_state_dict,
                                  unwrap_state_dict)


def backbone_state_dict_from_checkpoint(checkpoint, prefix=None):
    """Extract backbone weights (our key names) from a loaded checkpoint object."""
    sd = unwrap_state_dict(checkpoint)
    sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    if is_official_state_dict(sd):
        sd = convert_official_state_dict(sd)
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in sd) else ''
    elif prefix and not prefix.endswith('.'):
        prefix += '.'
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    # A classifier's final norm (the released ``norm4``) initialises the stage-4 output
    # norm that dense-prediction backbones add.
    for name in ('weight', 'bias'):
        if f'norm3.{name}' not in out and f'head.norm.{name}' in sd:
            out[f'norm3.{name}'] = sd[f'head.norm.{name}']
    return out


def load_backbone_weights(backbone, filename, prefix=None, map_location='cpu'):
    """Load ``filename`` into ``backbone``; raise on a checkpoint that does not fit."""
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    state = backbone_state_dict_from_checkpoint(checkpoint, prefix)
    own = backbone.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise ValueError(
            f'Checkpoint {filename} has no weights for {type(backbone).__name__}: none of '
            f'its {len(state)} keys (e.g. {list(state)[:3]}) matches the model '
            f'(e.g. {list(own)[:3]}). Wrong file or wrong prefix={prefix!r}?')
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in matched
                  if state[k].shape != own[k].shape]
    if mismatched:
        lines = '\n'.join(f'  {k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:8])
        raise ValueError(
            f'Checkpoint {filename} does not match this GroupMamba architecture '
            f'({len(mismatched)} shape mismatches, e.g.\n{lines}\n). '
            'Check the arch of the config against the checkpoint.')
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    backbone.load_state_dict({k: state[k] for k in matched}, strict=False)
    print_log(f'Loaded {len(matched)}/{len(own)} backbone tensors from {filename}.',
              logger='current')
    if missing:
        print_log(f'Backbone keys not in the checkpoint ({len(missing)}), left at their '
                  f'initialisation: {missing[:10]}', logger='current', level=30)
    if unexpected:
        print_log(f'Checkpoint keys not used by the backbone ({len(unexpected)}): '
                  f'{unexpected[:10]}', logger='current', level=30)
    return missing, unexpected
