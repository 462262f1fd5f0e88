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
from typing import List, Optional

import torch
import torch.nn.functional as F

from .column_sums import column_sum
from .dispatch import (call_fused, fused_kernel_applies, register_fused_op,
                       tensor_args, triton_interpreting)

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
    def _load_row(x_base, s_h, s_w, s_c, ih, w, c, mask_c, H, W):
        """Input row ``ih`` as three tiles shifted by one column: x[ih, w - 1 + k], k = 0..2
        (zero outside the map)."""
        inside = (ih >= 0) & (ih < H)
        row = x_base + ih * s_h + c[None, :] * s_c
        mc = mask_c[None, :] & inside
        wl = w - 1
        wr = w + 1
        xl = tl.load(row + wl[:, None] * s_w, mask=mc & ((wl >= 0) & (wl < W))[:, None],
                     other=0.).to(tl.float32)
        xc = tl.load(row + w[:, None] * s_w, mask=mc & (w < W)[:, None],
                     other=0.).to(tl.float32)
        xr = tl.load(row + wr[:, None] * s_w, mask=mc & (wr < W)[:, None],
                     other=0.).to(tl.float32)
        return xl, xc, xr

    @triton.jit
    def _tap(w_ptr, c, mask_c, K: tl.constexpr, FLIP: tl.constexpr):
        """Weight of tap K (row-major 3 x 3) for channels c; ``FLIP``: the kernel rotated
        by 180 degrees (the transposed convolution)."""
        if FLIP:
            return tl.load(w_ptr + c * 9 + (8 - K), mask=mask_c, other=0.)[None, :]
        return tl.load(w_ptr + c * 9 + K, mask=mask_c, other=0.)[None, :]

    @triton.jit
    def _taps(w_ptr, c, mask_c, FLIP: tl.constexpr):
        """The nine taps (row-major 3 x 3) for channels c."""
        return (_tap(w_ptr, c, mask_c, 0, FLIP), _tap(w_ptr, c, mask_c, 1, FLIP),
                _tap(w_ptr, c, mask_c, 2, FLIP), _tap(w_ptr, c, mask_c, 3, FLIP),
                _tap(w_ptr, c, mask_c, 4, FLIP), _tap(w_ptr, c, mask_c, 5, FLIP),
                _tap(w_ptr, c, mask_c, 6, FLIP), _tap(w_ptr, c, mask_c, 7, FLIP),
                _tap(w_ptr, c, mask_c, 8, FLIP))

    @triton.jit
    def _program_tile(H, W, C, ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
                      BLOCK_C: tl.constexpr):
        """This program's image b, first output row h0, columns w and channels c (grid:
        images x row blocks, column blocks, channel blocks)."""
        n_hb = tl.cdiv(H, ROWS)
        b = (tl.program_id(0) // n_hb).to(tl.int64)
        h0 = (tl.program_id(0) % n_hb) * ROWS
        w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = c < C
        mask_out = (w < W)[:, None] & mask_c[None, :]
        return b, h0, w, c, mask_c, mask_out

    @triton.jit(do_not_specialize=['H', 'W'])
    def _dw_fwd_kernel(x_ptr, s_x_b, s_x_h, s_x_w, s_x_c, w_ptr, b_ptr, y_ptr, H, W, C,
                       ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
                       ACT: tl.constexpr, HAS_BIAS: tl.constexpr, FLIP: tl.constexpr,
                       PREFETCH: tl.constexpr):
        """``act(conv + bias)`` for output rows [h0, h0 + ROWS) of one image, a block of
        columns and a block of channels.

        Rows slide through the program: every input row is loaded once (three
        column-shifted tiles, two of them L1 hits) and added to the three output rows it
        touches; an output row is stored as soon as its last input row is in.
        ``PREFETCH``: the next row's loads are issued before this row's arithmetic (two
        rows in flight per program).
        """
        b, h0, w, c, mask_c, mask_out = _program_tile(H, W, C, ROWS, BLOCK_W, BLOCK_C)
        k0, k1, k2, k3, k4, k5, k6, k7, k8 = _taps(w_ptr, c, mask_c, FLIP)
        if HAS_BIAS:
            bias = tl.load(b_ptr + c, mask=mask_c, other=0.)[None, :]
        x_base = x_ptr + b * s_x_b
        y_base = y_ptr + b * H * W * C + w[:, None] * C + c[None, :]
        # acc_a: output row ih - 1 (rows ih - 2, ih - 1 in); acc_b: output row ih (ih - 1 in)
        acc_a = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        if PREFETCH:
            nl, nc, nr = _load_row(x_base, s_x_h, s_x_w, s_x_c, h0 - 1, w, c, mask_c, H, W)
        for ih in range(h0 - 1, h0 + ROWS + 1):
            if PREFETCH:
                xl, xc, xr = nl, nc, nr
                nl, nc, nr = _load_row(x_base, s_x_h, s_x_w, s_x_c, ih + 1, w, c, mask_c, H, W)
            else:
                xl, xc, xr = _load_row(x_base, s_x_h, s_x_w, s_x_c, ih, w, c, mask_c, H, W)
            oh = ih - 1
            if (oh >= h0) & (oh < H):
                pre = acc_a + xl * k6 + xc * k7 + xr * k8
                if HAS_BIAS:
                    pre += bias
                tl.store(y_base + oh * W * C, _act_fwd(pre, ACT).to(y_ptr.dtype.element_ty),
                         mask=mask_out)
            acc_a = acc_b + xl * k3 + xc * k4 + xr * k5
            acc_b = xl * k0 + xc * k1 + xr * k2

    @triton.jit(do_not_specialize=['H', 'W'])
    def _dw_bwd_kernel(x_ptr, s_x_b, s_x_h, s_x_w, s_x_c, w_ptr, b_ptr, g_ptr, s_g_b, s_g_h,
                       s_g_w, s_g_c, gp_ptr, part_ptr, H, W, C, ROWS: tl.constexpr,
                       BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SLIDE: tl.constexpr, PREFETCH: tl.constexpr):
        """gp = dL/d(pre-activation) (the pre-activation recomputed) for output rows
        [h0, h0 + ROWS), and this program's partial sums of dW (9 taps) and db,
        accumulated elementwise and reduced over the columns once at the end.
        ``SLIDE``: the input rows slide through registers (one new row loaded per output
        row) instead of three rows loaded per output row from L1/L2. ``PREFETCH`` (with
        ``SLIDE``): the next iteration's input row and gradient row are issued before
        this row's arithmetic, so two rows of loads are in flight per program (few
        programs fit an SM next to ten accumulator tiles, and each waits on its loads).
        """
        b, h0, w, c, mask_c, mask_out = _program_tile(H, W, C, ROWS, BLOCK_W, BLOCK_C)
        k0, k1, k2, k3, k4, k5, k6, k7, k8 = _taps(w_ptr, c, mask_c, False)
        if HAS_BIAS:
            bias = tl.load(b_ptr + c, mask=mask_c, other=0.)[None, :]
        x_base = x_ptr + b * s_x_b
        g_base = g_ptr + b * s_g_b + w[:, None] * s_g_w + c[None, :] * s_g_c
        gp_base = gp_ptr + b * H * W * C + w[:, None] * C + c[None, :]
        d0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d4 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d5 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d6 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d7 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        d8 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        db = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        # one output row per iteration: rows oh - 1 (q), oh (p) and oh + 1 (x)
        if SLIDE:
            ql, qc, qr = _load_row(x_base, s_x_h, s_x_w, s_x_c, h0 - 1, w, c, mask_c, H, W)
            pl, pc, pr = _load_row(x_base, s_x_h, s_x_w, s_x_c, h0, w, c, mask_c, H, W)
            if PREFETCH:
                nl, nc, nr = _load_row(x_base, s_x_h, s_x_w, s_x_c, h0 + 1, w, c, mask_c, H, W)
                ng = tl.load(g_base + h0 * s_g_h, mask=mask_out & (h0 < H), other=0.)
        for oh in range(h0, h0 + ROWS):
            mask = mask_out & (oh < H)
            if SLIDE:
                if PREFETCH:
                    xl, xc, xr, g = nl, nc, nr, ng.to(tl.float32)
                    nl, nc, nr = _load_row(x_base, s_x_h, s_x_w, s_x_c, oh + 2, w, c, mask_c,
                                           H, W)
                    ng = tl.load(g_base + (oh + 1) * s_g_h, mask=mask_out & (oh + 1 < H),
                                 other=0.)
                else:
                    xl, xc, xr = _load_row(x_base, s_x_h, s_x_w, s_x_c, oh + 1, w, c, mask_c,
                                           H, W)
                    g = tl.load(g_base + oh * s_g_h, mask=mask, other=0.).to(tl.float32)
            else:  # straight-line code, no tiles carried across iterations
                ql, qc, qr = _load_row(x_base, s_x_h, s_x_w, s_x_c, oh - 1, w, c, mask_c, H, W)
                pl, pc, pr = _load_row(x_base, s_x_h, s_x_w, s_x_c, oh, w, c, mask_c, H, W)
                xl, xc, xr = _load_row(x_base, s_x_h, s_x_w, s_x_c, oh + 1, w, c, mask_c, H, W)
                g = tl.load(g_base + oh * s_g_h, mask=mask, other=0.).to(tl.float32)
            pre = (ql * k0 + qc * k1 + qr * k2 + pl * k3 + pc * k4 + pr * k5
                   + xl * k6 + xc * k7 + xr * k8)
            if HAS_BIAS:
                pre += bias
            gp = tl.where(mask, g * _act_grad(pre, ACT), 0.)
            tl.store(gp_base + oh * W * C, gp.to(gp_ptr.dtype.element_ty), mask=mask)
            db += gp
            d0 += gp * ql
            d1 += gp * qc
            d2 += gp * qr
            d3 += gp * pl
            d4 += gp * pc
            d5 += gp * pr
            d6 += gp * xl
            d7 += gp * xc
            d8 += gp * xr
            if SLIDE:
                ql, qc, qr = pl, pc, pr
                pl, pc, pr = xl, xc, xr
        # partial sums of this program: rows 0-8 the taps (row-major 3 x 3), row 9 the bias
        out = part_ptr + (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * 10 * C + c
        tl.store(out, tl.sum(d0, axis=0), mask=mask_c)
        tl.store(out + C, tl.sum(d1, axis=0), mask=mask_c)
        tl.store(out + 2 * C, tl.sum(d2, axis=0), mask=mask_c)
        tl.store(out + 3 * C, tl.sum(d3, axis=0), mask=mask_c)
        tl.store(out + 4 * C, tl.sum(d4, axis=0), mask=mask_c)
        tl.store(out + 5 * C, tl.sum(d5, axis=0), mask=mask_c)
        tl.store(out + 6 * C, tl.sum(d6, axis=0), mask=mask_c)
        tl.store(out + 7 * C, tl.sum(d7, axis=0), mask=mask_c)
        tl.store(out + 8 * C, tl.sum(d8, axis=0), mask=mask_c)
        tl.store(out + 9 * C, tl.sum(db, axis=0), mask=mask_c)


# Launch settings (``tools/analysis/benchmark.py --dwconv-sweep`` times alternatives):
# elements per tile (forward / backward), columns per tile (the rest of the tile is
# channels: narrow tiles read long runs of channels), warps per program, output rows per
# program, prefetching the next input row in the forward, sliding the input rows through
# registers in the backward, and prefetching the next rows there too. Chosen on an H100 at
# GroupMamba-T's 2 x 800x1344 shapes, bf16, ms per model step: forward 1.66 (2048-element
# tiles 64 columns wide, the earlier setting chosen at batch 128 on an H200: 2.13; cuDNN
# conv + activation 3.85); forward + backward 8.08 with 256-element backward tiles, 8
# columns, 2 warps, prefetching (512 elements, 16 columns, 4 warps: 8.85 without the
# prefetch, 8.41 with it; cuDNN 11.81). The backward is latency-bound: ten accumulator
# tiles leave room for few programs per SM, so smaller programs with two rows of loads
# in flight win.
TUNING = dict(fwd_elements=1024, bwd_elements=256, fwd_block_w=8, bwd_block_w=8,
              fwd_warps=4, bwd_warps=2, fwd_rows=16, bwd_rows=16, fwd_prefetch=True,
              bwd_slide=True, bwd_prefetch=True)


def set_tuning(**kwargs):
    unknown = set(kwargs) - set(TUNING)
    if unknown:
        raise KeyError(f'Unknown depthwise-conv tuning keys {sorted(unknown)}; '
                       f'expected {sorted(TUNING)}.')
    TUNING.update(kwargs)


def _launch(B, H, W, C, backward=False):
    """Grid and tiles: BLOCK_W columns x BLOCK_C channels, ROWS output rows per program
    (fewer when the grid would be small: batch 1)."""
    pass_ = 'bwd' if backward else 'fwd'
    elements = TUNING[f'{pass_}_elements']
    block_w = min(TUNING[f'{pass_}_block_w'], triton.next_power_of_2(W))
    block_c = min(triton.next_power_of_2(C), max(16, elements // block_w))
    n_wb, n_cb = triton.cdiv(W, block_w), triton.cdiv(C, block_c)
    rows = TUNING[f'{pass_}_rows']
    while rows > 2 and B * triton.cdiv(H, rows) * n_wb * n_cb < 1024:
        rows //= 2
    grid = (B * triton.cdiv(H, rows), n_wb, n_cb)
    warps = 1 if triton_interpreting() else TUNING[f'{pass_}_warps']
    meta = dict(ROWS=rows, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=warps)
    if backward:
        meta['SLIDE'] = bool(TUNING['bwd_slide'])
        meta['PREFETCH'] = meta['SLIDE'] and bool(TUNING['bwd_prefetch'])
    else:
        meta['PREFETCH'] = bool(TUNING['fwd_prefetch'])
    return grid, meta


def _dwconv_forward(x, w9, bias, act):
    """The forward launch: ``x`` (B, H, W, C), ``w9`` (C, 9) and ``bias`` fp32, ``act``
    a code of :data:`ACTIVATIONS`."""
    B, H, W, C = x.shape
    y = torch.empty(B, H, W, C, device=x.device, dtype=x.dtype)
    grid, meta = _launch(B, H, W, C)
    _dw_fwd_kernel[grid](**tensor_args('x', x, x.stride(), 'bhwc'), w_ptr=w9,
                         b_ptr=bias if bias is not None else w9, y_ptr=y, H=H, W=W, C=C,
                         ACT=act, HAS_BIAS=bias is not None, FLIP=False, **meta)
    return y


def _dwconv_backward(grad, x, w9, bias, act):
    """The backward launches: ``(dx, dw9, dbias)`` (fp32 ``dw9`` (C, 9); ``dbias`` an
    empty tensor without bias)."""
    B, H, W, C = x.shape
    gp = torch.empty(B, H, W, C, device=x.device, dtype=grad.dtype)
    grid, meta = _launch(B, H, W, C, backward=True)
    part = torch.empty(grid[0] * grid[1], 10, C, device=x.device, dtype=torch.float32)
    _dw_bwd_kernel[grid](**tensor_args('x', x, x.stride(), 'bhwc'), w_ptr=w9,
                         b_ptr=bias if bias is not None else w9,
                         **tensor_args('g', grad, grad.stride(), 'bhwc'), gp_ptr=gp,
                         part_ptr=part, H=H, W=W, C=C, ACT=act, HAS_BIAS=bias is not None,
                         **meta)
    # dx: the transposed convolution of gp (the kernel rotated by 180 degrees)
    dx = torch.empty(B, H, W, C, device=x.device, dtype=x.dtype)
    grid, meta = _launch(B, H, W, C)
    _dw_fwd_kernel[grid](**tensor_args('x', gp, gp.stride(), 'bhwc'), w_ptr=w9, b_ptr=w9,
                         y_ptr=dx, H=H, W=W, C=C, ACT=0, HAS_BIAS=False, FLIP=True, **meta)
    part = column_sum(part.view(-1, 10 * C)).view(10, C)     # summed over the programs
    db = part[9] if bias is not None else x.new_empty(0, dtype=torch.float32)
    return dx, part[:9].t(), db


class _DWConvAct(torch.autograd.Function):
    """The eager-mode autograd of the fused conv (see :func:`call_fused`)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, x, w9, bias, act):
        ctx.save_for_backward(x, w9, bias)
        ctx.act = act
        return _dwconv_forward(x, w9, bias, act)

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad):
        x, w9, bias = ctx.saved_tensors
        dx, dw9, db = _dwconv_backward(grad, x, w9, bias, ctx.act)
        return dx, dw9, (db if bias is not None else None), None


# The same computation as custom operators, for torch.compile.
def _dwconv_op(x: torch.Tensor, w9: torch.Tensor, bias: Optional[torch.Tensor],
               act: int) -> torch.Tensor:
    return _dwconv_forward(x, w9, bias, act)


def _dwconv_backward_op(grad: torch.Tensor, x: torch.Tensor, w9: torch.Tensor,
                        bias: Optional[torch.Tensor], act: int) -> List[torch.Tensor]:
    dx, dw9, db = _dwconv_backward(grad, x, w9, bias, act)
    return [dx, dw9.contiguous(), db]


def _dwconv_backward_fake(grad, x, w9, bias, act):
    return [x.new_empty(x.shape), w9.new_empty(w9.shape),
            w9.new_empty(0 if bias is None else bias.shape)]


def _dwconv_setup(ctx, inputs, output):
    x, w9, bias, act = inputs
    ctx.save_for_backward(x, w9, bias)
    ctx.act = act


def _dwconv_autograd(ctx, grad):
    x, w9, bias = ctx.saved_tensors
    dx, dw9, db = dwconv_backward_op(grad, x, w9, bias, ctx.act)
    return dx, dw9, (db if bias is not None else None), None


if triton is not None:
    dwconv_backward_op = register_fused_op('dwconv3x3_act_backward', _dwconv_backward_op,
                                           _dwconv_backward_fake)
    dwconv_op = register_fused_op('dwconv3x3_act', _dwconv_op,
                                  lambda x, w9, bias, act: x.new_empty(x.shape),
                                  _dwconv_autograd, _dwconv_setup)


def depthwise_conv3x3_act(x: torch.Tensor, weight: torch.Tensor, bias=None,
                          act: str = 'none', fused: bool = True) -> torch.Tensor:
    """``act(depthwise_conv3x3(x) + bias)`` on a channels-last (B, H, W, C) map.

    Args:
        x: (B, H, W, C). weight: (C, 1, 3, 3) (an ``nn.Conv2d(C, C, 3, padding=1,
            groups=C)`` weight). bias: (C,) or None.
        act: ``none``, ``silu`` or ``gelu`` (exact, erf).
        fused: the Triton kernel where it applies; ``False``: the PyTorch composition.

    Returns:
        (B, H, W, C), contiguous, in ``x``'s dtype on the fused path.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f'Unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}.')
    C = x.shape[-1]
    if x.dim() != 4 or tuple(weight.shape) != (C, 1, 3, 3):
        raise ValueError(f'Expected x (B, H, W, C) and weight (C, 1, 3, 3), got '
                         f'{tuple(x.shape)} and {tuple(weight.shape)}.')
    if triton is None or not fused_kernel_applies(x, fused):
        return _torch_impl(x, weight, bias, act)
    if x.is_cuda and torch.is_autocast_enabled('cuda') and x.dtype == torch.float32:
        x = x.to(torch.get_autocast_dtype('cuda'))  # what F.conv2d would do
    w9 = weight.reshape(C, 9).float().contiguous()
    b1 = None if bias is None else bias.float().contiguous()
    return call_fused(_DWConvAct, dwconv_op, x, w9, b1, ACTIVATIONS[act])
