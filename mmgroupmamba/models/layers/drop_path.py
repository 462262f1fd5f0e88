"""Stochastic depth on a residual branch, added to the trunk in one pass."""
import torch
import torch.nn as nn


class ResidualDropPath(nn.Module):
    """``x + DropPath(y)``: the branch ``y`` of each sample kept with probability
    ``1 - drop_prob`` (and scaled by its inverse) or dropped, then added to ``x``.

    mmcv's ``DropPath`` followed by the residual add passes over the map three times in
    the forward (scale, mask, add) and three in the backward; here the per-sample factor
    ``mask / keep`` is a (B, 1, ..., 1) tensor and ``torch.addcmul`` adds ``y`` times it
    to ``x`` in one pass (two in the backward), the factor in ``x``'s dtype (the trunk's:
    float32 under autocast). The masks are drawn as mmcv draws them (``floor(keep +
    rand)``, one uniform number per sample). Outside training, or with ``drop_prob = 0``:
    ``x + y``.
    """

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        if not 0. <= drop_prob < 1.:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}.')
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x + y
        keep = 1. - self.drop_prob
        shape = (y.shape[0], ) + (1, ) * (y.dim() - 1)
        scale = torch.rand(shape, dtype=x.dtype, device=y.device).add_(keep).floor_()
        # outside autocast, whose promotion would first copy a half-precision y to
        # float32; the element-wise kernel converts as it reads
        with torch.autocast(y.device.type, enabled=False):
            return torch.addcmul(x, y, scale.div_(keep))

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
