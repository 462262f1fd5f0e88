"""Stochastic depth on a residual branch, added to the trunk in one pass."""
from typing import Optional

import torch
import torch.nn as nn

from mmgroupmamba.ops.fused_layer_norm import residual_add


class ResidualDropPath(nn.Module):
    """``x + DropPath(y)``: the branch ``y`` of each sample kept with probability
    ``1 - drop_prob`` (and scaled by its inverse) or dropped, then added to ``x``.

    mmcv's ``DropPath`` followed by the residual add passes over the map three times in
    the forward (scale, mask, add) and three in the backward; here the per-sample factor
    ``mask / keep`` is one number per sample and ``torch.addcmul`` adds ``y`` times it
    to ``x`` in one pass (two in the backward), the factor in ``x``'s dtype (the trunk's:
    float32 under autocast). The masks are drawn as mmcv draws them (``floor(keep +
    rand)``, one uniform number per sample). Outside training, or with ``drop_prob = 0``:
    ``x + y``. Where a LayerNorm follows the add, the block passes :meth:`factor` to
    :meth:`LayerNorm.add_and_norm <mmgroupmamba.models.layers.LayerNorm.add_and_norm>`,
    which adds and normalises in one pass.
    """

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        if not 0. <= drop_prob < 1.:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}.')
        self.drop_prob = float(drop_prob)

    def factor(self, y: torch.Tensor, dtype: torch.dtype = None) -> Optional[torch.Tensor]:
        """The per-sample factor ``mask / keep`` (B,) for branch ``y``, in ``dtype``
        (``y``'s by default); None when nothing is dropped (eval, ``drop_prob = 0``)."""
        if self.drop_prob == 0. or not self.training:
            return None
        keep = 1. - self.drop_prob
        mask = torch.rand(y.shape[0], dtype=dtype or y.dtype, device=y.device)
        return mask.add_(keep).floor_().div_(keep)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return residual_add(x, y, self.factor(y, x.dtype))

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
