"""Stage-1 embedding of the released GroupMamba: a small conv stack, output stride 4."""
import torch
import torch.nn as nn

from .norm import LayerNorm


class ConvStem(nn.Module):
    """conv7x7/2 -> (BN, ReLU) -> 2 x [conv3x3 -> BN -> ReLU] -> conv3x3/2 -> LayerNorm.

    The paper describes two strided 3x3 convolutions; the released checkpoints use this
    four-conv stem, and the submodule names (``conv.{0,1,3,4,6,7}``, ``proj``, ``norm``)
    follow them so released weights map one to one.

    Input (B, C_in, H, W); output channels-last (B, ceil(H/4), ceil(W/4), C).
    """

    def __init__(self, in_channels: int, hidden_channels: int, embed_dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_channels, embed_dim, 3, stride=2, padding=1)
        self.norm = LayerNorm(embed_dim, eps=1e-5)

    def forward(self, x):
        if x.is_cuda:
            # cuDNN's convolutions and BatchNorm run channels-last natively (no layout
            # conversions around every conv), and the output needs no copy to become the
            # channels-last map the stages take
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.proj(self.conv(x))
        return self.norm(x.permute(0, 2, 3, 1))
