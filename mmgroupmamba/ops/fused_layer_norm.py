"""LayerNorm over the channels of a channels-last map, optionally of a modulated input.

``layer_norm(x, weight, bias, eps, out_dtype)`` is ``F.layer_norm`` over the last
dimension; ``modulated_layer_norm(y, x, scale, ...)`` is ``LN(y * x * scale[b, c])`` for
(B, ..., C) maps ``y``, ``x`` and a per-image, per-channel ``scale`` (B, C) -- the ending
of every GroupMamba layer, which otherwise is three passes over the map;
``residual_layer_norm(x, y, factor, ...)`` is ``(s, LN(s))`` with ``s = x + y *
factor[b]`` -- a residual add (with its drop-path factor) and the norm after it, which
otherwise are an add, a norm, and in the backward an add of the two gradients of ``s``
and a cast of the branch's gradient.

Why a kernel of our own: GroupMamba normalises narrow rows (64-512 channels) of very many
tokens (401k rows per stage-1 LN at batch 128), a shape PyTorch's LayerNorm kernel runs
several times below memory bandwidth (one row per thread block); under autocast it also
writes fp32 that the next matmul reads back and casts. On CUDA (with Triton) one kernel
normalises a tile of rows per program, with fp32 statistics, and writes ``out_dtype``
(e.g. the autocast dtype for a norm whose output feeds matmuls). The backward recomputes
the statistics (the op keeps only its inputs) and reduces the weight and bias gradients
per program, then once over programs (deterministic).

Elsewhere -- CPU, ``torch.jit`` tracing (FLOP counting), ``torch.compile`` (Inductor
fuses the PyTorch composition itself) and with ``fused=False`` -- it is the
PyTorch composition.
"""
import torch
import torch.nn.functional as F

from .dispatch import apply_function, fused_kernel_applies, triton_interpreting

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - no (usable) Triton: the PyTorch path needs none
    triton = None

# Widest row the kernels take (one tile row holds the whole row); wider falls back.
MAX_FUSED_CHANNELS = 4096


def _broadcast_scale(scale, x):
    """(B, C) -> (B, 1, ..., 1, C), broadcastable against ``x`` (B, ..., C)."""
    return scale.view(scale.shape[0], *([1] * (x.dim() - 2)), scale.shape[-1])


def _torch_impl(x, y, scale, weight, bias, eps, out_dtype):
    if y is not None:
        x = x * y * _broadcast_scale(scale, x)
    out = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return out if out_dtype is None else out.to(out_dtype)


def residual_add(x, y, factor=None):
    """``x + y * factor[b]`` (``factor`` (B,) or None for 1) as the layers compute it
    without the kernel: one ``addcmul`` outside autocast, whose promotion would first copy
    a half-precision ``y`` to float32 (the element-wise kernel converts as it reads)."""
    if factor is None:
        return x + y
    with torch.autocast(y.device.type, enabled=False):
        return torch.addcmul(x, y, factor.view(-1, *([1] * (y.dim() - 1))))


