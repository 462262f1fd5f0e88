"""Read the GroupMamba authors' released checkpoints.

Released keys (``patch_embed1.conv.0.weight``, ``block3.7.attn.mamba_g2.A_logs``,
``post_network.0.mlp.fc1.weight``, ``head.weight``, ...) are renamed to the keys of an
mmpretrain ``ImageClassifier`` built from our modules (``backbone.*``, ``head.*``), and
the architecture is read off the tensor shapes.
"""
import re
from typing import Dict, Mapping

import torch

# Wrappers seen around a state dict, in the order they are preferred. The authors' training
# script saves 'model' (and 'model_ema'); the published files are flat; mmengine saves
# 'state_dict' (the EMA weights, when EMAHook ran).
STATE_DICT_KEYS = ('state_dict', 'model_ema', 'model')

_VSSS_RENAMES = {
    'in_proj.weight': 'in_proj.weight',
    'conv2d.weight': 'conv.weight',
    'conv2d.bias': 'conv.bias',
    'x_proj_weight': 'x_proj.weight',
    'dt_projs_weight': 'dt_proj.weight',
    'dt_projs_bias': 'dt_proj.bias',
    'A_logs': 'A_log',
    'Ds': 'D',
    'out_norm.weight': 'out_norm.weight',
    'out_norm.bias': 'out_norm.bias',
    'out_proj.weight': 'out_proj.weight',
}
# The released code stacks a leading "number of directions" axis of size 1 on these.
_SQUEEZE_LEADING = ('x_proj_weight', 'dt_projs_weight', 'dt_projs_bias')

_MIXER_RENAMES = {
    'skip_scale': 'skip_scale',
    'fc1.weight': 'affinity.fc1.weight',
    'fc1.bias': 'affinity.fc1.bias',
    'fc2.weight': 'affinity.fc2.weight',
    'fc2.bias': 'affinity.fc2.bias',
    'norm.weight': 'norm.weight',
    'norm.bias': 'norm.bias',
    'proj.weight': 'proj.weight',
    'proj.bias': 'proj.bias',
}


class NotAGroupMambaCheckpoint(ValueError):
    """Raised for a state dict that is not a released GroupMamba checkpoint."""


def unwrap_state_dict(checkpoint: Mapping, key: str = 'auto') -> Dict[str, torch.Tensor]:
    """Return the state dict inside a checkpoint (flat, or under a known wrapper key)."""
    if not isinstance(checkpoint, Mapping):
        raise NotAGroupMambaCheckpoint(
            f'Expected a checkpoint dict, got {type(checkpoint).__name__}.')
    if key != 'auto':
        if key not in checkpoint:
            raise KeyError(f'Checkpoint has no {key!r} entry; it has {sorted(checkpoint)}.')
        return dict(checkpoint[key])
    for name in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(name), Mapping):
            return dict(checkpoint[name])
    return dict(checkpoint)


def is_official_state_dict(state_dict: Mapping) -> bool:
    return any(re.match(r'(module\.)?patch_embed1\.proj\.weight$', k) for k in state_dict)


def _strip_module(state_dict):
    return {k[len('module.'):] if k.startswith('module.') else k: v
            for k, v in state_dict.items()}


def infer_official_arch(state_dict: Mapping) -> dict:
    """Read the architecture of a released checkpoint off its tensor shapes.

    Returns a dict with ``stem_channels``, ``embed_dims``, ``depths``, ``mlp_ratios``,
    ``num_classes`` (0 without a head) and ``cls_mlp_ratio``.
    """
    sd = _strip_module(state_dict)
    required = ['patch_embed1.conv.0.weight'] + [
        f'patch_embed{i}.proj.weight' for i in range(1, 5)] + [
        f'block{i}.0.attn.mamba_g1.in_proj.weight' for i in range(1, 5)]
    missing = [k for k in required if k not in sd]
    if missing:
        raise NotAGroupMambaCheckpoint(
            'This is not a released GroupMamba checkpoint: it lacks '
            f'{", ".join(missing[:4])}{" ..." if len(missing) > 4 else ""} '
            f'(it has {len(sd)} keys, e.g. {list(sd)[:3]}).')
    embed_dims = [sd[f'patch_embed{i}.proj.weight'].shape[0] for i in range(1, 5)]
    depths = [len({int(m.group(1)) for k in sd
                   for m in [re.match(rf'block{i}\.(\d+)\.', k)] if m})
              for i in range(1, 5)]
    mlp_ratios = [sd[f'block{i}.0.mlp.fc1.weight'].shape[0] / embed_dims[i - 1]
                  for i in range(1, 5)]
    mlp_ratios = [int(r) if float(r).is_integer() else r for r in mlp_ratios]
    cls_fc1 = sd.get('post_network.0.mlp.fc1.weight')
    cls_ratio = cls_fc1.shape[0] / embed_dims[-1] if cls_fc1 is not None else mlp_ratios[-1]
    return dict(
        stem_channels=sd['patch_embed1.conv.0.weight'].shape[0],
        embed_dims=embed_dims,
        depths=depths,
        mlp_ratios=mlp_ratios,
        num_classes=sd['head.weight'].shape[0] if 'head.weight' in sd else 0,
        cls_mlp_ratio=int(cls_ratio) if float(cls_ratio).is_integer() else cls_ratio,
    )


