"""The scans of all four groups of a GroupMamba layer as one operator.

:func:`grouped_selective_scan` takes the channels-last map of all groups (after the
depthwise conv and SiLU), the per-token outputs of the groups' ``x_proj`` and the
stacked SSM parameters, and returns every group's ``out_norm(scan) * SiLU(z)`` back in
H x W order. Backends:

=============  ============================================================================
``triton``     one fused kernel launch (:func:`.grouped_selective_scan_triton`): each group
               read in its direction straight from the map, dt projection, softplus, scan,
               D skip, LayerNorm and gate fused. CUDA, ``d_state = 1``.
``mamba_ssm``  the groups' sequences arranged into one (B, G*d, L) tensor and scanned by one
               ``selective_scan_fn`` call with ``B``/``C`` groups; norm and gate in PyTorch.
``pytorch``    the same arrangement, a two-level chunked scan in PyTorch (CPU and GPU).
``reference``  the same arrangement, the exact sequential scan (tests).
=============  ============================================================================

``xdbl`` layout (last axis, per token): the G groups' ``dt_r`` (R each, group-major), then
the G groups' ``B`` (N each), then their ``C`` (N each) -- what a block-diagonal ``x_proj``
over the concatenated groups produces.
"""
from typing import Sequence

import torch
import torch.nn.functional as F

from .directions import SCAN_DIRECTIONS, flatten_channels_last, unflatten_channels_last
from .selective_scan import _module, resolve_backend
from .selective_scan_chunked import chunked_linear_recurrence


def arrange_groups(x: torch.Tensor, directions: Sequence[str]) -> torch.Tensor:
    """(B, H, W, G*k) -> (B, G*k, L): group g's k channels as a sequence in its direction."""
    parts = x.chunk(len(directions), dim=-1)
    return torch.cat([flatten_channels_last(p, dr) for p, dr in zip(parts, directions)],
                     dim=1)


def restore_groups(seq: torch.Tensor, directions: Sequence[str], hw) -> torch.Tensor:
    """Inverse of :func:`arrange_groups`: (B, G*k, L) -> (B, H, W, G*k)."""
    parts = seq.chunk(len(directions), dim=1)
    return torch.cat([unflatten_channels_last(p, dr, hw) for p, dr in zip(parts, directions)],
                     dim=-1)


def _linear_recurrence(log_a: torch.Tensor, bx: torch.Tensor, sequential=False):
    """``h_t = exp(log_a_t) h_(t-1) + bx_t`` along dim 2 of (b, ch, L, N), from h = 0:
    two-level chunked (:func:`chunked_linear_recurrence`), or one step per token with
    ``sequential`` (the test reference)."""
    if not sequential:
        return chunked_linear_recurrence(log_a, bx)
    h = torch.zeros_like(bx[:, :, 0])
    out = []
    for t in range(bx.shape[2]):
        h = log_a[:, :, t].exp() * h + bx[:, :, t]
        out.append(h)
    return torch.stack(out, dim=2)


def _split_xdbl(xdbl, G, R, N, directions):
    """Per-group sequences of dt_r (B, G, R, L), B and C (B, G, N, L)."""
    batch = xdbl.shape[0]
    dtr = arrange_groups(xdbl[..., :G * R], directions).view(batch, G, R, -1)
    Bs = arrange_groups(xdbl[..., G * R:G * (R + N)], directions).view(batch, G, N, -1)
    Cs = arrange_groups(xdbl[..., G * (R + N):], directions).view(batch, G, N, -1)
    return dtr, Bs, Cs


