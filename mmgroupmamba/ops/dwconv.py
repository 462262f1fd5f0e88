"""Depthwise 3x3 convolution + bias + activation on channels-last maps, fused.

``depthwise_conv3x3_act(x, weight, bias, act)`` computes
``act(conv2d(x, weight, bias, padding=1, groups=C))`` for a (B, H, W, C) map and returns
a (B, H, W, C) map. It is the "depthwise conv, then SiLU" of every VSSS operator and the
"depthwise conv, then GELU" of the ConvFFN.

On CUDA (with Triton) one kernel does the conv, the bias and the activation, reading the
channels-last map directly (no NCHW copies); the backward recomputes the pre-activation
instead of keeping it, so the op holds only its input for the backward (the unfused
sequence holds the conv input *and* the activation input). Elsewhere (and for
``TRITON_INTERPRET=1`` tests) it is the PyTorch composition.
"""
import os

import torch
import torch.nn.functional as F

from .dispatch import fused_kernels_enabled

ACTIVATIONS = {'none': 0, 'silu': 1, 'gelu': 2}

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - no (usable) Triton: the PyTorch path needs none
    triton = None


def _torch_impl(x, weight, bias, act):
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1, groups=x.shape[-1])
    y = y.permute(0, 2, 3, 1)
    if act == 'silu':
        y = F.silu(y)
    elif act == 'gelu':
        y = F.gelu(y)
    return y


