"""Two-level chunked selective scan in pure PyTorch (CPU, and the GPU fallback).

The recurrence ``h_t = a_t h_(t-1) + b_t`` is linear, so the sequence can be cut into
``n_chunks`` chunks of length ``T``:

1. every chunk is scanned from a zero state, all chunks at once (``T`` vectorised steps);
2. the chunk end states are chained by the chunks' total decay (``n_chunks`` small steps);
3. each chunk's incoming state is added back, decayed by the running product of ``a``
   inside the chunk (one vectorised step).

With ``T ~ sqrt(L)`` that is about ``2 sqrt(L)`` sequential steps instead of ``L`` and the
same amount of arithmetic as the sequential scan. The decays are products of numbers in
(0, 1], computed as ``exp`` of non-positive cumulative sums, so nothing can overflow.
Everything runs in fp32 and is differentiable by autograd.
"""
import math

import torch
import torch.nn.functional as F

from .selective_scan_ref import prepare_scan_inputs


def _chunk_len(length: int) -> int:
    return max(1, int(math.ceil(math.sqrt(length))))


def chunked_linear_recurrence(log_a: torch.Tensor, b: torch.Tensor,
                              chunk_len: int = None) -> torch.Tensor:
    """``h_t = exp(log_a_t) h_(t-1) + b_t`` along dim 2 of (batch, ch, L, N), from h = 0,
    in about ``2 sqrt(L)`` vectorised steps. Returns every state, (batch, ch, L, N)."""
    batch, ch, length, n_state = b.shape
    T = chunk_len or _chunk_len(length)
    # ceil(length / T) with positive operands: while torch.jit traces (ONNX export) the
    # sizes are tensors, and -(-length // T) rounded towards zero there
    n_chunks = (length + T - 1) // T
    pad = n_chunks * T - length
    if pad:
        # Padding with a = 1 (log 0) and b = 0 leaves the state unchanged.
        log_a = F.pad(log_a, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
    log_a = log_a.reshape(batch, ch, n_chunks, T, n_state)
    b = b.reshape(batch, ch, n_chunks, T, n_state)
    a = log_a.exp()

    # 1. Scan inside every chunk from a zero state, all chunks in parallel. unbind()
    # gives views once (indexing in the loop would make autograd fill a full-size zero
    # gradient per step), and addcmul fuses the update.
    a_steps, b_steps = a.unbind(3), b.unbind(3)
    h = b_steps[0]
    h_local = [h]
    for t in range(1, T):
        h = torch.addcmul(b_steps[t], a_steps[t], h)
        h_local.append(h)
    h_local = torch.stack(h_local, dim=3)                    # (b, ch, chunks, T, n)

    # 2. Chain the chunks: state entering chunk c.
    chunk_decay = log_a.sum(dim=3).exp().unbind(2)           # chunks x (b, ch, n)
    chunk_end = h_local[:, :, :, -1].unbind(2)
    carries = [torch.zeros_like(chunk_end[0])]
    for c in range(n_chunks - 1):
        carries.append(torch.addcmul(chunk_end[c], chunk_decay[c], carries[-1]))
    h_in = torch.stack(carries, dim=2)                       # (b, ch, chunks, n)

    # 3. Add each chunk's incoming state, decayed to every position inside the chunk.
    decay_in = log_a.cumsum(dim=3).exp()
    h_all = h_local + decay_in * h_in[:, :, :, None]
    return h_all.reshape(batch, ch, n_chunks * T, n_state)[:, :, :length]


def selective_scan_chunked(u, delta, A, B, C, D=None, delta_bias=None,
                           delta_softplus=True, chunk_len=None):
    """Same contract as :func:`selective_scan_ref`, in about ``2 sqrt(L)`` steps."""
    dtype = u.dtype
    u, delta, A, B, C, D = prepare_scan_inputs(u, delta, A, B, C, D, delta_bias,
                                               delta_softplus)
    # log a_t = delta_t A <= 0 and b_t = delta_t u_t B_t, as (batch, dim, L, N).
    log_a = delta[..., None] * A[None, :, None, :]
    b = (delta * u)[..., None] * B.transpose(1, 2)[:, None]
    h_all = chunked_linear_recurrence(log_a, b, chunk_len)

    y = torch.einsum('bdln,bnl->bdl', h_all, C)
    if D is not None:
        y = y + D[None, :, None] * u
    return y.to(dtype)
