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

    There is no norm in front of the mixer: it normalises its input itself. Each residual
    add is fused with the LayerNorm after it (:meth:`LayerNorm.add_and_norm`): the FFN's,
    and, where a :class:`GroupMambaStage` chains blocks, the next block's input norm or
    the stage's output norm.

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

    def forward(self, x, normed=None, next_norm=None):
        """The block's output for ``x``.

        Args:
            normed: ``self.mixer.norm(x)`` where the caller has it (from the residual add
                before, :class:`GroupMambaStage`); else the mixer computes it.
            next_norm: a LayerNorm that follows the block: the output's last residual add
                is fused with it and the block returns ``(output, next_norm(output))``.
        """
        if self.execution.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, normed, next_norm, use_reentrant=False)
        return self._forward(x, normed, next_norm)

    def _forward(self, x, normed, next_norm):
        if normed is None:
            normed = self.mixer.norm(x)
        y = self.mixer.forward_normalized(normed)
        x, normed = self.norm.add_and_norm(x, y, self.drop_path.factor(y, x.dtype))
        y = self.ffn(normed)
        if next_norm is None:
            return self.drop_path(x, y)
        return next_norm.add_and_norm(x, y, self.drop_path.factor(y, x.dtype))


class GroupMambaStage(nn.Sequential):
    """The blocks of one stage (``nn.Sequential``: the state-dict keys are the blocks'
    indices), each block's last residual add fused with the next block's input norm.

    ``stage(x)`` is the blocks applied in turn; ``stage(x, norm)`` also applies the
    stage's output norm (fused with the last add). Where the blocks checkpoint
    (``with_cp`` and an input that requires grad) they run one by one: a checkpointed
    block keeps only its input, which fusing would make two maps (the input and its norm).
    """

    def forward(self, x, norm=None):
        blocks = list(self)
        if not blocks or (blocks[0].execution.with_cp and x.requires_grad):
            for block in blocks:
                x = block(x)
            return x if norm is None else norm(x)
        normed = None
        for i, block in enumerate(blocks):
            following = blocks[i + 1].mixer.norm if i + 1 < len(blocks) else norm
            out = block(x, normed, following)
            x, normed = out if following is not None else (out, None)
        return x if norm is None else normed


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