def _norm_and_gate(y, z, ln_weight, ln_bias, eps, G):
    """Per-group LayerNorm over each group's channels, then ``* SiLU(z)``, in ``y``'s
    dtype (fp32, or fp64 for references)."""
    if ln_weight is not None:
        shape = y.shape
        y = F.layer_norm(y.unflatten(-1, (G, -1)), (shape[-1] // G, ), eps=eps)
        y = (y * ln_weight.to(y.dtype).view(G, -1)
             + ln_bias.to(y.dtype).view(G, -1)).flatten(-2)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def grouped_selective_scan_torch(u, xdbl, z, dt_weight, dt_bias, A, D=None, ln_weight=None,
                                 ln_bias=None, eps=1e-5, directions=SCAN_DIRECTIONS,
                                 sequential=False):
    """PyTorch implementation (and test reference) of :func:`grouped_selective_scan`.

    Any state size: ``A`` is (G*d, N) (or (G*d,) for N = 1) and ``xdbl`` has
    ``G*R + 2*G*N`` channels. Computed in fp32 (in fp64 when ``u`` is fp64: the
    reference of the long-sequence tests), returned in ``u``'s dtype.
    """
    dtype = u.dtype
    compute = torch.promote_types(dtype, torch.float32)
    batch, H, W, GD = u.shape
    G, d, R = dt_weight.shape
    A = A.to(compute).reshape(GD, -1)
    N = A.shape[1]
    us = arrange_groups(u, directions).to(compute)                      # (B, Gd, L)
    dtr, Bs, Cs = _split_xdbl(xdbl.to(compute), G, R, N, directions)
    dt = torch.einsum('bgrl,gdr->bgdl', dtr, dt_weight.to(compute)).reshape(batch, GD, -1)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)[None, :, None]
    delta = F.softplus(dt)
    per_channel = lambda t: t[:, :, None].expand(-1, -1, d, -1, -1).reshape(  # noqa: E731
        batch, GD, N, -1).transpose(2, 3)                                  # (B, Gd, L, N)
    log_a = delta[..., None] * A[None, :, None, :]
    bx = (delta * us)[..., None] * per_channel(Bs)
    h = _linear_recurrence(log_a, bx, sequential=sequential)
    y = (h * per_channel(Cs)).sum(-1)
    if D is not None:
        y = y + D.to(compute)[None, :, None] * us
    y = restore_groups(y, directions, (H, W))
    return _norm_and_gate(y, z, ln_weight, ln_bias, eps, G).to(dtype)


def _grouped_mamba_ssm(u, xdbl, z, dt_weight, dt_bias, A, D, ln_weight, ln_bias, eps,
                       directions):
    fn = _module('mamba_ssm')
    batch, H, W, GD = u.shape
    G, d, R = dt_weight.shape
    A = A.float().reshape(GD, -1)
    N = A.shape[1]
    us = arrange_groups(u, directions).contiguous()
    dtr, Bs, Cs = _split_xdbl(xdbl, G, R, N, directions)
    dt = torch.einsum('bgrl,gdr->bgdl', dtr, dt_weight.to(dtr.dtype)).reshape(batch, GD, -1)
    y = fn(us, dt.to(us.dtype).contiguous(), A.contiguous(), Bs.contiguous(),
           Cs.contiguous(), None if D is None else D.float(), None,
           None if dt_bias is None else dt_bias.float(), True)
    y = restore_groups(y.float(), directions, (H, W))
    return _norm_and_gate(y, z, ln_weight, ln_bias, eps, G).to(u.dtype)


def grouped_selective_scan(u, xdbl, z, dt_weight, dt_bias, A, D=None, ln_weight=None,
                           ln_bias=None, eps=1e-5, directions=SCAN_DIRECTIONS,
                           backend='auto'):
    """``LN_g(SSM_g(u_g)) * SiLU(z_g)`` for all groups g of a layer, in H x W order.

    Args:
        u: (B, H, W, G*d) channels-last map, group g owns channels ``[g d, (g+1) d)``.
        xdbl: (B, H, W, G*R + 2*G*N) per token (see the module docstring).
        z: (B, H, W, G*d) gate input, or None.
        dt_weight: (G, d, R). dt_bias, D: (G*d,). A: (G*d, N) (negative; ``-exp(A_log)``).
        ln_weight, ln_bias: (G*d,) per-group ``out_norm`` affine, or None (no norm).
        eps: the norm's epsilon. directions: per group, see :data:`.SCAN_DIRECTIONS`.
        backend: ``auto``, ``triton``, ``mamba_ssm``, ``pytorch`` or ``reference``.

    Returns:
        (B, H, W, G*d) in ``u``'s dtype (computed in fp32).
    """
    name = resolve_backend(backend, u.device, d_state=A.numel() // u.shape[-1])
    args = (u, xdbl, z, dt_weight, dt_bias, A, D, ln_weight, ln_bias, eps, directions)
    if name == 'triton':
        return _module('triton').grouped_selective_scan_triton(*args)
    if name == 'mamba_ssm':
        return _grouped_mamba_ssm(*args)
    return grouped_selective_scan_torch(*args, sequential=name == 'reference')