def _rename_mixer(rest: str, prefix: str) -> str:
    m = re.match(r'mamba_g(\d)\.(.+)$', rest)
    if m:
        group, name = int(m.group(1)) - 1, m.group(2)
        if name in _VSSS_RENAMES:
            return f'{prefix}.groups.{group}.{_VSSS_RENAMES[name]}'
    elif rest in _MIXER_RENAMES:
        return f'{prefix}.{_MIXER_RENAMES[rest]}'
    return None


def official_key_to_mm(key: str):
    """Our ImageClassifier key for a released key (None if the key has no counterpart)."""
    m = re.match(r'patch_embed1\.(.+)$', key)
    if m:
        return f'backbone.patch_embeds.0.{m.group(1)}'
    m = re.match(r'patch_embed([234])\.(proj|norm)\.(weight|bias)$', key)
    if m:
        return f'backbone.patch_embeds.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}'
    m = re.match(r'block(\d)\.(\d+)\.(.+)$', key)
    if m:
        stage, idx, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
        prefix = f'backbone.stages.{stage}.{idx}'
        if rest.startswith('attn.'):
            return _rename_mixer(rest[len('attn.'):], f'{prefix}.mixer')
        sub = {'norm2.weight': 'norm.weight', 'norm2.bias': 'norm.bias',
               'mlp.fc1.weight': 'ffn.fc1.weight', 'mlp.fc1.bias': 'ffn.fc1.bias',
               'mlp.dwconv.dwconv.weight': 'ffn.dwconv.weight',
               'mlp.dwconv.dwconv.bias': 'ffn.dwconv.bias',
               'mlp.fc2.weight': 'ffn.fc2.weight', 'mlp.fc2.bias': 'ffn.fc2.bias'}.get(rest)
        return f'{prefix}.{sub}' if sub else None
    m = re.match(r'norm([123])\.(weight|bias)$', key)
    if m:
        return f'backbone.norm{int(m.group(1)) - 1}.{m.group(2)}'
    m = re.match(r'norm4\.(weight|bias)$', key)
    if m:
        return f'head.norm.{m.group(1)}'
    m = re.match(r'post_network\.0\.(.+)$', key)
    if m:
        rest = m.group(1)
        if rest.startswith('attn.'):
            return _rename_mixer(rest[len('attn.'):], 'head.class_block.mixer')
        m2 = re.match(r'(norm1|norm2)\.(weight|bias)$', rest)
        if m2:
            return f'head.class_block.{rest}'
        m2 = re.match(r'mlp\.(fc1|fc2)\.(weight|bias)$', rest)
        if m2:
            return f'head.class_block.ffn.{m2.group(1)}.{m2.group(2)}'
        return None
    m = re.match(r'(head|dist_head)\.(weight|bias)$', key)
    if m:
        return f'head.{"fc" if m.group(1) == "head" else "dist_fc"}.{m.group(2)}'
    return None


def convert_official_state_dict(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """Rename a released state dict to our ImageClassifier's keys.

    Raises :class:`NotAGroupMambaCheckpoint` for anything else, and a ``KeyError`` naming
    released keys this converter does not know (so nothing is dropped silently).
    """
    sd = _strip_module(state_dict)
    infer_official_arch(sd)  # validates the checkpoint
    out, unknown = {}, []
    for key, value in sd.items():
        new_key = official_key_to_mm(key)
        if new_key is None:
            unknown.append(key)
            continue
        if key.rsplit('.', 1)[-1] in _SQUEEZE_LEADING and value.dim() > 1 \
                and value.shape[0] == 1:
            value = value[0]
        out[new_key] = value
    if unknown:
        raise KeyError(f'{len(unknown)} released keys have no counterpart in our model: '
                       f'{unknown[:5]}')
    return out
