"""RegNet with timm's module layout, so timm / DeiT RegNet checkpoints load as they are.

The DeiT teacher of GroupMamba's distillation is timm's ``regnety_160`` (RegNetY-16GF) with
the weights ``regnety_160-a5fe301d.pth`` published by DeiT. timm needs torchvision, which
is not always importable beside the training torch (CPU builds, new torch releases), so
this file rebuilds the network from plain ``torch.nn`` with the same parameter and buffer
names (``stem.conv``, ``s1.b1.conv2.bn``, ``s4.b1.se.fc1``, ``head.fc``, ...): a timm
state dict loads with ``strict=True`` and the forward is the same function.

Only what a teacher needs is implemented: RegNet-X/Y with BatchNorm + ReLU, output stride
32, conv1x1 shortcuts (timm's defaults for these models). Drop path and dropout are left
out: a teacher runs in eval mode.
"""
import math
from typing import List, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.registry import MODELS

# (w0, wa, wm, group_size, depth, se_ratio), copied from timm's ``model_cfgs``.
REGNET_ARCHS = {
    'regnetx_002': (24, 36.44, 2.49, 8, 13, 0.),
    'regnetx_004': (24, 24.48, 2.54, 16, 22, 0.),
    'regnetx_006': (48, 36.97, 2.24, 24, 16, 0.),
    'regnetx_008': (56, 35.73, 2.28, 16, 16, 0.),
    'regnetx_016': (80, 34.01, 2.25, 24, 18, 0.),
    'regnetx_032': (88, 26.31, 2.25, 48, 25, 0.),
    'regnetx_040': (96, 38.65, 2.43, 40, 23, 0.),
    'regnetx_064': (184, 60.83, 2.07, 56, 17, 0.),
    'regnetx_080': (80, 49.56, 2.88, 120, 23, 0.),
    'regnetx_120': (168, 73.36, 2.37, 112, 19, 0.),
    'regnetx_160': (216, 55.59, 2.1, 128, 22, 0.),
    'regnetx_320': (320, 69.86, 2.0, 168, 23, 0.),
    'regnety_002': (24, 36.44, 2.49, 8, 13, 0.25),
    'regnety_004': (48, 27.89, 2.09, 8, 16, 0.25),
    'regnety_006': (48, 32.54, 2.32, 16, 15, 0.25),
    'regnety_008': (56, 38.84, 2.4, 16, 14, 0.25),
    'regnety_016': (48, 20.71, 2.65, 24, 27, 0.25),
    'regnety_032': (80, 42.63, 2.66, 24, 21, 0.25),
    'regnety_040': (96, 31.41, 2.24, 64, 22, 0.25),
    'regnety_064': (112, 33.22, 2.27, 72, 25, 0.25),
    'regnety_080': (192, 76.82, 2.19, 56, 17, 0.25),
    'regnety_120': (168, 73.36, 2.37, 112, 19, 0.25),
    'regnety_160': (200, 106.23, 2.48, 112, 18, 0.25),
    'regnety_320': (232, 115.89, 2.53, 232, 20, 0.25),
}


def regnet_stages(w0: float, wa: float, wm: float, group_size: int, depth: int,
                  quant: int = 8) -> Tuple[List[int], List[int], List[int]]:
    """Per-stage widths, depths and group widths of a RegNet, computed as timm does
    (``generate_regnet`` + ``adjust_widths_groups_comp`` with bottleneck ratio 1).

    ``regnety_160`` gives widths (224, 448, 1232, 3024), depths (2, 4, 11, 1), groups 112.
    """
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % quant == 0):
        raise ValueError(f'Invalid RegNet parameters w0={w0}, wa={wa}, wm={wm}.')
    widths_cont = np.arange(depth) * wa + w0
    exps = np.round(np.log(widths_cont / w0) / np.log(wm))
    widths = np.round(np.divide(w0 * np.power(wm, exps), quant)) * quant
    stage_widths, stage_depths = np.unique(widths.astype(int), return_counts=True)
    groups = [min(group_size, int(w)) for w in stage_widths]
    # Make every stage width a multiple of its group width (quantize_float in timm).
    stage_widths = [int(round(int(w) / g) * g) for w, g in zip(stage_widths, groups)]
    return stage_widths, [int(d) for d in stage_depths], groups


