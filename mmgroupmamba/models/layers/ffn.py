"""Feed-forward networks of the GroupMamba blocks."""
import torch.nn as nn

from mmgroupmamba.ops import depthwise_conv3x3_act


class ConvFFN(nn.Module):
    """Linear C->rC, depthwise 3x3 conv over the feature map, GELU, linear rC->C.

    The depthwise conv gives every block some local mixing the scans do not. Works on
    channels-last maps (B, H, W, C). The conv, its bias and the GELU run as
    :func:`mmgroupmamba.ops.depthwise_conv3x3_act` (one kernel on CUDA that reads the
    channels-last map as it is and keeps only its input for the backward; the PyTorch
    composition elsewhere).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        x = depthwise_conv3x3_act(self.fc1(x), self.dwconv.weight, self.dwconv.bias, 'gelu')
        return self.fc2(x)


class Mlp(nn.Module):
    """Plain two-layer MLP (linear, GELU, linear) of the class-token block."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