if triton is not None:

    @triton.jit
    def _act_fwd(p, ACT: tl.constexpr):
        if ACT == 1:
            return p * tl.sigmoid(p)
        elif ACT == 2:
            return 0.5 * p * (1. + tl.math.erf(p * 0.7071067811865476))
        else:
            return p

    @triton.jit
    def _act_grad(p, ACT: tl.constexpr):
        if ACT == 1:
            s = tl.sigmoid(p)
            return s * (1. + p * (1. - s))
        elif ACT == 2:
            return (0.5 * (1. + tl.math.erf(p * 0.7071067811865476))
                    + p * 0.3989422804014327 * tl.exp(-0.5 * p * p))
        else:
            return p * 0. + 1.

    @triton.jit
    def _conv_tile(x_base, s_h, s_w, s_c, w_ptr, h, w, mask_p, c, mask_c, H, W,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, FLIP: tl.constexpr):
        """sum_taps x[h + dh, w + dw, c] * weight[c, tap] (``FLIP``: x[h - dh, w - dw])."""
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                if FLIP:
                    hh = h - (kh - 1)
                    ww = w - (kw - 1)
                else:
                    hh = h + (kh - 1)
                    ww = w + (kw - 1)
                m = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                xv = tl.load(x_base + hh[:, None] * s_h + ww[:, None] * s_w
                             + c[None, :] * s_c, mask=m[:, None] & mask_c[None, :],
                             other=0.).to(tl.float32)
                wv = tl.load(w_ptr + c * 9 + kh * 3 + kw, mask=mask_c, other=0.)
                acc += xv * wv[None, :]
        return acc

    @triton.jit(do_not_specialize=['H', 'W'])
    def _dw_fwd_kernel(x_ptr, s_xb, s_xh, s_xw, s_xc, w_ptr, b_ptr, y_ptr, H, W, C,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
                       HAS_BIAS: tl.constexpr):
        pid = tl.program_id(0)
        n_pb = tl.cdiv(H * W, BLOCK_P)
        b = (pid // n_pb).to(tl.int64)
        p = (pid % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = p < H * W
        h = p // W
        w = p % W
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = c < C
        acc = _conv_tile(x_ptr + b * s_xb, s_xh, s_xw, s_xc, w_ptr, h, w, mask_p, c, mask_c,
                         H, W, BLOCK_P, BLOCK_C, False)
        if HAS_BIAS:
            acc += tl.load(b_ptr + c, mask=mask_c, other=0.)[None, :]
        y = _act_fwd(acc, ACT)
        tl.store(y_ptr + b * H * W * C + p[:, None] * C + c[None, :],
                 y.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])

    @triton.jit
    def _tap_product(x_base, s_h, s_w, s_c, gp, h, w, mask_p, c, mask_c, H, W,
                     KH: tl.constexpr, KW: tl.constexpr):
        """gp * x[h + KH - 1, w + KW - 1] (zero outside the map): one tap's dW terms."""
        hh = h + (KH - 1)
        ww = w + (KW - 1)
        m = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        xv = tl.load(x_base + hh[:, None] * s_h + ww[:, None] * s_w + c[None, :] * s_c,
                     mask=m[:, None] & mask_c[None, :], other=0.).to(tl.float32)
        return gp * xv

    @triton.jit(do_not_specialize=['H', 'W', 'n_tiles'])
    def _dw_bwd_pre_kernel(x_ptr, s_xb, s_xh, s_xw, s_xc, w_ptr, b_ptr, g_ptr, s_gb, s_gh,
                           s_gw, s_gc, gp_ptr, part_ptr, H, W, C, n_tiles,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
                           HAS_BIAS: tl.constexpr):
        """gp = dL/d(pre-activation); per-program partial sums of dW (9 taps) and db.

        The partial sums are accumulated elementwise over the program's tiles (one
        register tile per tap) and reduced over the pixels once at the end: a reduction
        per tile and tap would cost more than the loads.
        """
        pid = tl.program_id(0)
        n_prog = tl.num_programs(0)
        n_pb = tl.cdiv(H * W, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = c < C
        if HAS_BIAS:
            bias = tl.load(b_ptr + c, mask=mask_c, other=0.)
        acc_db = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc4 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc5 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc6 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc7 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc8 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for t in range(pid, n_tiles, n_prog):
            b = (t // n_pb).to(tl.int64)
            p = (t % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
            mask_p = p < H * W
            h = p // W
            w = p % W
            mask = mask_p[:, None] & mask_c[None, :]
            xb = x_ptr + b * s_xb
            pre = _conv_tile(xb, s_xh, s_xw, s_xc, w_ptr, h, w, mask_p, c, mask_c, H, W,
                             BLOCK_P, BLOCK_C, False)
            if HAS_BIAS:
                pre += bias[None, :]
            g = tl.load(g_ptr + b * s_gb + h[:, None] * s_gh + w[:, None] * s_gw
                        + c[None, :] * s_gc, mask=mask, other=0.).to(tl.float32)
            gp = tl.where(mask, g * _act_grad(pre, ACT), 0.)
            tl.store(gp_ptr + b * H * W * C + p[:, None] * C + c[None, :], gp, mask=mask)
            acc_db += gp
            acc0 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 0, 0)
            acc1 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 0, 1)
            acc2 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 0, 2)
            acc3 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 1, 0)
            acc4 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 1, 1)
            acc5 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 1, 2)
            acc6 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 2, 0)
            acc7 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 2, 1)
            acc8 += _tap_product(xb, s_xh, s_xw, s_xc, gp, h, w, mask_p, c, mask_c, H, W, 2, 2)
        # partial sums: rows 0-8 the taps (row-major 3 x 3), row 9 the bias
        out = part_ptr + pid * 10 * C + c
        tl.store(out, tl.sum(acc0, axis=0), mask=mask_c)
        tl.store(out + C, tl.sum(acc1, axis=0), mask=mask_c)
        tl.store(out + 2 * C, tl.sum(acc2, axis=0), mask=mask_c)
        tl.store(out + 3 * C, tl.sum(acc3, axis=0), mask=mask_c)
        tl.store(out + 4 * C, tl.sum(acc4, axis=0), mask=mask_c)
        tl.store(out + 5 * C, tl.sum(acc5, axis=0), mask=mask_c)
        tl.store(out + 6 * C, tl.sum(acc6, axis=0), mask=mask_c)
        tl.store(out + 7 * C, tl.sum(acc7, axis=0), mask=mask_c)
        tl.store(out + 8 * C, tl.sum(acc8, axis=0), mask=mask_c)
        tl.store(out + 9 * C, tl.sum(acc_db, axis=0), mask=mask_c)

    @triton.jit(do_not_specialize=['H', 'W'])
    def _dw_bwd_input_kernel(gp_ptr, w_ptr, dx_ptr, H, W, C, BLOCK_P: tl.constexpr,
                             BLOCK_C: tl.constexpr):
        """dx = the conv of gp with the flipped kernel (the conv's transpose)."""
        pid = tl.program_id(0)
        n_pb = tl.cdiv(H * W, BLOCK_P)
        b = (pid // n_pb).to(tl.int64)
        p = (pid % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = p < H * W
        h = p // W
        w = p % W
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = c < C
        acc = _conv_tile(gp_ptr + b * H * W * C, W * C, C, 1, w_ptr, h, w, mask_p, c, mask_c,
                         H, W, BLOCK_P, BLOCK_C, True)
        tl.store(dx_ptr + b * H * W * C + p[:, None] * C + c[None, :],
                 acc.to(dx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


def _blocks(C):
    # 1024-element tiles, 4 elements per thread (8 warps): the nine taps' addresses and
    # values stay in registers without spilling (checked with ptxas for sm_90).
    block_c = min(64, max(16, triton.next_power_of_2(C)))
    return 1024 // block_c, block_c


def _warps():
    return 1 if os.environ.get('TRITON_INTERPRET', '0') == '1' else 8


class _DWConvAct(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, x, weight, bias, act):
        B, H, W, C = x.shape
        w9 = weight.reshape(C, 9).float().contiguous()
        b1 = None if bias is None else bias.float().contiguous()
        y = torch.empty(B, H, W, C, device=x.device, dtype=x.dtype)
        block_p, block_c = _blocks(C)
        grid = (B * triton.cdiv(H * W, block_p), triton.cdiv(C, block_c))
        _dw_fwd_kernel[grid](x, *x.stride(), w9, b1 if b1 is not None else w9, y, H, W, C,
                             BLOCK_P=block_p, BLOCK_C=block_c, ACT=ACTIVATIONS[act],
                             HAS_BIAS=b1 is not None, num_warps=_warps())
        ctx.save_for_backward(x, w9, b1)
        ctx.meta = (act, weight.shape, weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad):
        x, w9, b1 = ctx.saved_tensors
        act, w_shape, w_dtype, b_dtype = ctx.meta
        B, H, W, C = x.shape
        block_p, block_c = _blocks(C)
        n_tiles = B * triton.cdiv(H * W, block_p)
        n_cb = triton.cdiv(C, block_c)
        n_prog = max(1, min(n_tiles, 4096 // n_cb))
        gp = torch.empty(B, H, W, C, device=x.device, dtype=grad.dtype)
        part = torch.empty(n_prog, 10, C, device=x.device, dtype=torch.float32)
        _dw_bwd_pre_kernel[(n_prog, n_cb)](
            x, *x.stride(), w9, b1 if b1 is not None else w9, grad, *grad.stride(), gp, part,
            H, W, C, n_tiles, BLOCK_P=block_p, BLOCK_C=block_c, ACT=ACTIVATIONS[act],
            HAS_BIAS=b1 is not None, num_warps=_warps())
        dx = torch.empty(B, H, W, C, device=x.device, dtype=x.dtype)
        _dw_bwd_input_kernel[(n_tiles, n_cb)](gp, w9, dx, H, W, C, BLOCK_P=block_p,
                                              BLOCK_C=block_c, num_warps=_warps())
        part = part.sum(0)                                             # (10, C)
        dw = part[:9].t().reshape(w_shape).to(w_dtype)
        db = part[9].to(b_dtype) if b_dtype is not None else None
        return dx, dw, db, None


def depthwise_conv3x3_act(x: torch.Tensor, weight: torch.Tensor, bias=None,
                          act: str = 'none') -> torch.Tensor:
    """``act(depthwise_conv3x3(x) + bias)`` on a channels-last (B, H, W, C) map.

    Args:
        x: (B, H, W, C). weight: (C, 1, 3, 3) (an ``nn.Conv2d(C, C, 3, padding=1,
            groups=C)`` weight). bias: (C,) or None.
        act: ``none``, ``silu`` or ``gelu`` (exact, erf).

    Returns:
        (B, H, W, C), contiguous, in ``x``'s dtype on the fused path.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f'Unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}.')
    C = x.shape[-1]
    if x.dim() != 4 or tuple(weight.shape) != (C, 1, 3, 3):
        raise ValueError(f'Expected x (B, H, W, C) and weight (C, 1, 3, 3), got '
                         f'{tuple(x.shape)} and {tuple(weight.shape)}.')
    interpret = os.environ.get('TRITON_INTERPRET', '0') == '1'
    if (triton is None or not fused_kernels_enabled() or not (x.is_cuda or interpret)
            or torch.jit.is_tracing()):
        return _torch_impl(x, weight, bias, act)
    if x.is_cuda and torch.is_autocast_enabled('cuda') and x.dtype == torch.float32:
        x = x.to(torch.get_autocast_dtype('cuda'))  # what F.conv2d would do
    return _fused(x, weight, bias, act)


@torch.compiler.disable
def _fused(x, weight, bias, act):
    return _DWConvAct.apply(x, weight, bias, act)