class ConvBN(nn.Module):
    """timm's ``ConvNormAct``: conv (no bias) -> BatchNorm -> optional ReLU."""

    def __init__(self, in_chs, out_chs, kernel_size, stride=1, groups=1, act=True):
        super().__init__()
        # timm's default symmetric padding: 3x3 -> 1, 1x1 -> 0 for strides 1 and 2.
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """timm's ``SEModule`` (1x1 convs with bias, ReLU, sigmoid gate)."""

    def __init__(self, channels, rd_channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class RegBottleneck(nn.Module):
    """timm's RegNet ``Bottleneck`` (bottleneck ratio 1, SE after the grouped conv)."""

    def __init__(self, in_chs, out_chs, stride, group_size, se_ratio):
        super().__init__()
        groups = out_chs // group_size
        self.conv1 = ConvBN(in_chs, out_chs, 1)
        self.conv2 = ConvBN(out_chs, out_chs, 3, stride=stride, groups=groups)
        # SE width follows the block's *input* width, as in pycls/timm.
        self.se = (SqueezeExcite(out_chs, int(round(in_chs * se_ratio)))
                   if se_ratio else nn.Identity())
        self.conv3 = ConvBN(out_chs, out_chs, 1, act=False)
        self.act3 = nn.ReLU(inplace=True)
        if in_chs != out_chs or stride != 1:
            self.downsample = ConvBN(in_chs, out_chs, 1, stride=stride, act=False)
        else:
            self.downsample = nn.Identity()

    def forward(self, x):
        shortcut = self.downsample(x)
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(x + shortcut)


class ClassifierHead(nn.Module):
    """Global average pooling and ``fc`` (timm's ``ClassifierHead`` keys)."""

    def __init__(self, in_chs, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


@MODELS.register_module()
class TimmRegNet(nn.Module):
    """RegNet-X/Y classifier with timm's parameter names; returns logits.

    Args:
        arch (str | dict): a timm model name from :data:`REGNET_ARCHS` (``'regnety_160'``
            is the DeiT teacher, RegNetY-16GF), or a dict with ``w0``, ``wa``, ``wm``,
            ``group_size``, ``depth`` and ``se_ratio`` for a custom (e.g. tiny) RegNet.
        num_classes (int): classifier outputs (1000 for the ImageNet teacher).
        in_channels (int): image channels.
        stem_width (int): stem width (32 in every timm RegNet).

    ``forward(x)`` takes normalised NCHW images and returns ``(B, num_classes)`` logits.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'regnety_160',
                 num_classes: int = 1000,
                 in_channels: int = 3,
                 stem_width: int = 32):
        super().__init__()
        if isinstance(arch, str):
            if arch not in REGNET_ARCHS:
                raise KeyError(f'Unknown RegNet arch {arch!r}; choose one of '
                               f'{sorted(REGNET_ARCHS)} or pass a dict.')
            w0, wa, wm, group_size, depth, se_ratio = REGNET_ARCHS[arch]
        elif isinstance(arch, dict):
            keys = ('w0', 'wa', 'wm', 'group_size', 'depth', 'se_ratio')
            missing = [k for k in keys if k not in arch]
            if missing:
                raise KeyError(f'A custom RegNet arch needs {list(keys)}; missing {missing}.')
            w0, wa, wm, group_size, depth, se_ratio = (arch[k] for k in keys)
        else:
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}.')
        self.arch = arch
        self.num_classes = num_classes
        widths, depths, groups = regnet_stages(w0, wa, wm, group_size, depth)
        self.stage_widths, self.stage_depths = widths, depths

        self.stem = ConvBN(in_channels, stem_width, 3, stride=2)
        prev = stem_width
        for i, (width, d, g) in enumerate(zip(widths, depths, groups)):
            stage = nn.Sequential()
            for j in range(d):
                stage.add_module(f'b{j + 1}', RegBottleneck(
                    prev if j == 0 else width, width, 2 if j == 0 else 1, g, se_ratio))
            self.add_module(f's{i + 1}', stage)
            prev = width
        self.num_features = prev
        self.head = ClassifierHead(prev, num_classes)
        self.num_stages = len(widths)
        self.init_weights()

    def init_weights(self):
        """timm's initialisation (He-normal convs, N(0, 0.01) classifier, zero-init of
        the last BN of each block)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, RegBottleneck):
                nn.init.zeros_(m.conv3.bn.weight)

    def forward_features(self, x):
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f's{i + 1}')(x)
        return x

    def forward(self, x):
        return self.head(self.forward_features(x))
