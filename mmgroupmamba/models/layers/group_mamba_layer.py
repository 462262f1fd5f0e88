"""Modulated Group Mamba layer: four VSSS operators on channel groups, modulated by CAM."""
import torch
import torch.nn as nn

from .vsss import SCAN_DIRECTIONS, VSSS


class ChannelAffinity(nn.Module):
    """Channel Affinity Modulation weights: sigmoid(fc2(relu(fc1(mean over tokens)))).

    Input (B, H, W, C); output (B, C) in (0, 1).
    """

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return torch.sigmoid(self.fc2(self.act(self.fc1(x.mean(dim=(1, 2))))))


class ModulatedGroupMamba(nn.Module):
    """The token mixer of a GroupMamba block (channels-last maps in and out).

    As released: ``x = LN(x)``; the channels are split into four groups, group k scanned
    by its own :class:`VSSS` in direction k; the concatenation is multiplied by the
    normalised input and a learned scalar (``skip_scale``), then by the channel affinity
    of the normalised input, normalised again *by the same LayerNorm* and projected.

    Args:
        dim: channels C; must be divisible by 4 (the groups).
        d_state: SSM state size per group.
        scan_backend: see :func:`mmgroupmamba.ops.selective_scan`.
    """

    num_groups = len(SCAN_DIRECTIONS)

    def __init__(self, dim: int, d_state: int = 1, scan_backend: str = 'auto'):
        super().__init__()
        if dim % self.num_groups != 0:
            raise ValueError(f'GroupMamba needs a width divisible by {self.num_groups} '
                             f'(one group per scan direction), got {dim}.')
        self.dim = dim
        group_dim = dim // self.num_groups
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.affinity = ChannelAffinity(dim)
        self.groups = nn.ModuleList(
            VSSS(group_dim, direction, d_state=d_state, scan_backend=scan_backend)
            for direction in SCAN_DIRECTIONS)
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.norm(x)
        affinity = self.affinity(x)
        parts = x.chunk(self.num_groups, dim=-1)
        y = torch.cat([op(part) for op, part in zip(self.groups, parts)], dim=-1)
        y = y * self.skip_scale * x
        y = y * affinity[:, None, None, :]
        return self.proj(self.norm(y))
