"""Exact sequential selective scan: the reference every other backend is tested against.

One Python step per token, so it is slow (L steps); it exists for tests and as the ground
truth, never for training.
"""
import torch
import torch.nn.functional as F


def prepare_scan_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """Cast to fp32 and apply the delta bias and softplus shared by the PyTorch backends."""
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    D = None if D is None else D.float()
    return u, delta, A, B, C, D


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Sequential selective scan over the last axis.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N), real and usually negative.
        B, C: (batch, N, L), shared by all channels.
        D: (dim,) skip, optional. delta_bias: (dim,), optional.

    Returns:
        y: (batch, dim, L) in ``u``'s dtype, computed in fp32:
        ``h_t = exp(delta_t A) h_(t-1) + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``.
    """
    dtype = u.dtype
    u, delta, A, B, C, D = prepare_scan_inputs(u, delta, A, B, C, D, delta_bias,
                                               delta_softplus)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)                       # (b, d, n)
        dBu = (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        h = dA * h + dBu
        ys.append(torch.einsum('bdn,bn->bd', h, C[:, :, t]))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[None, :, None] * u
    return y.to(dtype)
