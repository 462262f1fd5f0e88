"""Feed-forward networks of the GroupMamba blocks."""
import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from mmgroupmamba.execution import ExecutionPolicy, share_execution
from mmgroupmamba.ops import depthwise_conv3x3_act
from mmgroupmamba.utils.amp import training_casts
from .linear import Linear


class ConvFFN(nn.Module):
    """Linear C->rC, depthwise 3x3 conv over the feature map, GELU, linear rC->C.

    The depthwise conv gives every block some local mixing the scans do not. Works on
    channels-last maps (B, H, W, C). The conv, its bias and the GELU run as
    :func:`mmgroupmamba.ops.depthwise_conv3x3_act` (one kernel on CUDA that reads the
    channels-last map as it is and keeps only its input for the backward; the PyTorch
    composition elsewhere).

    The execution policy's ``ffn_cp`` (``self.execution``): while training, keep only the
    conv's input and recompute its output (fc2's input) in the backward: the block's
    widest activation is then held once instead of twice.

    In an eager autocast training step the two linears' parameters are cast together
    (:func:`~mmgroupmamba.utils.amp.training_casts`), not by autocast one by one.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)
        self.execution = share_execution(self, ExecutionPolicy())

    def _conv_fc2(self, h, fc2_cast=None):
        return self.fc2(depthwise_conv3x3_act(h, self.dwconv.weight, self.dwconv.bias, 'gelu',
                                              fused=self.execution.fused_kernels),
                        cast=fc2_cast)

    def forward(self, x):
        cast = training_casts(x, (self.fc1.weight, self.fc1.bias, self.fc2.weight,
                                  self.fc2.bias))
        fc1_cast, fc2_cast = (None, None) if cast is None else (cast[:2], cast[2:])
        h = self.fc1(x, cast=fc1_cast)
        if self.execution.ffn_cp and torch.is_grad_enabled() and h.requires_grad:
            return cp.checkpoint(self._conv_fc2, h, fc2_cast, use_reentrant=False)
        return self._conv_fc2(h, fc2_cast)


class Mlp(nn.Module):
    """Plain two-layer MLP (linear, GELU, linear) of the class-token block."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
