"""Triton selective scan for state size 1, forward and backward (nothing to compile).

Two entry points share one pair of kernels:

* :func:`selective_scan_triton` has the contract of every other backend of
  :func:`mmgroupmamba.ops.selective_scan` (``u, delta: (batch, dim, L)``, ``B, C:
  (batch, 1, L)``), for ``N = 1`` only.
* :func:`grouped_selective_scan_triton` is the fused operator of a whole GroupMamba
  layer: the four groups' scans in one launch, each group reading its channels of the
  channels-last feature map in its own direction (row-major, column-major and both
  reversed) through index arithmetic (no flipped or transposed copies), with the dt
  projection, ``softplus``, the ``D`` skip, the per-group ``out_norm`` LayerNorm and the
  ``SiLU(z)`` gate fused around the scan. Its output is back in H x W order.

Design (``d_state = 1`` makes the state a scalar per channel):

* one program scans one (batch, group) pair over the whole sequence for a block of
  channels (all the group's channels when the LayerNorm is fused);
* the sequence is walked in chunks of ``BLOCK_L`` positions; inside a chunk the linear
  recurrence ``h_t = a_t h_(t-1) + b_t`` is one ``tl.associative_scan`` over
  ``(a, b)`` pairs, the state entering the chunk is carried in registers;
* everything is computed in fp32; inputs and outputs may be fp16/bf16;
* the forward keeps only the state at every chunk end (``B * G * L / BLOCK_L * d``
  floats) for the backward, which walks the chunks in reverse, recomputes the chunk's
  forward (states, LayerNorm statistics) from its entry state and runs the reverse
  scan ``s_t = a_(t+1) s_(t+1) + dy_t C_t`` with the state gradient carried across
  chunks. Parameter gradients are reduced per program, then over the batch in PyTorch
  (deterministic, no atomics).
"""
import os

import torch
import triton
import triton.language as tl

from .dispatch import apply_function, triton_interpreting

__all__ = ['selective_scan_triton', 'grouped_selective_scan_triton', 'DIRECTION_CODES']

# Scan directions as the kernel knows them (see ``_token_index``).
DIRECTION_CODES = {'row': 0, 'col': 1, 'row_rev': 2, 'col_rev': 3}

# Launch tuning: elements of one (BLOCK_L, BLOCK_D) tile and elements per thread (which
# sets the warps), forward and backward. The backward keeps about twice as many tiles
# alive. Overridable through the environment or :func:`set_tuning`.
TUNING = dict(
    fwd_tile=int(os.environ.get('MMGM_SCAN_FWD_TILE', 2048)),
    fwd_per_thread=int(os.environ.get('MMGM_SCAN_FWD_PER_THREAD', 16)),
    bwd_tile=int(os.environ.get('MMGM_SCAN_BWD_TILE', 1024)),
    bwd_per_thread=int(os.environ.get('MMGM_SCAN_BWD_PER_THREAD', 8)),
)


def set_tuning(**kwargs):
    """Change :data:`TUNING` (``fwd_tile``, ``fwd_per_thread``, ``bwd_tile``,
    ``bwd_per_thread``); returns the previous values."""
    unknown = set(kwargs) - set(TUNING)
    if unknown:
        raise KeyError(f'unknown tuning keys {sorted(unknown)}; known: {sorted(TUNING)}')
    old = dict(TUNING)
    TUNING.update({k: int(v) for k, v in kwargs.items()})
    return old


# Largest channel block of one program; a fused LayerNorm needs a whole group in one.
MAX_BLOCK_D = 512


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2.
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _token_index(seq, L, H, W, direction):
    """Row-major token index ``h * W + w`` of sequence position ``seq``.

    direction 0: row-major; 1: column-major (``seq -> (seq % H, seq // H)``); 2 and 3: the same
    sequences read backwards (``seq -> L - 1 - seq`` first).
    """
    lr = tl.where(direction >= 2, L - 1 - seq, seq)
    col = (lr % H) * W + lr // H
    return tl.where((direction % 2) == 1, col, lr)


