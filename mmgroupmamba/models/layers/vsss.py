"""Visual single selective scan (VSSS): a Mamba operator that scans a map in one direction."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgroupmamba.execution import ExecutionPolicy
from mmgroupmamba.ops import selective_scan
from mmgroupmamba.ops.directions import (check_direction, flatten_in_direction,
                                         unflatten_from_direction)


class VSSS(nn.Module):
    """One group's selective-scan operator (state size ``d_state``, one direction).

    in_proj -> (x, z); x: depthwise 3x3 conv + SiLU -> flatten in ``direction`` ->
    input-dependent (dt, B, C) -> selective scan -> back to H x W -> LayerNorm -> * SiLU(z)
    -> out_proj. Channels-last maps (B, H, W, d) in and out.

    Args:
        dim: channels of the group (d).
        direction: one of :data:`mmgroupmamba.ops.directions.SCAN_DIRECTIONS`.
        d_state: SSM state size N (1 in GroupMamba).
        dt_rank: rank of the dt projection; ``'auto'`` is ceil(d / 16).

    Its scan backend is the execution policy's (``self.execution.scan_backend``, see
    :func:`mmgroupmamba.ops.resolve_backend`).

    Inside a :class:`ModulatedGroupMamba` the four VSSS of a layer usually run together
    (its grouped path stacks their parameters); ``forward`` here is the per-group
    reference execution. Parameter names are the checkpoints' keys: keep them.
    """

    def __init__(self, dim: int, direction: str = 'row', d_state: int = 1,
                 dt_rank='auto', dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4):
        super().__init__()
        self.dim = dim
        self.direction = check_direction(direction)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.execution = ExecutionPolicy()
        self._dt_range = (dt_min, dt_max, dt_init_floor)

        self.in_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.x_proj = nn.Linear(dim, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, dim)
        self.A_log = nn.Parameter(torch.empty(dim, d_state))
        self.D = nn.Parameter(torch.empty(dim))
        self.out_norm = nn.LayerNorm(dim, eps=1e-5)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Mamba's initialisation of the SSM parameters.

        softplus(dt bias) is log-uniform in [dt_min, dt_max]; A = -(1..N); D = 1.
        """
        dt_min, dt_max, floor = self._dt_range
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.dim) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(A).expand(self.dim, -1))
        self.D.fill_(1.0)

    def forward(self, x):
        B, H, W, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))
        u = flatten_in_direction(x, self.direction)                    # (B, d, L)

        x_dbl = torch.einsum('bdl,cd->bcl', u, self.x_proj.weight)
        dt, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = torch.einsum('brl,dr->bdl', dt, self.dt_proj.weight)
        y = selective_scan(u, dt, -torch.exp(self.A_log.float()), Bs, Cs, self.D,
                           delta_bias=self.dt_proj.bias, delta_softplus=True,
                           backend=self.execution.scan_backend)

        y = unflatten_from_direction(y, self.direction, (H, W)).permute(0, 2, 3, 1)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)
