"""Feed-forward networks of the GroupMamba blocks."""
import torch.nn as nn


class ConvFFN(nn.Module):
    """Linear C->rC, depthwise 3x3 conv over the feature map, GELU, linear rC->C.

    The depthwise conv gives every block some local mixing the scans do not. Works on
    channels-last maps (B, H, W, C).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))


class Mlp(nn.Module):
    """Plain two-layer MLP (linear, GELU, linear) of the class-token block."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