@triton.jit
def _delta(dl_base, w_ptr, pos, mask_l, c, j, mask_d, g, d, s_dl_l, s_dl_c, bias,
           R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
           HAS_DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Pre-activation ``v = dt + bias`` and ``delta = softplus(v)`` of a tile, fp32.

    With ``HAS_DT_PROJ`` the kernel gets the low-rank ``dt_r`` (R values per token and
    group) and the group's ``(d, R)`` dt projection, and forms ``dt = W dt_r`` itself.
    """
    if HAS_DT_PROJ:
        v = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        for r in tl.static_range(R):
            xr = tl.load(dl_base + pos * s_dl_l + (g * R + r) * s_dl_c, mask=mask_l,
                         other=0.).to(tl.float32)
            wr = tl.load(w_ptr + (g * d + j) * R + r, mask=mask_d, other=0.)
            v += xr[:, None] * wr[None, :]
    else:
        v = tl.load(dl_base + pos[:, None] * s_dl_l + c[None, :] * s_dl_c,
                    mask=mask_l[:, None] & mask_d[None, :], other=0.).to(tl.float32)
    if HAS_BIAS:
        v += bias[None, :]
    if SOFTPLUS:
        # PyTorch's softplus (threshold 20); the other branch's inf is discarded.
        delta = tl.where(v > 20., v, tl.log(1. + tl.exp(v)))
    else:
        delta = v
    return v, delta


@triton.jit(do_not_specialize=['L', 'H', 'W', 'n_chunks'])
def _scan_fwd_kernel(
        u_ptr, s_u_b, s_u_l, s_u_c,
        dl_ptr, s_dl_b, s_dl_l, s_dl_c,
        w_ptr, bias_ptr, A_ptr, D_ptr,
        B_ptr, s_B_b, s_B_l, s_B_g,
        C_ptr, s_C_b, s_C_l, s_C_g,
        z_ptr, s_z_b, s_z_l, s_z_c,
        lnw_ptr, lnb_ptr,
        out_ptr, s_o_b, s_o_l, s_o_c,
        hs_ptr, dir_ptr,
        L, H, W, d, n_chunks, eps,
        G: tl.constexpr, R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
        SAVE_STATES: tl.constexpr):
    pid = tl.program_id(0)          # batch * G + group
    pid_d = tl.program_id(1)        # channel block inside the group
    b = (pid // G).to(tl.int64)
    g = pid % G
    direction = tl.load(dir_ptr + g)

    j = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)        # channel inside the group
    mask_d = j < d
    c = g * d + j                                       # channel of the whole map
    A = tl.load(A_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    else:
        Dv = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    if HAS_NORM:
        lnw = tl.load(lnw_ptr + c, mask=mask_d, other=0.).to(tl.float32)
        lnb = tl.load(lnb_ptr + c, mask=mask_d, other=0.).to(tl.float32)

    u_base = u_ptr + b * s_u_b
    dl_base = dl_ptr + b * s_dl_b
    B_base = B_ptr + b * s_B_b + g * s_B_g
    C_base = C_ptr + b * s_C_b + g * s_C_g
    z_base = z_ptr + b * s_z_b
    o_base = out_ptr + b * s_o_b

    rows = tl.arange(0, BLOCK_L)
    h = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    for k in range(n_chunks):
        seq = k * BLOCK_L + rows
        mask_l = seq < L
        pos = _token_index(seq, L, H, W, direction)
        mask2 = mask_l[:, None] & mask_d[None, :]

        u = tl.load(u_base + pos[:, None] * s_u_l + c[None, :] * s_u_c, mask=mask2,
                    other=0.).to(tl.float32)
        v, delta = _delta(dl_base, w_ptr, pos, mask_l, c, j, mask_d, g, d, s_dl_l,
                          s_dl_c, bias, R, BLOCK_L, BLOCK_D, HAS_DT_PROJ, HAS_BIAS,
                          SOFTPLUS)
        Bv = tl.load(B_base + pos * s_B_l, mask=mask_l, other=0.).to(tl.float32)
        Cv = tl.load(C_base + pos * s_C_l, mask=mask_l, other=0.).to(tl.float32)

        a = tl.exp(delta * A[None, :])
        bx = delta * Bv[:, None] * u
        a_cum, h_loc = tl.associative_scan((a, bx), 0, _combine)
        hh = h_loc + a_cum * h[None, :]
        # state leaving the chunk (its last row), carried into the next one
        h = tl.sum(tl.where(rows[:, None] == BLOCK_L - 1, hh, 0.), axis=0)
        if SAVE_STATES:
            tl.store(hs_ptr + (pid * n_chunks + k) * d + j, h, mask=mask_d)

        y = hh * Cv[:, None]
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_NORM:
            mean = tl.sum(y, axis=1) / d
            diff = tl.where(mask_d[None, :], y - mean[:, None], 0.)
            rstd = 1. / tl.sqrt(tl.sum(diff * diff, axis=1) / d + eps)
            y = diff * rstd[:, None] * lnw[None, :] + lnb[None, :]
        if HAS_Z:
            zv = tl.load(z_base + pos[:, None] * s_z_l + c[None, :] * s_z_c, mask=mask2,
                         other=0.).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(o_base + pos[:, None] * s_o_l + c[None, :] * s_o_c,
                 y.to(out_ptr.dtype.element_ty), mask=mask2)


@triton.jit(do_not_specialize=['L', 'H', 'W', 'n_chunks', 'n_batch'])
def _scan_bwd_kernel(
        u_ptr, s_u_b, s_u_l, s_u_c,
        dl_ptr, s_dl_b, s_dl_l, s_dl_c,
        w_ptr, bias_ptr, A_ptr, D_ptr,
        B_ptr, s_B_b, s_B_l, s_B_g,
        C_ptr, s_C_b, s_C_l, s_C_g,
        z_ptr, s_z_b, s_z_l, s_z_c,
        lnw_ptr, lnb_ptr,
        go_ptr, s_go_b, s_go_l, s_go_c,
        hs_ptr, dir_ptr,
        du_ptr, s_du_b, s_du_l, s_du_c,
        ddl_ptr, s_ddl_b, s_ddl_l, s_ddl_c,
        dB_ptr, s_dB_k, s_dB_b, s_dB_l, s_dB_g,
        dC_ptr, s_dC_k, s_dC_b, s_dC_l, s_dC_g,
        dz_ptr, s_dz_b, s_dz_l, s_dz_c,
        dA_ptr, dD_ptr, dbias_ptr, dlnw_ptr, dlnb_ptr, dw_ptr,
        L, H, W, d, n_chunks, n_batch, eps,
        G: tl.constexpr, R: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr):
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = (pid // G).to(tl.int64)
    g = pid % G
    direction = tl.load(dir_ptr + g)

    j = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = j < d
    c = g * d + j
    A = tl.load(A_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    else:
        Dv = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    if HAS_NORM:
        lnw = tl.load(lnw_ptr + c, mask=mask_d, other=0.).to(tl.float32)
        lnb = tl.load(lnb_ptr + c, mask=mask_d, other=0.).to(tl.float32)

    u_base = u_ptr + b * s_u_b
    dl_base = dl_ptr + b * s_dl_b
    B_base = B_ptr + b * s_B_b + g * s_B_g
    C_base = C_ptr + b * s_C_b + g * s_C_g
    z_base = z_ptr + b * s_z_b
    go_base = go_ptr + b * s_go_b
    du_base = du_ptr + b * s_du_b
    ddl_base = ddl_ptr + b * s_ddl_b
    dB_base = dB_ptr + pid_d * s_dB_k + b * s_dB_b + g * s_dB_g
    dC_base = dC_ptr + pid_d * s_dC_k + b * s_dC_b + g * s_dC_g
    dz_base = dz_ptr + b * s_dz_b

    rows = tl.arange(0, BLOCK_L)
    rr = tl.arange(0, BLOCK_R)
    s_carry = tl.zeros((BLOCK_D, ), dtype=tl.float32)   # dL/dh entering from the right
    acc_A = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_D = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_lnw = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_lnb = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)

    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        seq = k * BLOCK_L + rows
        mask_l = seq < L
        pos = _token_index(seq, L, H, W, direction)
        mask2 = mask_l[:, None] & mask_d[None, :]

        # ---- recompute the chunk's forward from its entry state
        u = tl.load(u_base + pos[:, None] * s_u_l + c[None, :] * s_u_c, mask=mask2,
                    other=0.).to(tl.float32)
        v, delta = _delta(dl_base, w_ptr, pos, mask_l, c, j, mask_d, g, d, s_dl_l,
                          s_dl_c, bias, R, BLOCK_L, BLOCK_D, HAS_DT_PROJ, HAS_BIAS,
                          SOFTPLUS)
        Bv = tl.load(B_base + pos * s_B_l, mask=mask_l, other=0.).to(tl.float32)
        Cv = tl.load(C_base + pos * s_C_l, mask=mask_l, other=0.).to(tl.float32)
        h0 = tl.load(hs_ptr + (pid * n_chunks + k - 1) * d + j, mask=mask_d & (k > 0),
                     other=0.)
        a = tl.exp(delta * A[None, :])
        bx = delta * Bv[:, None] * u
        a_cum, h_loc = tl.associative_scan((a, bx), 0, _combine)
        hh = h_loc + a_cum * h0[None, :]

        y = hh * Cv[:, None]
        if HAS_D:
            y += Dv[None, :] * u
        go = tl.load(go_base + pos[:, None] * s_go_l + c[None, :] * s_go_c, mask=mask2,
                     other=0.).to(tl.float32)
        if HAS_NORM:
            mean = tl.sum(y, axis=1) / d
            diff = tl.where(mask_d[None, :], y - mean[:, None], 0.)
            rstd = 1. / tl.sqrt(tl.sum(diff * diff, axis=1) / d + eps)
            xhat = diff * rstd[:, None]
            yn = xhat * lnw[None, :] + lnb[None, :]
        else:
            yn = y
        # ---- gate and LayerNorm backward
        if HAS_Z:
            zv = tl.load(z_base + pos[:, None] * s_z_l + c[None, :] * s_z_c, mask=mask2,
                         other=0.).to(tl.float32)
            sz = tl.sigmoid(zv)
            gy = go * zv * sz
            dz = go * yn * sz * (1. + zv * (1. - sz))
            tl.store(dz_base + pos[:, None] * s_dz_l + c[None, :] * s_dz_c,
                     dz.to(dz_ptr.dtype.element_ty), mask=mask2)
        else:
            gy = go
        if HAS_NORM:
            acc_lnw += tl.sum(gy * xhat, axis=0)
            acc_lnb += tl.sum(gy, axis=0)
            dxh = gy * lnw[None, :]
            m1 = tl.sum(dxh, axis=1) / d
            m2 = tl.sum(dxh * xhat, axis=1) / d
            dy = rstd[:, None] * (dxh - m1[:, None] - xhat * m2[:, None])
            dy = tl.where(mask2, dy, 0.)
        else:
            dy = gy

        # ---- y = C h + D u
        tl.store(dC_base + pos * s_dC_l, tl.sum(dy * hh, axis=1), mask=mask_l)
        if HAS_D:
            acc_D += tl.sum(dy * u, axis=0)
            du = dy * Dv[None, :]
        else:
            du = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)

        # ---- reverse scan s_t = a_(t+1) s_(t+1) + C_t dy_t, carried across chunks
        l1 = seq + 1
        mask_l1 = l1 < L
        pos1 = _token_index(l1, L, H, W, direction)
        v1, delta1 = _delta(dl_base, w_ptr, pos1, mask_l1, c, j, mask_d, g, d, s_dl_l,
                            s_dl_c, bias, R, BLOCK_L, BLOCK_D, HAS_DT_PROJ, HAS_BIAS,
                            SOFTPLUS)
        alpha = tl.where(mask_l1[:, None], tl.exp(delta1 * A[None, :]), 0.)
        e = dy * Cv[:, None]
        a_rcum, s_loc = tl.associative_scan((alpha, e), 0, _combine, reverse=True)
        s = s_loc + a_rcum * s_carry[None, :]
        s_carry = tl.sum(tl.where(rows[:, None] == 0, s, 0.), axis=0)

        # ---- h_t = a_t h_(t-1) + delta_t B_t u_t, a_t = exp(delta_t A)
        ah = hh - bx                                   # a_t h_(t-1)
        du += s * delta * Bv[:, None]
        tl.store(du_base + pos[:, None] * s_du_l + c[None, :] * s_du_c,
                 du.to(du_ptr.dtype.element_ty), mask=mask2)
        tl.store(dB_base + pos * s_dB_l, tl.sum(s * delta * u, axis=1), mask=mask_l)
        acc_A += tl.sum(s * ah * delta, axis=0)
        ddelta = s * (Bv[:, None] * u + ah * A[None, :])
        if SOFTPLUS:
            dv = ddelta * tl.sigmoid(v)
        else:
            dv = ddelta
        dv = tl.where(mask2, dv, 0.)
        if HAS_BIAS:
            acc_bias += tl.sum(dv, axis=0)
        if HAS_DT_PROJ:
            for r in tl.static_range(R):
                xr = tl.load(dl_base + pos * s_dl_l + (g * R + r) * s_dl_c, mask=mask_l,
                             other=0.).to(tl.float32)
                wr = tl.load(w_ptr + (g * d + j) * R + r, mask=mask_d, other=0.)
                tl.store(ddl_base + pos * s_ddl_l + (g * R + r) * s_ddl_c,
                         tl.sum(dv * wr[None, :], axis=1), mask=mask_l)
                acc_w += tl.where(rr[:, None] == r,
                                  tl.sum(dv * xr[:, None], axis=0)[None, :], 0.)
        else:
            tl.store(ddl_base + pos[:, None] * s_ddl_l + c[None, :] * s_ddl_c,
                     dv.to(ddl_ptr.dtype.element_ty), mask=mask2)

    # per-program partial sums of the parameter gradients, (batch * G, d) each
    tl.store(dA_ptr + pid * d + j, acc_A, mask=mask_d)
    if HAS_D:
        tl.store(dD_ptr + pid * d + j, acc_D, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid * d + j, acc_bias, mask=mask_d)
    if HAS_NORM:
        tl.store(dlnw_ptr + pid * d + j, acc_lnw, mask=mask_d)
        tl.store(dlnb_ptr + pid * d + j, acc_lnb, mask=mask_d)
    if HAS_DT_PROJ:
        tl.store(dw_ptr + (pid * d + j[None, :]) * R + rr[:, None], acc_w,
                 mask=(rr[:, None] < R) & mask_d[None, :])


# ---------------------------------------------------------------------------- launchers
def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _block_l(length: int, block_d: int, training: bool, override=None):
    """Chunk length: the backward walks the forward's chunks, so a forward that saves
    states for it uses the (smaller) backward tile."""
    if override:
        return int(override)
    tile = TUNING['bwd_tile'] if training else TUNING['fwd_tile']
    return max(16, min(tile // block_d, 1024, _next_pow2(length)))


def _token_strides(t: torch.Tensor):
    """Strides (batch, token, channel) of a (B, H, W, C) map read as (B, H*W, C)."""
    _, H, W, _ = t.shape
    if H > 1 and W > 1 and t.stride(1) != W * t.stride(2):
        raise ValueError('map is not flattenable to tokens')  # caller makes it contiguous
    return t.stride(0), (t.stride(2) if W > 1 else t.stride(1)), t.stride(3)


def _tokens(t: torch.Tensor):
    try:
        return t, _token_strides(t)
    except ValueError:
        t = t.contiguous()
        return t, _token_strides(t)


def _check_device(*tensors):
    for t in tensors:
        if t is not None and not t.is_cuda and not triton_interpreting():
            raise RuntimeError('The Triton selective scan needs CUDA tensors '
                               '(or TRITON_INTERPRET=1 for the CPU interpreter).')


class _Cfg:
    """Everything both kernels need besides the tensors."""

    def __init__(self, L, H, W, d, G, R, eps, block_l, block_d, has_dt_proj, has_bias,
                 softplus, has_d, has_z, has_norm):
        self.L, self.H, self.W, self.d, self.G, self.R, self.eps = L, H, W, d, G, R, eps
        self.block_l, self.block_d = block_l, block_d
        self.n_chunks = triton.cdiv(L, block_l)
        self.n_dblocks = triton.cdiv(d, block_d)
        self.flags = dict(HAS_DT_PROJ=has_dt_proj, HAS_BIAS=has_bias, SOFTPLUS=softplus,
                          HAS_D=has_d, HAS_Z=has_z, HAS_NORM=has_norm)


def _forward(cfg, batch, u, su, dl, sdl, w, bias, A, D, Bt, sB, Ct, sC, z, sz, lnw, lnb,
             out, so, dirs, save_states):
    dummy = A
    hs = (torch.empty(batch * cfg.G, cfg.n_chunks, cfg.d, device=u.device,
                      dtype=torch.float32) if save_states else dummy)
    grid = (batch * cfg.G, cfg.n_dblocks)
    _scan_fwd_kernel[grid](
        u, *su, dl, *sdl, w if w is not None else dummy,
        bias if bias is not None else dummy, A, D if D is not None else dummy,
        Bt, *sB, Ct, *sC, z if z is not None else dummy, *sz,
        lnw if lnw is not None else dummy, lnb if lnb is not None else dummy,
        out, *so, hs, dirs,
        cfg.L, cfg.H, cfg.W, cfg.d, cfg.n_chunks, cfg.eps,
        G=cfg.G, R=cfg.R, BLOCK_L=cfg.block_l, BLOCK_D=cfg.block_d,
        SAVE_STATES=save_states,
        num_warps=_warps(cfg.block_l, cfg.block_d, TUNING['fwd_per_thread']), **cfg.flags)
    return hs


def _warps(block_l, block_d, per_thread):
    if triton_interpreting():
        return 1
    return max(1, min(16, block_l * block_d // (32 * per_thread)))


def _backward(cfg, batch, u, su, dl, sdl, w, bias, A, D, Bt, sB, Ct, sC, z, sz, lnw, lnb,
              go, sgo, hs, dirs, du, sdu, ddl, sddl, dB, sdB, dC, sdC, dz, sdz):
    dev = u.device
    f32 = dict(device=dev, dtype=torch.float32)
    n = batch * cfg.G * cfg.d
    dA = torch.empty(n, **f32)
    dD = torch.empty(n, **f32) if D is not None else dA
    dbias = torch.empty(n, **f32) if bias is not None else dA
    dlnw = torch.empty(n, **f32) if lnw is not None else dA
    dlnb = torch.empty(n, **f32) if lnb is not None else dA
    dw = torch.empty(n * cfg.R, **f32) if w is not None else dA
    dummy = A
    grid = (batch * cfg.G, cfg.n_dblocks)
    _scan_bwd_kernel[grid](
        u, *su, dl, *sdl, w if w is not None else dummy,
        bias if bias is not None else dummy, A, D if D is not None else dummy,
        Bt, *sB, Ct, *sC, z if z is not None else dummy, *sz,
        lnw if lnw is not None else dummy, lnb if lnb is not None else dummy,
        go, *sgo, hs, dirs,
        du, *sdu, ddl, *sddl, dB, *sdB, dC, *sdC,
        dz if dz is not None else dummy, *sdz,
        dA, dD, dbias, dlnw, dlnb, dw,
        cfg.L, cfg.H, cfg.W, cfg.d, cfg.n_chunks, batch, cfg.eps,
        G=cfg.G, R=max(cfg.R, 1), BLOCK_R=max(2, _next_pow2(max(cfg.R, 1))),
        BLOCK_L=cfg.block_l, BLOCK_D=cfg.block_d,
        num_warps=_warps(cfg.block_l, cfg.block_d, TUNING['bwd_per_thread']), **cfg.flags)

    def total(t):
        return t.view(batch, -1).sum(0)

    return dict(A=total(dA), D=total(dD) if D is not None else None,
                bias=total(dbias) if bias is not None else None,
                lnw=total(dlnw) if lnw is not None else None,
                lnb=total(dlnb) if lnb is not None else None,
                w=dw.view(batch, cfg.G, cfg.d, cfg.R).sum(0) if w is not None else None)


_DIRS_CACHE = {}


def _direction_tensor(directions, device):
    key = (tuple(directions), str(device))
    if key not in _DIRS_CACHE:
        codes = [DIRECTION_CODES[x] if isinstance(x, str) else int(x) for x in directions]
        _DIRS_CACHE[key] = torch.tensor(codes, dtype=torch.int32, device=device)
    return _DIRS_CACHE[key]


# ------------------------------------------------------------------- generic contract
class _SelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, block_l):
        batch, dim, L = u.shape
        block_d = min(64, max(16, _next_pow2(dim)))
        save = any(ctx.needs_input_grad[:7])
        block_l = _block_l(L, block_d, save, block_l)
        A1 = A.reshape(dim).float().contiguous()
        D1 = None if D is None else D.float().contiguous()
        bias1 = None if delta_bias is None else delta_bias.float().contiguous()
        cfg = _Cfg(L, 1, L, dim, 1, 0, 0., block_l, block_d, False, bias1 is not None,
                   bool(delta_softplus), D1 is not None, False, False)
        out = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
        dirs = _direction_tensor((0, ), u.device)
        # (batch, dim, L) read as (batch, tokens, channels): strides (b, l, c)
        s3 = lambda t: (t.stride(0), t.stride(2), t.stride(1))  # noqa: E731
        sBC = lambda t: (t.stride(0), t.stride(2), 0)  # noqa: E731
        hs = _forward(cfg, batch, u, s3(u), delta, s3(delta), None, bias1, A1, D1, B,
                      sBC(B), C, sBC(C), None, (0, 0, 0), None, None, out, s3(out), dirs,
                      save)
        ctx.cfg, ctx.dims = cfg, (batch, dim, L)
        ctx.save_for_backward(u, delta, A1, B, C, D1, bias1, hs)
        ctx.has = (D is not None, delta_bias is not None)
        ctx.dtypes = (B.dtype, C.dtype, A.dtype, A.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A1, B, C, D1, bias1, hs = ctx.saved_tensors
        cfg = ctx.cfg
        batch, dim, L = ctx.dims
        s3 = lambda t: (t.stride(0), t.stride(2), t.stride(1))  # noqa: E731
        sBC = lambda t: (t.stride(0), t.stride(2), 0)  # noqa: E731
        du = torch.empty_like(u, memory_format=torch.contiguous_format)
        ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
        kb = cfg.n_dblocks
        dB = torch.empty(kb, batch, L, device=u.device, dtype=torch.float32)
        dC = torch.empty_like(dB)
        sred = (batch * L, L, 1, 0)
        dirs = _direction_tensor((0, ), u.device)
        grads = _backward(cfg, batch, u, s3(u), delta, s3(delta), None, bias1, A1, D1, B,
                          sBC(B), C, sBC(C), None, (0, 0, 0), None, None, grad_out,
                          s3(grad_out), hs, dirs, du, s3(du), ddelta, s3(ddelta),
                          dB, sred, dC, sred, None, (0, 0, 0))
        b_dtype, c_dtype, a_dtype, a_shape = ctx.dtypes
        dB = dB.sum(0).unsqueeze(1).to(b_dtype)
        dC = dC.sum(0).unsqueeze(1).to(c_dtype)
        dA = grads['A'].view(a_shape).to(a_dtype)
        return (du, ddelta, dA, dB, dC, grads['D'], grads['bias'], None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                          _block_l=None):
    """Selective scan with the contract of :func:`mmgroupmamba.ops.selective_scan`.

    Args:
        u, delta: (batch, dim, L), any float dtype (computed in fp32).
        A: (dim, 1). B, C: (batch, 1, L). D, delta_bias: (dim,) or None.

    Returns:
        (batch, dim, L) in ``u``'s dtype.
    """
    if A.dim() != 2 or A.shape[1] != 1:
        raise ValueError(f'The Triton selective scan is specialised for state size 1 '
                         f'(A of shape (dim, 1)); got A of shape {tuple(A.shape)}. '
                         f"Use backend='pytorch' or 'mamba_ssm' for d_state > 1.")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f'u and delta must be (batch, dim, L) of one shape, got '
                         f'{tuple(u.shape)} and {tuple(delta.shape)}.')
    if B.dim() == 4:  # mamba-ssm's (batch, groups=1, N, L)
        B, C = B.squeeze(1), C.squeeze(1)
    batch, dim, L = u.shape
    for name, t in (('B', B), ('C', C)):
        if tuple(t.shape) != (batch, 1, L):
            raise ValueError(f'{name} must be (batch, 1, L) = {(batch, 1, L)}, '
                             f'got {tuple(t.shape)}.')
    _check_device(u, delta, A, B, C, D, delta_bias)
    return apply_function(_SelectiveScanFn, u, delta, A, B, C, D, delta_bias,
                          delta_softplus, _block_l)


# --------------------------------------------------------------- fused GroupMamba layer
class _GroupedScanFn(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, u, xdbl, z, dt_weight, dt_bias, A, D, ln_weight, ln_bias, eps,
                directions, block_l):
        batch, H, W, GD = u.shape
        G, d, R = dt_weight.shape
        L = H * W
        block_d = max(16, _next_pow2(d))
        save = any(ctx.needs_input_grad)
        block_l = _block_l(L, block_d, save, block_l)
        u, su = _tokens(u)
        xdbl, sx = _tokens(xdbl)
        if z is not None:
            z, sz = _tokens(z)
        else:
            sz = (0, 0, 0)
        w = dt_weight.float().contiguous()
        prm = [None if t is None else t.float().contiguous()
               for t in (dt_bias, A, D, ln_weight, ln_bias)]
        bias, A1, D1, lnw, lnb = prm
        cfg = _Cfg(L, H, W, d, G, R, float(eps), block_l, block_d, True, bias is not None,
                   True, D1 is not None, z is not None, lnw is not None)
        dirs = _direction_tensor(directions, u.device)
        out = torch.empty(batch, H, W, GD, device=u.device, dtype=u.dtype)
        sB = (sx[0], sx[1], sx[2])
        hs = _forward(cfg, batch, u, su, xdbl, sx, w, bias, A1, D1,
                      xdbl[..., G * R:], sB, xdbl[..., G * R + G:], sB, z, sz, lnw, lnb,
                      out, _token_strides(out), dirs, save)
        ctx.cfg = cfg
        ctx.meta = (batch, H, W, GD, directions, dt_weight.dtype, xdbl.dtype)
        ctx.has = [t is not None for t in (z, dt_bias, D, ln_weight, ln_bias)]
        ctx.save_for_backward(u, xdbl, z, w, bias, A1, D1, lnw, lnb, hs)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad_out):
        u, xdbl, z, w, bias, A1, D1, lnw, lnb, hs = ctx.saved_tensors
        cfg = ctx.cfg
        batch, H, W, GD, directions, w_dtype, x_dtype = ctx.meta
        G, R = cfg.G, cfg.R
        grad_out, sgo = _tokens(grad_out)
        su, sx = _token_strides(u), _token_strides(xdbl)
        sz = _token_strides(z) if z is not None else (0, 0, 0)
        du = torch.empty(batch, H, W, GD, device=u.device, dtype=u.dtype)
        dz = torch.empty_like(du, dtype=z.dtype) if z is not None else None
        dx = torch.empty(batch, H, W, xdbl.shape[-1], device=u.device,
                         dtype=torch.float32)
        sdx = _token_strides(dx)
        sBd = (0, sdx[0], sdx[1], sdx[2])
        dirs = _direction_tensor(directions, u.device)
        grads = _backward(cfg, batch, u, su, xdbl, sx, w, bias, A1, D1,
                          xdbl[..., G * R:], sx, xdbl[..., G * R + G:], sx, z, sz, lnw,
                          lnb, grad_out, sgo, hs, dirs, du, _token_strides(du), dx, sdx,
                          dx[..., G * R:], sBd, dx[..., G * R + G:], sBd,
                          dz, _token_strides(dz) if dz is not None else (0, 0, 0))
        has_z, has_bias, has_d, has_lnw, has_lnb = ctx.has
        return (du, dx.to(x_dtype), dz, grads['w'].to(w_dtype),
                grads['bias'] if has_bias else None, grads['A'],
                grads['D'] if has_d else None, grads['lnw'] if has_lnw else None,
                grads['lnb'] if has_lnb else None, None, None, None)


@torch.compiler.disable
def grouped_selective_scan_triton(u, xdbl, z, dt_weight, dt_bias, A, D=None,
                                  ln_weight=None, ln_bias=None, eps=1e-5,
                                  directions=('row', 'col', 'row_rev', 'col_rev'),
                                  _block_l=None):
    """All groups of a GroupMamba layer in one launch (``d_state = 1``).

    Args:
        u: (B, H, W, G*d) channels-last map after the depthwise conv and SiLU; group k
            owns channels ``[k d, (k+1) d)`` and is scanned in ``directions[k]``.
        xdbl: (B, H, W, G*R + 2G) per token: the G groups' ``dt_r`` (R each), then the
            G values of ``B``, then the G values of ``C``.
        z: (B, H, W, G*d) gate input (``SiLU(z)`` multiplies the output) or None.
        dt_weight: (G, d, R) dt projections. dt_bias, A, D: (G*d,), ``A = -exp(A_log)``.
        ln_weight, ln_bias: (G*d,) per-group ``out_norm`` affine (LayerNorm over each
            group's d channels, ``eps``) or None for no norm.
        directions: one of ``row``, ``col``, ``row_rev``, ``col_rev`` per group.

    Returns:
        (B, H, W, G*d) in ``u``'s dtype, in H x W order:
        ``LN_k(C h + D u) * SiLU(z)`` with ``h`` the group's scan state.
    """
    G, d, R = dt_weight.shape
    if u.dim() != 4 or u.shape[-1] != G * d:
        raise ValueError(f'u must be (B, H, W, {G * d}), got {tuple(u.shape)}.')
    if xdbl.shape[:3] != u.shape[:3] or xdbl.shape[-1] != G * R + 2 * G:
        raise ValueError(f'xdbl must be (B, H, W, {G * R + 2 * G}) (dt_r, B, C of '
                         f'{G} groups with d_state 1), got {tuple(xdbl.shape)}.')
    if A.numel() != G * d:
        raise ValueError(f'The fused Triton scan needs d_state 1: A must have {G * d} '
                         f'entries, got shape {tuple(A.shape)}.')
    if len(directions) != G:
        raise ValueError(f'{G} groups need {G} directions, got {directions}.')
    if d > MAX_BLOCK_D:
        raise ValueError(f'groups of more than {MAX_BLOCK_D} channels are not supported '
                         f'by the fused kernel (got {d}).')
    _check_device(u, xdbl, z)
    return apply_function(_GroupedScanFn, u, xdbl, z, dt_weight, dt_bias, A.reshape(-1),
                          D, ln_weight, ln_bias, eps, tuple(directions), _block_l)