if triton is not None:

    @triton.jit
    def _load_rows(x_ptr, y_ptr, s_ptr, rows, cols, mask, C, rows_per_batch,
                   MOD: tl.constexpr, RES: tl.constexpr = False,
                   FACTOR: tl.constexpr = False):
        """The normalised quantity of a tile (fp32): x; ``MOD``: x * y * scale[batch of
        row, channel]; ``RES``: x + y (times factor[batch of row] with ``FACTOR``)."""
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
        b = (rows // rows_per_batch).to(tl.int64)
        if MOD:
            yv = tl.load(y_ptr + offs, mask=mask, other=0.).to(tl.float32)
            sv = tl.load(s_ptr + b[:, None] * C + cols[None, :], mask=mask,
                         other=0.).to(tl.float32)
            v = v * yv * sv
        if RES:
            yv = tl.load(y_ptr + offs, mask=mask, other=0.).to(tl.float32)
            if FACTOR:
                yv = yv * tl.load(s_ptr + b).to(tl.float32)[:, None]
            v = v + yv
        return v

    @triton.jit
    def _centred_rows(v, mask, C, eps):
        """Each row minus its mean (zero outside ``mask``) and its 1 / std."""
        mean = tl.sum(v, axis=1) / C
        diff = tl.where(mask, v - mean[:, None], 0.)
        return diff, 1. / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)

    @triton.jit(do_not_specialize=['M', 'rows_per_batch'])
    def _ln_fwd_kernel(x_ptr, y_ptr, s_ptr, w_ptr, b_ptr, out_ptr, sum_ptr, M, C,
                       rows_per_batch, eps, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                       MOD: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       RES: tl.constexpr = False, FACTOR: tl.constexpr = False):
        """``out = LN(v)`` of the rows of ``_load_rows``; ``RES``: ``v`` (the residual
        sum) is written to ``sum_ptr`` too."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mask_c = cols < C
        mask = (rows < M)[:, None] & mask_c[None, :]
        v = _load_rows(x_ptr, y_ptr, s_ptr, rows, cols, mask, C, rows_per_batch, MOD,
                       RES, FACTOR)
        if RES:
            # normalise the sum as stored (the backward reads it back)
            v = v.to(sum_ptr.dtype.element_ty)
            tl.store(sum_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], v, mask=mask)
            v = v.to(tl.float32)
        diff, rstd = _centred_rows(v, mask, C, eps)
        out = diff * rstd[:, None]
        if HAS_W:
            out = out * tl.load(w_ptr + cols, mask=mask_c, other=0.).to(tl.float32)[None, :]
        if HAS_B:
            out = out + tl.load(b_ptr + cols, mask=mask_c, other=0.).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * C + cols[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=['rows_per_batch', 'n_tiles'])
    def _ln_bwd_kernel(x_ptr, y_ptr, s_ptr, w_ptr, g_ptr, dx_ptr, dy_ptr, ds_part_ptr,
                       dwb_part_ptr, gs_ptr, C, rows_per_batch, n_tiles, eps,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, MOD: tl.constexpr,
                       HAS_W: tl.constexpr, RES: tl.constexpr = False,
                       FACTOR: tl.constexpr = False):
        """dx (and, modulated, dy and per-tile partial sums of dscale); per-program
        partial sums of dweight (row 0) and dbias (row 1). ``RES``: ``x_ptr`` is the
        residual sum, ``gs_ptr`` its gradient from elsewhere (added), and the sum's
        gradient goes to both summands (``dy`` times the factor with ``FACTOR``).

        Tiles never straddle two images (``rows_per_batch`` rows each), so a tile's
        dscale partial belongs to one image.
        """
        pid = tl.program_id(0)
        n_prog = tl.num_programs(0)
        tiles_per_batch = tl.cdiv(rows_per_batch, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mask_c = cols < C
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=mask_c, other=0.).to(tl.float32)
        acc_dw = tl.zeros((BLOCK_C, ), dtype=tl.float32)
        acc_db = tl.zeros((BLOCK_C, ), dtype=tl.float32)
        for t in range(pid, n_tiles, n_prog):
            b = t // tiles_per_batch
            r = (t % tiles_per_batch) * BLOCK_M + tl.arange(0, BLOCK_M)
            rows = b * rows_per_batch + r
            mask = (r < rows_per_batch)[:, None] & mask_c[None, :]
            offs = rows[:, None].to(tl.int64) * C + cols[None, :]
            v = _load_rows(x_ptr, y_ptr, s_ptr, rows, cols, mask, C, rows_per_batch, MOD)
            diff, rstd = _centred_rows(v, mask, C, eps)
            xhat = diff * rstd[:, None]
            g = tl.load(g_ptr + offs, mask=mask, other=0.).to(tl.float32)
            acc_dw += tl.sum(g * xhat, axis=0)
            acc_db += tl.sum(g, axis=0)
            if HAS_W:
                g = g * w[None, :]
            dv = (g - (tl.sum(g, axis=1) / C)[:, None]
                  - xhat * (tl.sum(g * xhat, axis=1) / C)[:, None]) * rstd[:, None]
            dv = tl.where(mask, dv, 0.)
            if MOD:
                xv = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
                yv = tl.load(y_ptr + offs, mask=mask, other=0.).to(tl.float32)
                sv = tl.load(s_ptr + b * C + cols, mask=mask_c,
                             other=0.).to(tl.float32)
                tl.store(dx_ptr + offs, (dv * yv * sv[None, :]).to(dx_ptr.dtype.element_ty),
                         mask=mask)
                tl.store(dy_ptr + offs, (dv * xv * sv[None, :]).to(dy_ptr.dtype.element_ty),
                         mask=mask)
                tl.store(ds_part_ptr + t * C + cols,
                         tl.sum(dv * xv * yv, axis=0), mask=mask_c)
            else:
                if RES:
                    dv += tl.load(gs_ptr + offs, mask=mask, other=0.).to(tl.float32)
                    dyv = dv
                    if FACTOR:
                        dyv = dv * tl.load(s_ptr + b).to(tl.float32)
                    tl.store(dy_ptr + offs, dyv.to(dy_ptr.dtype.element_ty), mask=mask)
                tl.store(dx_ptr + offs, dv.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dwb_part_ptr + pid * 2 * C + cols, acc_dw, mask=mask_c)
        tl.store(dwb_part_ptr + pid * 2 * C + C + cols, acc_db, mask=mask_c)


def _tiles(C, elements):
    block_c = triton.next_power_of_2(C)
    return max(1, elements // block_c), block_c


def _warps(elements):
    if triton_interpreting():
        return 1
    return 8 if elements >= 4096 else 4


def _fwd_launch(C, M):
    """``(grid, meta)`` of the forward kernel over M rows of C channels."""
    block_m, block_c = _tiles(C, 4096)
    meta = dict(BLOCK_M=block_m, BLOCK_C=block_c, num_warps=_warps(block_m * block_c))
    return (triton.cdiv(M, block_m), ), meta


def _bwd_launch(C, M, rows_per_batch):
    """``(programs, tiles per image, tiles, meta)`` of the backward kernel: tiles of
    rows that never straddle two images, walked by at most 1024 programs."""
    block_m, block_c = _tiles(C, 2048)
    tiles_per_batch = triton.cdiv(rows_per_batch, block_m)
    n_tiles = (M // rows_per_batch) * tiles_per_batch
    n_prog = max(1, min(n_tiles, 1024 if not triton_interpreting() else 4))
    meta = dict(BLOCK_M=block_m, BLOCK_C=block_c, num_warps=_warps(block_m * block_c))
    return n_prog, tiles_per_batch, n_tiles, meta


def _weight_bias_grads(dwb_part, weight, bias_dtype):
    """The per-program partial sums of the backward summed: ``(dweight, dbias)``."""
    dwb = dwb_part.sum(0)
    return (dwb[0].to(weight.dtype) if weight is not None else None,
            dwb[1].to(bias_dtype) if bias_dtype is not None else None)


class _LayerNormFn(torch.autograd.Function):
    """Rows of ``x`` (or of ``x * y * scale``) normalised over their C channels."""

    @staticmethod
    def forward(ctx, x, y, scale, weight, bias, eps, out_dtype, rows_per_batch):
        C = x.shape[-1]
        M = x.numel() // C
        out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
        grid, meta = _fwd_launch(C, M)
        dummy = x
        _ln_fwd_kernel[grid](
            x_ptr=x, y_ptr=y if y is not None else dummy,
            s_ptr=scale if scale is not None else dummy,
            w_ptr=weight if weight is not None else dummy,
            b_ptr=bias if bias is not None else dummy, out_ptr=out, sum_ptr=out, M=M, C=C,
            rows_per_batch=rows_per_batch, eps=eps, MOD=y is not None,
            HAS_W=weight is not None, HAS_B=bias is not None, **meta)
        ctx.save_for_backward(x, y, scale, weight)
        ctx.meta = (eps, rows_per_batch, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, scale, weight = ctx.saved_tensors
        eps, rows_per_batch, bias_dtype = ctx.meta
        grad = grad.contiguous()
        C = x.shape[-1]
        M = x.numel() // C
        n_prog, tiles_per_batch, n_tiles, meta = _bwd_launch(C, M, rows_per_batch)
        mod = y is not None
        dx = torch.empty_like(x)
        dy = torch.empty_like(y) if mod else dx
        ds_part = (torch.empty(n_tiles, C, device=x.device, dtype=torch.float32) if mod
                   else dx)
        dwb_part = torch.empty(n_prog, 2, C, device=x.device, dtype=torch.float32)
        _ln_bwd_kernel[(n_prog, )](
            x_ptr=x, y_ptr=y if mod else x, s_ptr=scale if mod else x,
            w_ptr=weight if weight is not None else x, g_ptr=grad, dx_ptr=dx, dy_ptr=dy,
            ds_part_ptr=ds_part, dwb_part_ptr=dwb_part, gs_ptr=grad, C=C,
            rows_per_batch=rows_per_batch, n_tiles=n_tiles, eps=eps, MOD=mod,
            HAS_W=weight is not None, **meta)
        dw, db = _weight_bias_grads(dwb_part, weight, bias_dtype)
        ds = (ds_part.view(-1, tiles_per_batch, C).sum(1).to(scale.dtype) if mod
              else None)
        return dx, (dy if mod else None), ds, dw, db, None, None, None


class _ResidualLayerNormFn(torch.autograd.Function):
    """``(s, LN(s))`` with ``s = x + y * factor[b]``: the forward writes both, the
    backward adds the gradient reaching ``s`` from elsewhere to the norm's and writes
    the gradients of ``x`` and ``y`` in their dtypes (keeps ``s``, not ``x`` and ``y``)."""

    @staticmethod
    def forward(ctx, x, y, factor, weight, bias, eps, out_dtype, rows_per_batch):
        C = x.shape[-1]
        M = x.numel() // C
        total = torch.empty(x.shape, device=x.device,
                            dtype=torch.promote_types(x.dtype, y.dtype))
        out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
        grid, meta = _fwd_launch(C, M)
        _ln_fwd_kernel[grid](
            x_ptr=x, y_ptr=y, s_ptr=factor if factor is not None else x,
            w_ptr=weight if weight is not None else x, b_ptr=bias if bias is not None else x,
            out_ptr=out, sum_ptr=total, M=M, C=C, rows_per_batch=rows_per_batch, eps=eps,
            MOD=False, HAS_W=weight is not None, HAS_B=bias is not None, RES=True,
            FACTOR=factor is not None, **meta)
        ctx.save_for_backward(total, factor, weight)
        ctx.meta = (eps, rows_per_batch, None if bias is None else bias.dtype, x.dtype,
                    y.dtype)
        return total, out

    @staticmethod
    def backward(ctx, grad_total, grad_out):
        total, factor, weight = ctx.saved_tensors
        eps, rows_per_batch, bias_dtype, x_dtype, y_dtype = ctx.meta
        grad_out, grad_total = grad_out.contiguous(), grad_total.contiguous()
        C = total.shape[-1]
        n_prog, _, n_tiles, meta = _bwd_launch(C, total.numel() // C, rows_per_batch)
        dx = torch.empty(total.shape, device=total.device, dtype=x_dtype)
        dy = torch.empty(total.shape, device=total.device, dtype=y_dtype)
        dwb_part = torch.empty(n_prog, 2, C, device=total.device, dtype=torch.float32)
        _ln_bwd_kernel[(n_prog, )](
            x_ptr=total, y_ptr=total, s_ptr=factor if factor is not None else total,
            w_ptr=weight if weight is not None else total, g_ptr=grad_out, dx_ptr=dx,
            dy_ptr=dy, ds_part_ptr=dx, dwb_part_ptr=dwb_part, gs_ptr=grad_total, C=C,
            rows_per_batch=rows_per_batch, n_tiles=n_tiles, eps=eps, MOD=False,
            HAS_W=weight is not None, RES=True, FACTOR=factor is not None, **meta)
        dw, db = _weight_bias_grads(dwb_part, weight, bias_dtype)
        return dx, dy, None, dw, db, None, None, None


def _use_kernel(x: torch.Tensor, fused: bool) -> bool:
    return (triton is not None and fused_kernel_applies(x, fused)
            and x.shape[-1] <= MAX_FUSED_CHANNELS and x.numel() > 0
            and not torch.compiler.is_compiling())


def layer_norm(x: torch.Tensor, weight=None, bias=None, eps: float = 1e-5,
               out_dtype: torch.dtype = None, fused: bool = True) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension, written in ``out_dtype``.

    Args:
        x: (..., C). weight, bias: (C,) or None.
        out_dtype: dtype of the result; ``None`` keeps ``F.layer_norm``'s (``x``'s dtype,
            float32 under autocast).
        fused: the Triton kernel where it applies; ``False``: the PyTorch composition.
    """
    if not _use_kernel(x, fused):
        return _torch_impl(x, None, None, weight, bias, eps, out_dtype)
    if out_dtype is None:
        out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    M = x.numel() // x.shape[-1]
    return _fused(x.contiguous(), None, None, weight, bias, eps, out_dtype, M)


