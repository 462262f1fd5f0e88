"""The channel affinity of a GroupMamba layer from its token mean, in one kernel.

``channel_affinity(mean, w1, b1, w2, b2, scale)`` is ``scale * sigmoid(fc2(relu(fc1(mean))))``
for a (B, C) mean: the Channel Affinity Modulation's two small linears, their
activations and the layer's ``skip_scale``. PyTorch runs that as five or six kernels on
a few hundred numbers per image, each a launch of its own (in an eager step, host time;
in a CUDA graph, a few microseconds of GPU time each). On CUDA, in inference (no autograd
graph recorded), one Triton program per image computes it in fp32 from the fp32
weights; training, ``torch.compile`` (Inductor fuses the composition), ``torch.jit``
tracing and ``fused=False`` take :func:`channel_affinity_ref`.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import fused_kernel_applies, records_grad, triton_interpreting

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - no (usable) Triton: the PyTorch path needs none
    triton = None

# Widest layer the kernel takes (a whole (hidden, C) weight in one program's registers).
MAX_CHANNELS = 1024


def channel_affinity_ref(mean, w1, b1, w2, b2, scale=None):
    """The PyTorch composition (``scale`` (1,) or None)."""
    out = torch.sigmoid(F.linear(torch.relu(F.linear(mean, w1, b1)), w2, b2))
    return out if scale is None else scale * out


if triton is not None:

    @triton.jit
    def _affinity_kernel(m_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, out_ptr, C, HID,
                         BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                         HAS_SCALE: tl.constexpr):
        b = tl.program_id(0)
        c = tl.arange(0, BLOCK_C)
        h = tl.arange(0, BLOCK_H)
        mc, mh = c < C, h < HID
        m = tl.load(m_ptr + b * C + c, mask=mc, other=0.).to(tl.float32)
        w1 = tl.load(w1_ptr + h[:, None] * C + c[None, :], mask=mh[:, None] & mc[None, :],
                     other=0.).to(tl.float32)                                  # (HID, C)
        hidden = tl.sum(w1 * m[None, :], axis=1)
        hidden += tl.load(b1_ptr + h, mask=mh, other=0.).to(tl.float32)
        hidden = tl.maximum(hidden, 0.)
        w2 = tl.load(w2_ptr + c[:, None] * HID + h[None, :], mask=mc[:, None] & mh[None, :],
                     other=0.).to(tl.float32)                                  # (C, HID)
        out = tl.sum(w2 * hidden[None, :], axis=1)
        out += tl.load(b2_ptr + c, mask=mc, other=0.).to(tl.float32)
        out = tl.sigmoid(out)
        if HAS_SCALE:
            out *= tl.load(s_ptr).to(tl.float32)
        tl.store(out_ptr + b * C + c, out.to(out_ptr.dtype.element_ty), mask=mc)


def channel_affinity(mean: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                     w2: torch.Tensor, b2: torch.Tensor, scale: Optional[torch.Tensor] = None,
                     fused: bool = True) -> torch.Tensor:
    """``scale * sigmoid(w2 relu(w1 mean + b1) + b2)``.

    Args:
        mean: (B, C) token means. w1: (hidden, C), b1: (hidden,), w2: (C, hidden),
            b2: (C,): the two linears. scale: (1,) factor (the layer's ``skip_scale``)
            or None.
        fused: the kernel where it applies (see the module docstring).

    Returns:
        (B, C): float32 from the kernel; from the composition, what it gives (the
        autocast dtype under autocast).
    """
    C = mean.shape[-1]
    if mean.dim() != 2 or w1.shape[1] != C or w2.shape != (C, w1.shape[0]):
        raise ValueError(f'channel_affinity expects mean (B, C), w1 (hidden, C) and w2 '
                         f'(C, hidden); got {tuple(mean.shape)}, {tuple(w1.shape)} and '
                         f'{tuple(w2.shape)}.')
    params = (mean, w1, b1, w2, b2, scale)
    if (triton is None or not fused_kernel_applies(mean, fused) or C > MAX_CHANNELS
            or torch.compiler.is_compiling() or records_grad(*params)):
        return channel_affinity_ref(*params)
    out = torch.empty(mean.shape, device=mean.device, dtype=torch.float32)
    block_c = triton.next_power_of_2(C)
    block_h = max(2, triton.next_power_of_2(w1.shape[0]))
    _affinity_kernel[(mean.shape[0], )](
        mean.contiguous(), w1.contiguous(), b1, w2.contiguous(), b2,
        scale if scale is not None else b2, out, C, w1.shape[0], BLOCK_C=block_c,
        BLOCK_H=block_h, HAS_SCALE=scale is not None,
        num_warps=1 if triton_interpreting() else (8 if block_c * block_h >= 8192 else 4))
    return out
