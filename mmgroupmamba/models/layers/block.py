"""GroupMamba block and the class-token block of the classifier."""
from typing import Optional

import torch.nn as nn
import torch.utils.checkpoint as cp

from mmgroupmamba.execution import ExecutionPolicy, share_execution

from .drop_path import ResidualDropPath
from .ffn import ConvFFN, Mlp
from .group_mamba_layer import ModulatedGroupMamba
from .norm import LayerNorm


class GroupMambaBlock(nn.Module):
    """``x + DropPath(MGM(x))`` then ``x + DropPath(ConvFFN(LN(x)))`` (each residual add
    with its drop path one :class:`ResidualDropPath`).

    There is no norm in front of the mixer: it normalises its input itself.
    Channels-last maps (B, H, W, C) in and out. ``execution``
    (:class:`~mmgroupmamba.execution.ExecutionPolicy`, shared with every layer inside):
    ``with_cp`` checkpoints the block.
    """

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.,
                 d_state: int = 1, execution: Optional[ExecutionPolicy] = None):
        super().__init__()
        self.mixer = ModulatedGroupMamba(dim, d_state=d_state)
        self.norm = LayerNorm(dim, eps=1e-6, amp_output=True)  # feeds the FFN's fc1
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.drop_path = ResidualDropPath(drop_path)
        self.execution = share_execution(self, execution or ExecutionPolicy())

    def _forward(self, x):
        x = self.drop_path(x, self.mixer(x))
        return self.drop_path(x, self.ffn(self.norm(x)))

    def forward(self, x):
        if self.execution.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class ClassBlock(nn.Module):
    """Updates a class token (the mean of the last stage's tokens), as released.

    ``c = c + LN1(MGM(c))`` on a 1 x 1 map, then ``c = c + MLP(LN2(c))``.
    Input and output (B, C).
    """

    def __init__(self, dim: int, mlp_ratio: float, d_state: int = 1,
                 execution: Optional[ExecutionPolicy] = None):
        super().__init__()
        self.mixer = ModulatedGroupMamba(dim, d_state=d_state)
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, int(dim * mlp_ratio))
        self.execution = share_execution(self, execution or ExecutionPolicy())

    def forward(self, cls_token):
        cls_token = cls_token + self.norm1(self.mixer(cls_token[:, None, None, :]))[:, 0, 0]
        return cls_token + self.ffn(self.norm2(cls_token))