def modulated_layer_norm(y: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, weight=None,
                         bias=None, eps: float = 1e-5,
                         out_dtype: torch.dtype = None, fused: bool = True) -> torch.Tensor:
    """``LN(y * x * scale)`` over the last dimension, in one pass on CUDA.

    Args:
        y, x: (B, ..., C) maps of the same shape.
        scale: (B, C), one factor per image and channel.
        out_dtype, fused: as in :func:`layer_norm`.
    """
    if y.shape != x.shape or scale.dim() != 2 or scale.shape != (x.shape[0], x.shape[-1]):
        raise ValueError(f'modulated_layer_norm expects y and x of one shape (B, ..., C) '
                         f'and scale (B, C); got {tuple(y.shape)}, {tuple(x.shape)} and '
                         f'{tuple(scale.shape)}.')
    if not _use_kernel(x, fused):
        return _torch_impl(y, x, scale, weight, bias, eps, out_dtype)
    if out_dtype is None:
        out_dtype = (torch.float32 if torch.is_autocast_enabled(x.device.type)
                     else torch.promote_types(torch.promote_types(y.dtype, x.dtype),
                                              scale.dtype))
    rows_per_batch = x.numel() // (x.shape[0] * x.shape[-1])
    return _fused(y.contiguous(), x.contiguous(), scale.contiguous(), weight, bias, eps,
                  out_dtype, rows_per_batch)


