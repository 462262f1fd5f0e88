"""The GroupMamba backbone of any config (classification, detection, segmentation) on its
own, for tools that look at the backbone alone (ONNX export, receptive fields)."""
from typing import Optional, Sequence

import torch.nn as nn


def backbone_from_config(cfg, checkpoint: Optional[str] = None,
                         out_indices: Optional[Sequence[int]] = None) -> nn.Module:
    """Build ``cfg.model.backbone`` (a GroupMamba) in eval mode, without CUDA graphs.

    Weights: ``checkpoint`` (ours: a classifier's, detector's or segmentor's
    ``backbone.*``, or a bare backbone; or a released file), loaded strictly by
    :func:`~mmgroupmamba.utils.load_backbone_weights`; without one, the backbone's own
    initialisation. The config's ``init_cfg`` (e.g. ImageNet weights of a detection
    config) is not used: only ``checkpoint`` decides the weights.
    """
    from mmengine.registry import MODELS

    from mmgroupmamba.execution import eager_backbone_config
    from mmgroupmamba.utils import load_backbone_weights
    backbone_cfg = cfg.model.backbone.copy()
    if backbone_cfg.get('type') != 'GroupMamba':
        raise ValueError(f'{cfg.filename}: expected a GroupMamba backbone, got '
                         f'{backbone_cfg.get("type")!r}.')
    backbone_cfg.pop('init_cfg', None)
    backbone_cfg = eager_backbone_config(backbone_cfg)
    if out_indices is not None:
        backbone_cfg['out_indices'] = tuple(out_indices)
    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    if checkpoint:
        load_backbone_weights(backbone, checkpoint)
    return backbone.eval()
