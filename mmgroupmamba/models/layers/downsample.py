"""Stage 2-4 embedding: a strided 3x3 convolution followed by LayerNorm."""
import torch.nn as nn

from .norm import LayerNorm


class Downsample(nn.Module):
    """Halve the resolution and change the width.

    Input and output are channels-last maps: (B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = LayerNorm(out_channels, eps=1e-5)

    def forward(self, x):
        x = self.proj(x.permute(0, 3, 1, 2))
        return self.norm(x.permute(0, 2, 3, 1))