def residual_layer_norm(x: torch.Tensor, y: torch.Tensor, factor=None, weight=None,
                        bias=None, eps: float = 1e-5, out_dtype: torch.dtype = None,
                        fused: bool = True):
    """``(s, LN(s))`` with ``s = x + y * factor[b]``: a residual add and the LayerNorm
    after it, in one pass on CUDA (and one in the backward).

    Args:
        x, y: (B, ..., C) trunk and branch of one shape; ``s`` is in their promoted dtype
            (the trunk's float32 under autocast).
        factor: (B,) per-image factor of the branch (a drop path's ``mask / keep``) or
            None. It gets no gradient.
        out_dtype, fused: as in :func:`layer_norm`.
    """
    if y.shape != x.shape or (factor is not None and tuple(factor.shape) != (x.shape[0], )):
        raise ValueError(f'residual_layer_norm expects x and y of one shape (B, ..., C) and '
                         f'factor (B,) or None; got {tuple(x.shape)}, {tuple(y.shape)} and '
                         f'{None if factor is None else tuple(factor.shape)}.')
    if not _use_kernel(x, fused):
        total = residual_add(x, y, factor)
        return total, _torch_impl(total, None, None, weight, bias, eps, out_dtype)
    if out_dtype is None:
        out_dtype = (torch.float32 if torch.is_autocast_enabled(x.device.type)
                     else torch.promote_types(x.dtype, y.dtype))
    rows_per_batch = x.numel() // (x.shape[0] * x.shape[-1])
    return _fused_residual(x.contiguous(), y.contiguous(),
                           None if factor is None else factor.float().contiguous(), weight,
                           bias, eps, out_dtype, rows_per_batch)


@torch.compiler.disable
def _fused_residual(x, y, factor, weight, bias, eps, out_dtype, rows_per_batch):
    return apply_function(_ResidualLayerNormFn, x, y, factor, weight, bias, eps, out_dtype,
                          rows_per_batch)


@torch.compiler.disable
def _fused(x, y, scale, weight, bias, eps, out_dtype, rows_per_batch):
    return apply_function(_LayerNormFn, x, y, scale, weight, bias, eps, out_dtype,
                          rows_per_batch)
