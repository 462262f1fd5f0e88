"""Triton selective scan for state size 1, forward and backward (nothing to compile).

Two entry points share one pair of kernels:

* :func:`selective_scan_triton` has the contract of every other backend of
  :func:`mmgroupmamba.ops.selective_scan` (``u, delta: (batch, dim, L)``, ``B, C:
  (batch, 1, L)``), for ``N = 1`` only.
* :func:`grouped_selective_scan_triton` is the fused operator of a whole GroupMamba
  layer: the four groups' scans in one launch, each
  group reading its channels of the channels-last feature map in its own direction
  (row-major, column-major and both reversed) through index arithmetic (no flipped or
  transposed copies), with the dt projection, ``softplus``, the ``D`` skip, the
  per-group ``out_norm`` LayerNorm and the ``SiLU(z)`` gate fused around the scan. Its
  output is back in H x W order.

Design (``d_state = 1`` makes the state a scalar per channel):

* a program scans one segment of the sequence of one (batch, group) pair for a block of
  channels (all the group's channels when the LayerNorm is fused); the segment is walked
  in chunks of ``BLOCK_L`` positions, inside a chunk the linear recurrence
  ``h_t = a_t h_(t-1) + b_t`` is one ``tl.associative_scan`` over ``(a, b)`` pairs and
  the state entering the chunk is carried in registers;
* parallel along the sequence: where batch x groups x channel blocks are too few
  programs to fill the GPU (detection and segmentation maps: batch 2, L up to several
  hundred thousand), each sequence is cut into one-chunk segments scanned in one launch
  (``LOOK_BACK``, the default): a program scans its chunk from a zero state, publishes
  the chunk's carry ``(prod a, h)``, composes the carries of the chunks before it until
  it meets one that has published its final state (a decoupled look-back), publishes its
  own and writes the outputs; programs take their chunk from a counter in arrival order,
  so a program only ever waits for programs already running. The alternative
  (``TUNING['fwd_look_back']`` / ``['bwd_look_back']`` off) cuts sequences into segments
  of whole chunks: a first launch (``CARRY_PASS``) scans every segment but the last from
  a zero state and keeps only its carry; the second folds the carries of the segments
  before it into its entry state (``_entry_state``; the recurrence is associative) and
  writes the outputs, twice the work of one pass.
  One segment per sequence (classification batches) is a single launch either way;
* everything is computed in fp32; inputs and outputs may be fp16/bf16;
* the forward keeps only the state at every chunk end (``B * G * L / BLOCK_L * d``
  floats) for the backward, which walks each segment's chunks in reverse, recomputes the
  chunk's forward (states, LayerNorm statistics) from its entry state and runs the
  reverse scan ``s_t = a_(t+1) s_(t+1) + dy_t C_t`` as a scan whose rows need only
  their own ``a_t`` (:func:`_combine_next`); across chunks and segments it carries ``g
  = a s`` (the gradient reaching the state before a chunk) from the right the same way
  as the forward's state (carry pass and ``_exit_grad``, or look-back). Parameter
  gradients are reduced per program, then over batch and segments in PyTorch
  (deterministic, no atomics).
"""
import functools
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

# Scan directions as the kernel knows them (``DIRECTION_CODES``, see ``_token_index``).
from .directions import DIRECTION_CODES, SCAN_DIRECTIONS, direction_codes
from .dispatch import (apply_function, call_fused, distinct, records_grad,
                       register_fused_op, tensor_args, triton_interpreting)

__all__ = ['selective_scan_triton', 'grouped_selective_scan_triton', 'DIRECTION_CODES']

# Launch tuning, from sweeps on one H200 (``tools/analysis/benchmark.py --scan-sweep``,
# with ``--dense`` for the detection / segmentation shapes): elements of one (BLOCK_L,
# BLOCK_D) tile and elements per thread (which sets the warps), forward and backward (the
# backward keeps about twice as many tiles alive); sequences are cut into segments
# (``segments_for``) only where fewer than ``split_below_per_sm`` programs per SM would
# run; ``fwd_look_back`` / ``bwd_look_back`` scan them in one launch with one-chunk
# segments, else (a carry pass first) they are cut into enough segments for
# ``programs_per_sm``. Whole-model scan time, fwd | fwd+bwd (ms), H200, carry pass at 4
# / 8 programs per SM: 2 x 800x1344 1.70 / 1.65 | 9.92 / 9.70; 16 x 512x512 3.23 / 2.87
# | 18.16 / 17.43; 2 x 512x512 0.54 / 0.55 | 3.58 / 3.81. H100, carry pass at 8
# programs per SM | look-back, same tiles: 2 x 800x1344 fwd 1.66 | 1.33, fwd+bwd 9.37 |
# 7.66; 16 x 512x512 fwd 2.93 | 2.38, fwd+bwd 17.19 | 13.77; 2 x 512x512 fwd 0.55 |
# 0.49, fwd+bwd 2.93 | 2.44. (The look-back figures are from its first run, whose
# backward read a slot from one thread's copy of a vector and used another's; with
# ``_read_slots`` taking one copy for all threads it passes the long-sequence GPU tests,
# fp32 and bf16, L = 67,200 and 200,000, H100.) Batch 128 at 224 (512 programs) stays
# one segment. In the fused layer scan, groups of at most ``narrow_d`` channels (stages
# 1-2) take backward chunks of ``bwd_narrow_tile`` elements at the same warps (the
# generic contract keeps ``bwd_tile``): per layer, H100, bwd ms, 1024 | 2048
# elements: 2 x 800x1344 stage 1 0.598 | 0.517, stage 2 0.307 | 0.280; 16 x 512x512
# 0.915 | 0.841, 0.494 | 0.411 (the training forward, which shares the chunk: 0.213 |
# 0.190, 0.094 | 0.090; 0.249 | 0.294, 0.142 | 0.144); the 87-channel groups of stage 3
# are slower with it (0.378 | 0.428, 0.700 | 0.857). Reducing tiles in pairs and triples
# (``_row``, ``_read_slots``, the LayerNorm backward's two row sums, the parameter
# gradients) instead of one ``tl.sum`` each, per-stage fwd | bwd ms per layer, H100, 2 x
# 800x1344: before 0.189 0.091 0.075 0.039 | 0.516 0.279 0.378 0.165, after 0.167 0.080
# 0.072 0.034 | 0.484 0.276 0.348 0.166 (whole model fwd 1.72 -> 1.58, bwd 6.57 ->
# 6.19; 16 x 512x512 2.83 -> 2.61, 11.33 -> 10.58). Leaving the dt projection's backward
# to two batched GEMMs after the kernel (a full fp32 map of the gradient of ``dt``
# instead of R row sums per chunk) was slower at every stage (stage 3: 0.476). The
# backward's reverse scan without the shifted ``delta`` (:func:`_combine_next`), bwd ms
# per layer, H100: 2 x 800x1344 0.481 0.277 0.348 0.166 -> 0.452 0.264 0.318 0.162
# (model 6.18 -> 5.76), 16 x 512x512 0.803 0.404 0.629 0.300 -> 0.737 0.384 0.577 0.292
# (10.59 -> 9.82); saving the forward's LayerNorm mean and rstd per row for it instead
# of two row reductions was slower (5.74 -> 5.85, 9.78 -> 10.01; forward 1.56 -> 1.61,
# 2.61 -> 2.79) and is not done. The dt projection's backward as two reductions of
# (rows, ranks, channels) products instead of one row and one column reduction per rank,
# bwd ms per layer, H100: 2 x 800x1344 0.453 0.266 0.320 0.161 -> 0.447 0.262 0.323 0.152
# (5.78 -> 5.75), 16 x 512x512 0.738 0.383 0.578 0.292 -> 0.723 0.375 0.581 0.276 (9.82
# -> 9.73). A look-back reading several chunks per step (the slots of ``BLOCK_L``
# predecessors loaded as one tile, their maps composed by one scan) instead of one
# chunk per step was slower and is not done: ``--dense --profile``, H100, 2 x 800x1344
# training step, scan backward 4.55 -> 5.40 ms, forward 1.54 -> 2.13 ms (a window of 8
# chunks at stages 3-4; a window of 32 was slower still, but only in per-call timings
# that included the host's launch time), 16 x 512x512 scan share 18.7% -> 22.9% (two
# runs on two machines, not one run). A register cap per thread (``fwd_max_registers`` /
# ``bwd_max_registers``, ptxas's ``maxnreg``; compiled offline for sm_90 with Triton
# 3.8, not the GPU machine's 3.6, ptxas gives the backward 255 registers with spills at
# every tile tried, which leaves room for two 4-warp programs per SM) was slower:
# training forward + backward, ms per layer by stage, H100, 2 x 800x1344, one run:
# uncapped 0.613 0.341 0.394 0.191 (whole model 7.32), backward capped at 168 registers
# 0.698 0.380 0.449 0.245 (8.39), at 128 0.791 0.425 0.477 0.267 (9.17; with the
# forward also at 128: 8.98), at 96: 12.13; at 128 with 2048-element tiles (16 or 8
# per thread) 9.63 / 9.74, with 512-element tiles 8.80. More programs per SM do not pay
# for the spills, so both stay at 0 (the compiler's choice). What the look-back costs
# (a timing probe with ``_look_back`` replaced, its results wrong; per layer as above,
# one run of its own on another H100 machine): publishing the aggregate only and never
# waiting 0.489 0.273 0.370 0.158 (6.37), one read of the preceding chunk's slots
# instead of the walk 0.653 0.371 0.394 0.203 (7.59), the carry pass instead of the
# look-back 0.662 0.371 0.515 0.259 (8.88), against 0.612 0.341 0.393 0.190 (7.31): at
# most about an eighth of the scan time is the look-back, little of it at stage 3; the
# rest is the chunks' own work. The chunks of the 128-lane groups (stages 3-4), training
# forward + backward, ms per layer by stage | whole model, H100, CUDA-graph replays, 2 x
# 800x1344 ; 16 x 512x512 (one run per line, three machines): the dt_r gradient as an
# fp32 ``tl.dot`` (``bwd_dt_dot_rank = 1``) instead of a product tile reduced over the
# channels, 0.613 0.341 0.394 0.190 | 7.32 -> 0.601 0.339 0.387 0.196 | 7.24 ; 12.36
# -> 12.12 (from rank 3 only: 7.28); then 8-row chunks (``min_block_l``, 16 before) at 4
# warps 7.25 ; 11.77; then the float token index (``float_index``) 7.10 -> 7.05 ; 11.60
# -> 11.47; then 16 elements per thread (2 warps) instead of 8: 0.604 0.345 0.329 0.153 |
# 6.60 ; 10.37 (4-row chunks at 2 warps: 6.96 ; 10.64; 8 rows at 8 warps: 9.36 ;
# 15.87). A training forward that walks the 16-row chunk of inference and keeps the
# states every 8 rows was no faster (7.05 against 6.97 ; 11.47 against 11.22) and is not
# kept. ``--dense --profile``, the 2 x 800x1344 training step: scan 6.09 -> 4.98 ms of
# 34.84 -> 34.00 ms (17.5% -> 14.7%; backward 4.55 -> 3.46 ms). The narrow groups'
# backward with fewer warps (``benchmark.py --scan-sweep`` narrow rows; training forward +
# backward, ms per layer at stages 1 and 2 | those stages' whole-model share, H100, one
# run, 2 x 800x1344 ; 16 x 512x512): 2048 elements at 4 warps (kept) 0.603 0.345 | 3.19 ;
# 0.986 0.509 | 4.99, 1024 at 2 warps 0.652 0.326 | 3.26 ; 0.954 0.492 | 4.83, 2048 at
# 2 warps 0.999 0.481 | 4.92 ; 9.11, 4096 at 2 warps 5.80 ; 11.04, 1024 at 1 warp 3.92 ;
# 6.85: none is faster at both shapes and stages, so the narrow groups keep 4 warps.
TUNING = dict(fwd_tile=2048, fwd_per_thread=16, bwd_tile=1024, bwd_per_thread=16,
              narrow_d=32, bwd_narrow_tile=2048, bwd_narrow_per_thread=16, min_block_l=8,
              split_below_per_sm=2, programs_per_sm=8, fwd_look_back=1, bwd_look_back=1,
              fwd_max_registers=0, bwd_max_registers=0, bwd_dt_dot_rank=1,
              float_index=1)


def set_tuning(**kwargs):
    """Change :data:`TUNING` (``fwd_tile``, ``fwd_per_thread``, ``bwd_tile``,
    ``bwd_per_thread``, ``narrow_d``, ``bwd_narrow_tile``, ``bwd_narrow_per_thread``,
    ``min_block_l``, ``split_below_per_sm``, ``programs_per_sm``, ``fwd_look_back``,
    ``bwd_look_back``, ``fwd_max_registers``, ``bwd_max_registers``, ``bwd_dt_dot_rank``,
    ``float_index``); returns the previous values."""
    unknown = set(kwargs) - set(TUNING)
    if unknown:
        raise KeyError(f'unknown tuning keys {sorted(unknown)}; known: {sorted(TUNING)}')
    old = dict(TUNING)
    TUNING.update({k: int(v) for k, v in kwargs.items()})
    return old


# Largest channel block of one program; a fused LayerNorm needs a whole group in one.
MAX_BLOCK_D = 512
# Segment carries folded per step when a program computes its entry state.
SEG_BLOCK = 16
# Sequences shorter than this take the float token index (``_token_index``: exact below).
FLOAT_INDEX_MAX_L = 2**21


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2.
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _combine_next(a1, p1, e1, a2, p2, e2):
    """Reverse-scan combine of ``s_t = e_t + a_(t+1) s_(t+1)`` without the shifted
    ``a_(t+1)``: a run of rows ``i..j`` is ``(a_i, p = a_(i+1) .. a_j, e)`` with ``s_i = e
    + p g_(j+1)``, ``g = a s`` the gradient reaching the state before a row; ``(a1, p1,
    e1)`` is the run to the right. The backward thus recomputes no row's ``delta``
    twice."""
    q = p2 * a1
    return a2, q * p1, e2 + q * e1


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _add3(a1, b1, c1, a2, b2, c2):
    return a1 + a2, b1 + b2, c1 + c2


@triton.jit
def _min2(a1, b1, a2, b2):
    return tl.minimum(a1, a2), tl.minimum(b1, b2)


@triton.jit
def _row(x, y, row):
    """Row ``row`` (a ``(rows, 1)`` mask) of two tiles, in one reduction: where a
    tile's rows span warps every reduction along them is a round trip through shared
    memory with a barrier, so the kernels reduce tiles in pairs and triples."""
    return tl.reduce((tl.where(row, x, 0.), tl.where(row, y, 0.)), 0, _add2)


@triton.jit
def _token_index(seq, L, H, W, direction, FLOAT_INDEX: tl.constexpr):
    """Row-major token index ``h * W + w`` of sequence position ``seq``.

    direction 0: row-major; 1: column-major (``seq -> (seq % H, seq // H)``); 2 and 3: the same
    sequences read backwards (``seq -> L - 1 - seq`` first). ``FLOAT_INDEX``: the
    quotient by ``H`` as ``floor((seq + 0.5) / H)`` in fp32, a few instructions where an
    integer division by a runtime value takes a few dozen per row (every thread of a
    128-lane tile computes all its rows). Exact while ``L < 2**21`` with the reciprocal
    correctly rounded (``div_rn``; checked for every position below ``2**21`` and every
    height up to 2,048 plus 3,418 more; with a reciprocal 2 ulps off it is not exact),
    which the launcher checks.
    """
    lr = tl.where(direction >= 2, L - 1 - seq, seq)
    if FLOAT_INDEX:
        q = ((lr.to(tl.float32) + 0.5) * tl.math.div_rn(1., H.to(tl.float32))).to(tl.int32)
        col = (lr - q * H) * W + q
    else:
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


@triton.jit
def _entry_state(h, seg_a_ptr, seg_h_ptr, pid, pid_s, n_seg, d, j, mask_d,
                 SEG_BLOCK: tl.constexpr):
    """Fold the carries of segments ``0 .. pid_s - 1`` (each ``(prod a, h from 0)``, in
    order) into the state entering segment ``pid_s``, ``SEG_BLOCK`` carries at a time."""
    ss = tl.arange(0, SEG_BLOCK)
    for base in range(0, pid_s, SEG_BLOCK):
        s = base + ss
        m = (s < pid_s)[:, None] & mask_d[None, :]
        off = (pid * n_seg + s)[:, None] * d + j[None, :]
        a_c, h_c = tl.associative_scan(
            (tl.load(seg_a_ptr + off, mask=m, other=1.), tl.load(seg_h_ptr + off, mask=m,
                                                                 other=0.)), 0, _combine)
        a_last, h_last = _row(a_c, h_c, ss[:, None] == SEG_BLOCK - 1)
        h = h_last + a_last * h
    return h


@triton.jit
def _exit_grad(s_c, seg_p_ptr, seg_s_ptr, pid, pid_s, n_seg, d, j, mask_d,
               SEG_BLOCK: tl.constexpr):
    """Fold the carries of segments ``n_seg - 1`` down to ``pid_s + 1`` (each the map
    ``x -> s + p x`` of the gradient ``g`` reaching the state before the segment) into
    the ``g`` entering segment ``pid_s`` from the right, ``SEG_BLOCK`` carries at a
    time."""
    ss = tl.arange(0, SEG_BLOCK)
    n_after = n_seg - 1 - pid_s
    for base in range(0, n_after, SEG_BLOCK):
        s = n_seg - base - SEG_BLOCK + ss          # the block ending ``base`` from the end
        m = (s > pid_s)[:, None] & mask_d[None, :]
        off = (pid * n_seg + s)[:, None] * d + j[None, :]
        p_c, s_loc = tl.associative_scan(
            (tl.load(seg_p_ptr + off, mask=m, other=1.), tl.load(seg_s_ptr + off, mask=m,
                                                                 other=0.)), 0, _combine,
            reverse=True)
        p_first, s_first = _row(p_c, s_loc, ss[:, None] == 0)
        s_c = s_first + p_first * s_c
    return s_c


@triton.jit
def _program(lb_ptr, dir_ptr, n_chunks, seg_offset, G: tl.constexpr,
             LOOK_BACK: tl.constexpr, REVERSE: tl.constexpr):
    """``(sequence pid = batch * G + group, channel block, segment, batch, group,
    direction)`` of this program: from the grid, or with a look-back from the arrival
    counter (:func:`_chunk_ticket`)."""
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2) + seg_offset
    if LOOK_BACK:
        pid, pid_d, pid_s = _chunk_ticket(lb_ptr, n_chunks, REVERSE)
    g = pid % G
    return pid, pid_d, pid_s, (pid // G).to(tl.int64), g, tl.load(dir_ptr + g)


@triton.jit
def _channel_params(A_ptr, bias_ptr, D_ptr, lnw_ptr, lnb_ptr, c, mask_d,
                    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                    HAS_NORM: tl.constexpr):
    """``(A, dt bias, D, LayerNorm weight, LayerNorm bias)`` of channels ``c`` in fp32
    (zeros for a feature that is off)."""
    A = tl.load(A_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    bias = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    Dv = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    lnw = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    lnb = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    if HAS_NORM:
        lnw = tl.load(lnw_ptr + c, mask=mask_d, other=0.).to(tl.float32)
        lnb = tl.load(lnb_ptr + c, mask=mask_d, other=0.).to(tl.float32)
    return A, bias, Dv, lnw, lnb


@triton.jit
def _local_scan(u_base, s_u_l, s_u_c, dl_base, s_dl_l, s_dl_c, B_base, s_B_l, w_ptr, pos,
                mask_l, mask2, c, j, mask_d, g, d, A, bias, R: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, HAS_DT_PROJ: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One chunk's inputs and its scan from a zero state: ``(u, v, delta, B, delta B u,
    prod a, h)`` (``v`` the pre-softplus delta; ``prod a`` and ``h`` inclusive, per
    row)."""
    u = tl.load(u_base + pos[:, None] * s_u_l + c[None, :] * s_u_c, mask=mask2,
                other=0.).to(tl.float32)
    v, delta = _delta(dl_base, w_ptr, pos, mask_l, c, j, mask_d, g, d, s_dl_l, s_dl_c,
                      bias, R, BLOCK_L, BLOCK_D, HAS_DT_PROJ, HAS_BIAS, SOFTPLUS)
    Bv = tl.load(B_base + pos * s_B_l, mask=mask_l, other=0.).to(tl.float32)
    bx = delta * Bv[:, None] * u
    a_cum, h_loc = tl.associative_scan((tl.exp(delta * A[None, :]), bx), 0, _combine)
    return u, v, delta, Bv, bx, a_cum, h_loc


@triton.jit
def _pack(p, s):
    """Two fp32 vectors as one int64 each (``p`` in the low half, ``s`` in the high). A
    slot starts with all bits set; each half is ready once it is not all ones any more (a
    NaN pattern arithmetic never produces: NVIDIA GPUs write the canonical NaN). Both
    halves are checked: Triton 3.6 stores the pair as one 64-bit word for sm_90, but
    nothing promises that it always will."""
    lo = p.to(tl.uint32, bitcast=True).to(tl.int64)
    hi = s.to(tl.uint32, bitcast=True).to(tl.int64)
    return (hi << 32) | lo


@triton.jit
def _unpack(x):
    """``(p, s, written)`` of packed slots (:func:`_pack`), ``written`` per channel."""
    lo = x.to(tl.int32)
    hi = (x >> 32).to(tl.int32)
    written = ((lo != -1) & (hi != -1)).to(tl.int32)
    return lo.to(tl.float32, bitcast=True), hi.to(tl.float32, bitcast=True), written


@triton.jit
def _read_slots(inc_ptr, agg_ptr, mask_d, first_row, spread):
    """``(inclusive p, s, ready, aggregate p, s, ready)`` of one chunk's two slots, the
    same in every thread of the program.

    A (BLOCK_D,) vector is held by several threads at once, each loading it itself; a
    slot written between two copies' loads would be ready in one copy and not in another
    (seen on an H100: whole rows of a chunk with garbage carries). So one copy is taken
    for all: the loaded vectors are broadcast over the tile's rows (where each element
    has one owner) and row 0 comes back out by a reduction, identical in every thread;
    the readiness is checked on those values. A slot is ready when both of its halves
    are written (:func:`_pack`) for every channel."""
    x_inc = tl.load(inc_ptr, mask=mask_d, other=0, volatile=True)[None, :] + spread
    x_agg = tl.load(agg_ptr, mask=mask_d, other=0, volatile=True)[None, :] + spread
    x_inc, x_agg = tl.reduce((tl.where(first_row, x_inc, 0), tl.where(first_row, x_agg, 0)),
                             0, _add2)
    inc_p, inc_s, inc_w = _unpack(x_inc)
    agg_p, agg_s, agg_w = _unpack(x_agg)
    inc_w, agg_w = tl.reduce((inc_w, agg_w), 0, _min2)
    return inc_p, inc_s, inc_w == 1, agg_p, agg_s, agg_w == 1


@triton.jit
def _chunk_ticket(lb_ptr, n_chunks, REVERSE: tl.constexpr):
    """``(batch * G + group, channel block, chunk)`` of this program, in the order the
    programs arrive (a counter, not the program id): every chunk a program waits for
    belongs to a program that started earlier, so the look-back cannot deadlock."""
    ticket = tl.atomic_add(lb_ptr, 1) + 1       # the counter starts at -1
    per_chunk = tl.num_programs(0) * tl.num_programs(1)
    q = (ticket // per_chunk).to(tl.int32)
    r = (ticket % per_chunk).to(tl.int32)
    if REVERSE:
        k = n_chunks - 1 - q
    else:
        k = q
    return r // tl.num_programs(1), r % tl.num_programs(1), k


@triton.jit
def _look_back(p, s, lb_ptr, pid, k, n_chunks, d, j, mask_d,
               BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, REVERSE: tl.constexpr):
    """The carry entering chunk ``k`` of a sequence, a one-pass scan across chunks
    (decoupled look-back): publish the chunk's own ``(p, s)`` (the affine map ``x -> s +
    p x`` it applies to the carry), compose the maps of the chunks before it (to the left,
    or to the right for ``REVERSE``) until one has published its inclusive result, then
    publish this chunk's inclusive result. Waiting happens only on chunks of earlier
    programs (:func:`_chunk_ticket`). ``lb_ptr``: the buffer of
    :func:`_look_back_buffer` (the counter, then the aggregates, then the inclusive
    results, one slot per sequence, chunk and channel)."""
    agg_ptr = lb_ptr + 1
    inc_ptr = agg_ptr + tl.num_programs(0) * n_chunks * d
    tl.store(agg_ptr + (pid * n_chunks + k) * d + j, _pack(p, s), mask=mask_d)
    if REVERSE:
        step = -1
    else:
        step = 1
    first_row = (tl.arange(0, BLOCK_L) == 0)[:, None]
    spread = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.int64)
    acc_p = tl.full((BLOCK_D, ), 1., dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    idx = k - step
    while (idx >= 0) & (idx < n_chunks):
        off = (pid * n_chunks + idx) * d + j
        inc_p, inc_s, inc_ready, agg_p, agg_s, agg_ready = _read_slots(
            inc_ptr + off, agg_ptr + off, mask_d, first_row, spread)
        p_i = tl.where(inc_ready, inc_p, agg_p)
        s_i = tl.where(inc_ready, inc_s, agg_s)
        ready = inc_ready | agg_ready
        acc_s = tl.where(ready, acc_s + acc_p * s_i, acc_s)
        acc_p = tl.where(ready, acc_p * p_i, acc_p)
        # an inclusive result ends the walk; an aggregate moves it one chunk on; neither:
        # read the same chunk again
        idx = tl.where(inc_ready, -1, tl.where(agg_ready, idx - step, idx))
    tl.store(inc_ptr + (pid * n_chunks + k) * d + j, _pack(p, s + p * acc_s), mask=mask_d)
    return acc_s


@triton.jit(do_not_specialize=['L', 'H', 'W', 'n_chunks', 'seg_chunks', 'n_seg'])
def _scan_fwd_kernel(
        u_ptr, s_u_b, s_u_l, s_u_c,
        dl_ptr, s_dl_b, s_dl_l, s_dl_c,
        w_ptr, bias_ptr, A_ptr, D_ptr,
        B_ptr, s_B_b, s_B_l, s_B_g,
        C_ptr, s_C_b, s_C_l, s_C_g,
        z_ptr, s_z_b, s_z_l, s_z_c,
        lnw_ptr, lnb_ptr,
        out_ptr, s_o_b, s_o_l, s_o_c,
        hs_ptr, seg_a_ptr, seg_h_ptr, dir_ptr, lb_ptr,
        L, H, W, d, n_chunks, seg_chunks, n_seg, eps,
        G: tl.constexpr, R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        SEG_BLOCK: tl.constexpr,
        HAS_DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
        SAVE_STATES: tl.constexpr, CARRY_PASS: tl.constexpr, LOOK_BACK: tl.constexpr,
        FLOAT_INDEX: tl.constexpr):
    """One (batch, group, channel block, segment) per program. ``CARRY_PASS``: scan the
    segment from a zero state and store only its carry ``(prod a, h)``; otherwise start
    from the earlier segments' carries and write the outputs. ``LOOK_BACK``: segments of
    one chunk, whose entry state comes from the chunks before it in the same launch
    (:func:`_look_back`; the buffer ``lb_ptr``: counter, aggregates, inclusive states)."""
    pid, pid_d, pid_s, b, g, direction = _program(lb_ptr, dir_ptr, n_chunks, 0, G,
                                                  LOOK_BACK, False)
    j = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)        # channel inside the group
    mask_d = j < d
    c = g * d + j                                       # channel of the whole map
    A, bias, Dv, lnw, lnb = _channel_params(A_ptr, bias_ptr, D_ptr, lnw_ptr, lnb_ptr, c,
                                            mask_d, BLOCK_D, HAS_BIAS, HAS_D, HAS_NORM)

    u_base = u_ptr + b * s_u_b
    dl_base = dl_ptr + b * s_dl_b
    B_base = B_ptr + b * s_B_b + g * s_B_g
    C_base = C_ptr + b * s_C_b + g * s_C_g
    z_base = z_ptr + b * s_z_b
    o_base = out_ptr + b * s_o_b

    rows = tl.arange(0, BLOCK_L)
    last_row = rows[:, None] == BLOCK_L - 1
    h = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    if CARRY_PASS:
        a_seg = tl.full((BLOCK_D, ), 1., dtype=tl.float32)
    elif not LOOK_BACK:
        h = _entry_state(h, seg_a_ptr, seg_h_ptr, pid, pid_s, n_seg, d, j, mask_d,
                         SEG_BLOCK)
    k_begin = pid_s * seg_chunks
    k_end = tl.minimum(k_begin + seg_chunks, n_chunks)
    for k in range(k_begin, k_end):
        seq = k * BLOCK_L + rows
        mask_l = seq < L
        pos = _token_index(seq, L, H, W, direction, FLOAT_INDEX)
        mask2 = mask_l[:, None] & mask_d[None, :]

        u, v, delta, Bv, bx, a_cum, h_loc = _local_scan(
            u_base, s_u_l, s_u_c, dl_base, s_dl_l, s_dl_c, B_base, s_B_l, w_ptr, pos,
            mask_l, mask2, c, j, mask_d, g, d, A, bias, R, BLOCK_L, BLOCK_D, HAS_DT_PROJ,
            HAS_BIAS, SOFTPLUS)
        # the chunk's carry from a zero state: (prod a, h) at its last row
        a_last, h_last = _row(a_cum, h_loc, last_row)
        if LOOK_BACK:
            h = _look_back(a_last, h_last, lb_ptr, pid, k, n_chunks, d, j, mask_d, BLOCK_L,
                           BLOCK_D, False)
        hh = h_loc + a_cum * h[None, :]
        # state leaving the chunk (its last row), carried into the next one
        h = h_last + a_last * h
        if CARRY_PASS:
            a_seg *= a_last
        else:
            if SAVE_STATES:
                tl.store(hs_ptr + (pid * n_chunks + k) * d + j, h, mask=mask_d)
            Cv = tl.load(C_base + pos * s_C_l, mask=mask_l, other=0.).to(tl.float32)
            y = hh * Cv[:, None]
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_NORM:
                mean = tl.sum(y, axis=1) / d
                diff = tl.where(mask_d[None, :], y - mean[:, None], 0.)
                rstd = 1. / tl.sqrt(tl.sum(diff * diff, axis=1) / d + eps)
                y = diff * rstd[:, None] * lnw[None, :] + lnb[None, :]
            if HAS_Z:
                zv = tl.load(z_base + pos[:, None] * s_z_l + c[None, :] * s_z_c,
                             mask=mask2, other=0.).to(tl.float32)
                y = y * zv * tl.sigmoid(zv)
            tl.store(o_base + pos[:, None] * s_o_l + c[None, :] * s_o_c,
                     y.to(out_ptr.dtype.element_ty), mask=mask2)
    if CARRY_PASS:
        off = (pid * n_seg + pid_s) * d + j
        tl.store(seg_a_ptr + off, a_seg, mask=mask_d)
        tl.store(seg_h_ptr + off, h, mask=mask_d)


@triton.jit(do_not_specialize=['L', 'H', 'W', 'n_chunks', 'seg_chunks', 'n_seg',
                               'seg_offset'])
def _scan_bwd_kernel(
        u_ptr, s_u_b, s_u_l, s_u_c,
        dl_ptr, s_dl_b, s_dl_l, s_dl_c,
        w_ptr, bias_ptr, A_ptr, D_ptr,
        B_ptr, s_B_b, s_B_l, s_B_g,
        C_ptr, s_C_b, s_C_l, s_C_g,
        z_ptr, s_z_b, s_z_l, s_z_c,
        lnw_ptr, lnb_ptr,
        go_ptr, s_go_b, s_go_l, s_go_c,
        hs_ptr, seg_p_ptr, seg_s_ptr, dir_ptr, lb_ptr,
        du_ptr, s_du_b, s_du_l, s_du_c,
        ddl_ptr, s_ddl_b, s_ddl_l, s_ddl_c,
        dB_ptr, s_dB_k, s_dB_b, s_dB_l, s_dB_g,
        dC_ptr, s_dC_k, s_dC_b, s_dC_l, s_dC_g,
        dz_ptr, s_dz_b, s_dz_l, s_dz_c,
        dA_ptr, dD_ptr, dbias_ptr, dlnw_ptr, dlnb_ptr, dw_ptr,
        L, H, W, d, n_chunks, seg_chunks, n_seg, seg_offset, eps,
        G: tl.constexpr, R: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, SEG_BLOCK: tl.constexpr,
        HAS_DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
        CARRY_PASS: tl.constexpr, LOOK_BACK: tl.constexpr, DT_DOT: tl.constexpr,
        FLOAT_INDEX: tl.constexpr):
    """One (batch, group, channel block, segment) per program, walking the segment's
    chunks backwards. ``CARRY_PASS``: run the reverse scan of the segment from a zero
    gradient and store only its carry (the map of ``g`` at the segment's first
    position); otherwise start from the later segments' carries and write the gradients
    (parameter gradients as per-program partial sums). ``LOOK_BACK``: segments of one
    chunk, the carry from the chunks after it in the same launch (:func:`_look_back`).
    ``DT_DOT``: the gradient of ``dt_r`` as one ``tl.dot`` (fp32 FMAs) instead of a
    product tile reduced over the channels."""
    pid, pid_d, pid_s, b, g, direction = _program(lb_ptr, dir_ptr, n_chunks, seg_offset,
                                                  G, LOOK_BACK, True)
    j = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = j < d
    c = g * d + j
    A, bias, Dv, lnw, lnb = _channel_params(A_ptr, bias_ptr, D_ptr, lnw_ptr, lnb_ptr, c,
                                            mask_d, BLOCK_D, HAS_BIAS, HAS_D, HAS_NORM)

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
    first_row = rows[:, None] == 0
    rr = tl.arange(0, BLOCK_R)
    s_carry = tl.zeros((BLOCK_D, ), dtype=tl.float32)   # dL/dh entering from the right
    if CARRY_PASS:
        p_seg = tl.full((BLOCK_D, ), 1., dtype=tl.float32)
    elif not LOOK_BACK:
        s_carry = _exit_grad(s_carry, seg_p_ptr, seg_s_ptr, pid, pid_s, n_seg, d, j,
                             mask_d, SEG_BLOCK)
    acc_A = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_D = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_lnw = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_lnb = tl.zeros((BLOCK_D, ), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)

    k_begin = pid_s * seg_chunks
    k_end = tl.minimum(k_begin + seg_chunks, n_chunks)
    for kk in range(k_begin, k_end):
        k = k_begin + k_end - 1 - kk
        seq = k * BLOCK_L + rows
        mask_l = seq < L
        pos = _token_index(seq, L, H, W, direction, FLOAT_INDEX)
        mask2 = mask_l[:, None] & mask_d[None, :]

        # ---- recompute the chunk's forward from its entry state
        u, v, delta, Bv, bx, a_cum, h_loc = _local_scan(
            u_base, s_u_l, s_u_c, dl_base, s_dl_l, s_dl_c, B_base, s_B_l, w_ptr, pos,
            mask_l, mask2, c, j, mask_d, g, d, A, bias, R, BLOCK_L, BLOCK_D, HAS_DT_PROJ,
            HAS_BIAS, SOFTPLUS)
        Cv = tl.load(C_base + pos * s_C_l, mask=mask_l, other=0.).to(tl.float32)
        h0 = tl.load(hs_ptr + (pid * n_chunks + k - 1) * d + j, mask=mask_d & (k > 0),
                     other=0.)
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
            if not CARRY_PASS:
                dz = go * yn * sz * (1. + zv * (1. - sz))
                tl.store(dz_base + pos[:, None] * s_dz_l + c[None, :] * s_dz_c,
                         dz.to(dz_ptr.dtype.element_ty), mask=mask2)
        else:
            gy = go
        if HAS_NORM:
            if not CARRY_PASS:
                c_lnw, c_lnb = tl.reduce((gy * xhat, gy), 0, _add2)
                acc_lnw += c_lnw
                acc_lnb += c_lnb
            dxh = gy * lnw[None, :]
            m1, m2 = tl.reduce((dxh, dxh * xhat), 1, _add2)
            dy = rstd[:, None] * (dxh - m1[:, None] / d - xhat * (m2[:, None] / d))
            dy = tl.where(mask2, dy, 0.)
        else:
            dy = gy

        # ---- reverse scan s_t = a_(t+1) s_(t+1) + C_t dy_t, carried across chunks as
        # g = a s (the gradient reaching the state before a chunk), so that each row needs
        # only its own a_t (:func:`_combine_next`)
        a = tl.exp(delta * A[None, :])
        e = dy * Cv[:, None]
        _, p_loc, s_loc = tl.associative_scan((a, tl.full((BLOCK_L, BLOCK_D), 1., tl.float32),
                                               e), 0, _combine_next, reverse=True)
        # the chunk's carry from a zero gradient, in g: (a p, a s) at its first row
        p_first, s_first = _row(a * p_loc, a * s_loc, first_row)
        if LOOK_BACK:
            s_carry = _look_back(p_first, s_first, lb_ptr, pid, k, n_chunks, d, j, mask_d,
                                 BLOCK_L, BLOCK_D, True)
        s = s_loc + p_loc * s_carry[None, :]
        s_carry = s_first + p_first * s_carry
        if CARRY_PASS:
            p_seg *= p_first
        else:
            # ---- y = C h + D u;  h_t = a_t h_(t-1) + delta_t B_t u_t, a_t = exp(delta_t A)
            # a_t h_(t-1); exactly 0 at a sequence's first position, where the
            # difference would leave the rounding of bx
            ah = tl.where(seq[:, None] == 0, 0., hh - bx)
            sd = s * delta
            g_C, g_B = tl.reduce((dy * hh, sd * u), 1, _add2)
            tl.store(dC_base + pos * s_dC_l, g_C, mask=mask_l)
            tl.store(dB_base + pos * s_dB_l, g_B, mask=mask_l)
            du = sd * Bv[:, None]
            if HAS_D:
                du += dy * Dv[None, :]
            tl.store(du_base + pos[:, None] * s_du_l + c[None, :] * s_du_c,
                     du.to(du_ptr.dtype.element_ty), mask=mask2)
            ddelta = s * (Bv[:, None] * u + ah * A[None, :])
            if SOFTPLUS:
                dv = ddelta * tl.sigmoid(v)
            else:
                dv = ddelta
            dv = tl.where(mask2, dv, 0.)
            # per-channel parameter gradients (D's and the bias's are dropped where off)
            c_A, c_D, c_bias = tl.reduce((sd * ah, dy * u, dv), 0, _add3)
            acc_A += c_A
            acc_D += c_D
            acc_bias += c_bias
            if HAS_DT_PROJ:
                # the dt projection's backward for all R ranks at once: one reduction
                # over the channels (gradient of dt_r) and one over the rows (of the
                # weight), not one of each per rank; the one over the channels as a dot
                # reads the tile once through shared memory, where a reduction takes
                # log2(lanes) shuffles per (row, rank) value
                mask_r = rr < R
                mask_lr = mask_l[:, None] & mask_r[None, :]
                xr = tl.load(dl_base + pos[:, None] * s_dl_l + (g * R + rr[None, :]) * s_dl_c,
                             mask=mask_lr, other=0.).to(tl.float32)        # (BLOCK_L, BLOCK_R)
                wr = tl.load(w_ptr + (g * d + j[None, :]) * R + rr[:, None],
                             mask=mask_r[:, None] & mask_d[None, :], other=0.)  # (BLOCK_R, BLOCK_D)
                if DT_DOT:
                    d_xr = tl.dot(dv, tl.trans(wr), input_precision='ieee')
                else:
                    d_xr = tl.sum(dv[:, None, :] * wr[None, :, :], axis=2)
                tl.store(ddl_base + pos[:, None] * s_ddl_l + (g * R + rr[None, :]) * s_ddl_c,
                         d_xr.to(ddl_ptr.dtype.element_ty), mask=mask_lr)
                acc_w += tl.sum(xr[:, :, None] * dv[:, None, :], axis=0)
            else:
                tl.store(ddl_base + pos[:, None] * s_ddl_l + c[None, :] * s_ddl_c,
                         dv.to(ddl_ptr.dtype.element_ty), mask=mask2)

    part = (pid * n_seg + pid_s) * d + j
    if CARRY_PASS:
        tl.store(seg_p_ptr + part, p_seg, mask=mask_d)
        tl.store(seg_s_ptr + part, s_carry, mask=mask_d)
    else:
        # per-program partial sums of the parameter gradients, (batch * G, n_seg, d) each
        tl.store(dA_ptr + part, acc_A, mask=mask_d)
        if HAS_D:
            tl.store(dD_ptr + part, acc_D, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + part, acc_bias, mask=mask_d)
        if HAS_NORM:
            tl.store(dlnw_ptr + part, acc_lnw, mask=mask_d)
            tl.store(dlnb_ptr + part, acc_lnb, mask=mask_d)
        if HAS_DT_PROJ:
            tl.store(dw_ptr + part[None, :] * R + rr[:, None], acc_w,
                     mask=(rr[:, None] < R) & mask_d[None, :])


# ---------------------------------------------------------------------------- launchers
def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _block_l(block_d: int, training: bool, override=None, grouped: bool = True):
    """Chunk length: the tile's elements over the channel block. The backward walks the
    forward's chunks, so a forward that saves states for it uses the (smaller) backward
    tile. It does not depend on the sequence length (short sequences are masked), so a
    symbolic length under torch.compile adds no guard and no recompilation."""
    if override:
        return int(override)
    tile = _bwd_tile(block_d, grouped)[0] if training else TUNING['fwd_tile']
    return max(TUNING['min_block_l'], min(tile // block_d, 1024))


def _bwd_tile(block_d: int, grouped: bool):
    """``(elements, elements per thread)`` of the backward's tile: narrow groups of the
    fused layer scan take a longer chunk with settings of their own (:data:`TUNING`;
    measured there only, so the generic contract keeps the one tile)."""
    if grouped and block_d <= TUNING['narrow_d']:
        return TUNING['bwd_narrow_tile'], TUNING['bwd_narrow_per_thread']
    return TUNING['bwd_tile'], TUNING['bwd_per_thread']


@functools.lru_cache(None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def segments_for(n_chunks: int, programs: int, sm_count: int) -> int:
    """How many segments each sequence is cut into: one where ``programs`` already give
    ``split_below_per_sm`` per SM, else enough that about ``programs_per_sm`` programs
    run per SM, never more segments than chunks. Batch 128 at 56 x 56 (512 programs on
    an H200's 132 SMs) keeps one segment, the single launch; batch 2 at 200 x 336 (8
    programs, 1050 chunks) gets 132 segments of 8 chunks."""
    if programs >= TUNING['split_below_per_sm'] * sm_count:
        return 1
    return min(n_chunks, max(1, TUNING['programs_per_sm'] * sm_count // programs))


def _segments(n_chunks: int, programs: int, device, override=None):
    """``(segments per sequence, chunks per segment)`` (``override``: chunks per
    segment)."""
    if override:
        seg_chunks = max(1, int(override))
    else:
        if device.type == 'cuda':
            sms = _sm_count(device.index if device.index is not None
                            else torch.cuda.current_device())
        else:  # the interpreter: one "SM"
            sms = 1
        seg_chunks = triton.cdiv(n_chunks, segments_for(n_chunks, programs, sms))
    return triton.cdiv(n_chunks, seg_chunks), seg_chunks


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


def _seq_strides(t: torch.Tensor):
    """(batch, dim, L) read as (batch, tokens, channels): strides (b, l, c)."""
    return t.stride(0), t.stride(2), t.stride(1)


def _check_device(*tensors):
    for t in tensors:
        if t is not None and not t.is_cuda and not triton_interpreting():
            raise RuntimeError('The Triton selective scan needs CUDA tensors '
                               '(or TRITON_INTERPRET=1 for the CPU interpreter).')


class _Cfg:
    """Everything both kernels need besides the tensors."""

    def __init__(self, batch, L, H, W, d, G, R, eps, block_l, block_d, device, flags,
                 seg_chunks=None, grouped=True):
        self.grouped = grouped                        # the fused layer scan (its tuning)
        self.batch, self.L, self.H, self.W = batch, L, H, W
        self.d, self.G, self.R, self.eps = d, G, R, eps
        self.block_l, self.block_d = block_l, block_d
        self.n_chunks = triton.cdiv(L, block_l)
        self.n_dblocks = triton.cdiv(d, block_d)
        self.programs = batch * G                     # grid axis 0: (batch, group)
        self.n_seg, self.seg_chunks = _segments(
            self.n_chunks, self.programs * self.n_dblocks, device, seg_chunks)
        self.flags = flags    # HAS_DT_PROJ, HAS_BIAS, SOFTPLUS, HAS_D, HAS_Z, HAS_NORM

    def meta(self, per_thread, max_registers=0):
        meta = dict(G=self.G, R=max(self.R, 1), BLOCK_L=self.block_l,
                    BLOCK_D=self.block_d, SEG_BLOCK=SEG_BLOCK,
                    FLOAT_INDEX=bool(TUNING['float_index']) and self.L < FLOAT_INDEX_MAX_L,
                    num_warps=_warps(self.block_l, self.block_d, per_thread), **self.flags)
        if max_registers and not triton_interpreting():
            meta['maxnreg'] = max_registers       # ptxas's cap per thread (occupancy)
        return meta

    def sizes(self, one_pass=False):
        """The kernels' scalar arguments (sizes, ``eps``); ``one_pass``: segments of
        one chunk."""
        seg_chunks, n_seg = (1, self.n_chunks) if one_pass else (self.seg_chunks,
                                                                 self.n_seg)
        return dict(L=self.L, H=self.H, W=self.W, d=self.d, n_chunks=self.n_chunks,
                    seg_chunks=seg_chunks, n_seg=n_seg, eps=self.eps)

    def grid(self, segments):
        return self.programs, self.n_dblocks, segments


class _Operands:
    """What both kernels read: the token maps with their (batch, token, channel) strides
    and the per-channel parameters (fp32, contiguous); ``None`` where a feature is off."""

    def __init__(self, u, su, dl, sdl, w, bias, A, D, B, sB, C, sC, z=None,
                 sz=(0, 0, 0), lnw=None, lnb=None):
        self.u, self.su, self.dl, self.sdl = u, su, dl, sdl
        self.w, self.bias, self.A, self.D = w, bias, A, D
        self.B, self.sB, self.C, self.sC = B, sB, C, sC
        self.z, self.sz, self.lnw, self.lnb = z, sz, lnw, lnb

    def kernel_args(self):
        """The kernels' input arguments, by name (a placeholder for an absent one)."""
        def t(x):  # unused pointers still need a tensor
            return self.A if x is None else x
        return dict(**tensor_args('u', self.u, self.su, 'blc'),
                    **tensor_args('dl', self.dl, self.sdl, 'blc'),
                    w_ptr=t(self.w), bias_ptr=t(self.bias), A_ptr=self.A, D_ptr=t(self.D),
                    **tensor_args('B', self.B, self.sB, 'blg'),
                    **tensor_args('C', self.C, self.sC, 'blg'),
                    **tensor_args('z', t(self.z), self.sz, 'blc'),
                    lnw_ptr=t(self.lnw), lnb_ptr=t(self.lnb))


def _warps(block_l, block_d, per_thread):
    if triton_interpreting():
        return 1
    return max(1, min(16, block_l * block_d // (32 * per_thread)))


def _look_back_buffer(cfg, device):
    """The one-pass launches' buffer (:func:`_look_back` reads its layout): a counter,
    then one int64 slot per (sequence, chunk, channel) for the aggregates and one for the
    inclusive carries, all set to -1 (not ready)."""
    return torch.full((1 + 2 * cfg.programs * cfg.n_chunks * cfg.d, ), -1,
                      dtype=torch.int64, device=device)


def _one_pass(cfg, key):
    """Sequences cut into segments are scanned in one launch with a look-back across
    one-chunk segments (``TUNING[key]``: ``fwd_look_back`` / ``bwd_look_back``) instead
    of a carry pass and a second launch (which runs the segment's whole computation
    twice)."""
    return cfg.n_seg > 1 and bool(TUNING[key])


def _forward(cfg, ops, out, so, dirs, save_states):
    """Launch the forward (with a look-back, or a carry pass first, when the sequence is
    cut into segments); returns the chunk-end states for the backward (or a
    placeholder)."""
    f32 = dict(device=ops.u.device, dtype=torch.float32)
    hs = (torch.empty(cfg.programs, cfg.n_chunks, cfg.d, **f32) if save_states
          else ops.A)
    args = dict(ops.kernel_args(), **tensor_args('out', out, so, 'blc', 'o'), hs_ptr=hs,
                seg_a_ptr=ops.A, seg_h_ptr=ops.A, dir_ptr=dirs, lb_ptr=ops.A,
                **cfg.meta(TUNING['fwd_per_thread'], TUNING['fwd_max_registers']))
    if _one_pass(cfg, 'fwd_look_back'):
        args.update(cfg.sizes(one_pass=True), lb_ptr=_look_back_buffer(cfg, ops.u.device))
        _scan_fwd_kernel[cfg.grid(cfg.n_chunks)](
            **args, SAVE_STATES=save_states, CARRY_PASS=False, LOOK_BACK=True)
        return hs
    args.update(cfg.sizes())
    if cfg.n_seg > 1:
        args['seg_a_ptr'] = torch.empty(cfg.programs, cfg.n_seg, cfg.d, **f32)
        args['seg_h_ptr'] = torch.empty_like(args['seg_a_ptr'])
        _scan_fwd_kernel[cfg.grid(cfg.n_seg - 1)](   # the last segment's carry is unused
            **args, SAVE_STATES=False, CARRY_PASS=True, LOOK_BACK=False)
    _scan_fwd_kernel[cfg.grid(cfg.n_seg)](
        **args, SAVE_STATES=save_states, CARRY_PASS=False, LOOK_BACK=False)
    return hs


def _backward(cfg, ops, grad_args):
    """Launch the backward (with a look-back, or a carry pass first, when the sequence
    is cut into segments); ``grad_args``: the output gradient ``go`` and the gradient
    maps ``du``, ``ddl``, ``dB``, ``dC``, ``dz`` (a placeholder without a gate) as
    :func:`tensor_args` names them, the forward's states ``hs_ptr`` and the directions
    ``dir_ptr``. Returns the parameter gradients summed over batch and segments."""
    f32 = dict(device=ops.u.device, dtype=torch.float32)
    one_pass = _one_pass(cfg, 'bwd_look_back')
    n_seg = cfg.n_chunks if one_pass else cfg.n_seg
    # per-program partial sums of the per-channel parameter gradients, one (batch * G,
    # n_seg, d) slab each in one buffer, reduced by one sum (and the dt weight's, with
    # R values per channel, by another); absent features get no slab
    names = [name for name, t in (('A', ops.A), ('D', ops.D), ('bias', ops.bias),
                                  ('lnw', ops.lnw), ('lnb', ops.lnb)) if t is not None]
    slabs = torch.empty(len(names), cfg.programs, n_seg, cfg.d, **f32)
    partial_sums = dict(zip(names, slabs.unbind(0)))
    w_part = (torch.empty(cfg.programs, n_seg, cfg.d, cfg.R, **f32)
              if ops.w is not None else slabs[0])
    args = dict(ops.kernel_args(), **grad_args, seg_p_ptr=ops.A, seg_s_ptr=ops.A,
                lb_ptr=ops.A, dw_ptr=w_part, **cfg.sizes(one_pass),
                **cfg.meta(_bwd_tile(cfg.block_d, cfg.grouped)[1], TUNING['bwd_max_registers']),
                BLOCK_R=max(2, _next_pow2(max(cfg.R, 1))),
                DT_DOT=0 < TUNING['bwd_dt_dot_rank'] <= cfg.R)
    args.update({f'd{name}_ptr': partial_sums.get(name, slabs[0])
                 for name in ('A', 'D', 'bias', 'lnw', 'lnb')})
    if one_pass:
        args['lb_ptr'] = _look_back_buffer(cfg, ops.u.device)
    elif cfg.n_seg > 1:
        args['seg_p_ptr'] = torch.empty(cfg.programs, cfg.n_seg, cfg.d, **f32)
        args['seg_s_ptr'] = torch.empty_like(args['seg_p_ptr'])
        _scan_bwd_kernel[cfg.grid(cfg.n_seg - 1)](   # the first segment's carry is unused
            **args, seg_offset=1, CARRY_PASS=True, LOOK_BACK=False)
    _scan_bwd_kernel[cfg.grid(n_seg)](
        **args, seg_offset=0, CARRY_PASS=False, LOOK_BACK=one_pass)
    # summed over batch and segments: (G * d,) per channel, (G, d, R) for the dt weight
    grads = dict.fromkeys(('A', 'D', 'bias', 'lnw', 'lnb', 'w'))
    sums = slabs.view(len(names), cfg.batch, cfg.G, n_seg, cfg.d).sum((1, 3))
    grads.update(zip(names, sums.view(len(names), cfg.G * cfg.d).unbind(0)))
    if ops.w is not None:
        grads['w'] = w_part.view(cfg.batch, cfg.G, n_seg, cfg.d, cfg.R).sum((0, 2))
    return grads


_DIRS_CACHE = {}


def _direction_tensor(codes, device):
    """The direction codes as the int32 tensor the kernels read (one per device)."""
    key = (tuple(codes), str(device))
    if key not in _DIRS_CACHE:
        _DIRS_CACHE[key] = torch.tensor(list(key[0]), dtype=torch.int32, device=device)
    return _DIRS_CACHE[key]


def _flags(has_dt_proj, has_bias, softplus, has_d, has_z, has_norm):
    return dict(HAS_DT_PROJ=has_dt_proj, HAS_BIAS=has_bias, SOFTPLUS=softplus,
                HAS_D=has_d, HAS_Z=has_z, HAS_NORM=has_norm)


# ------------------------------------------------------------------- generic contract
def _generic_operands(u, delta, A1, B, C, D1, bias1):
    # B and C are (batch, 1, L): one value per token, the same for every channel
    sBC = lambda t: (t.stride(0), t.stride(2), 0)  # noqa: E731
    return _Operands(u, _seq_strides(u), delta, _seq_strides(delta), None, bias1, A1, D1,
                     B, sBC(B), C, sBC(C))


class _SelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, block_l,
                seg_chunks):
        batch, dim, L = u.shape
        block_d = min(64, max(16, _next_pow2(dim)))
        save = any(ctx.needs_input_grad[:7])
        block_l = _block_l(block_d, save, block_l, grouped=False)
        A1 = A.reshape(dim).float().contiguous()
        D1 = None if D is None else D.float().contiguous()
        bias1 = None if delta_bias is None else delta_bias.float().contiguous()
        cfg = _Cfg(batch, L, 1, L, dim, 1, 0, 0., block_l, block_d, u.device,
                   _flags(False, bias1 is not None, bool(delta_softplus), D1 is not None,
                          False, False), seg_chunks, grouped=False)
        out = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
        dirs = _direction_tensor((0, ), u.device)
        ops = _generic_operands(u, delta, A1, B, C, D1, bias1)
        hs = _forward(cfg, ops, out, _seq_strides(out), dirs, save)
        ctx.cfg = cfg
        ctx.save_for_backward(u, delta, A1, B, C, D1, bias1, hs)
        ctx.dtypes = (B.dtype, C.dtype, A.dtype, A.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A1, B, C, D1, bias1, hs = ctx.saved_tensors
        cfg = ctx.cfg
        batch, L = cfg.batch, cfg.L
        du = torch.empty_like(u, memory_format=torch.contiguous_format)
        ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
        dB = torch.empty(cfg.n_dblocks, batch, L, device=u.device, dtype=torch.float32)
        dC = torch.empty_like(dB)
        sred = (batch * L, L, 1, 0)
        grad_args = dict(**tensor_args('go', grad_out, _seq_strides(grad_out), 'blc'),
                         **tensor_args('du', du, _seq_strides(du), 'blc'),
                         **tensor_args('ddl', ddelta, _seq_strides(ddelta), 'blc'),
                         **tensor_args('dB', dB, sred, 'kblg'),
                         **tensor_args('dC', dC, sred, 'kblg'),
                         **tensor_args('dz', A1, (0, 0, 0), 'blc'),
                         hs_ptr=hs, dir_ptr=_direction_tensor((0, ), u.device))
        grads = _backward(cfg, _generic_operands(u, delta, A1, B, C, D1, bias1), grad_args)
        b_dtype, c_dtype, a_dtype, a_shape = ctx.dtypes
        dB = dB.sum(0).unsqueeze(1).to(b_dtype)
        dC = dC.sum(0).unsqueeze(1).to(c_dtype)
        dA = grads['A'].view(a_shape).to(a_dtype)
        return (du, ddelta, dA, dB, dC, grads['D'], grads['bias'], None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                          _block_l=None, _seg_chunks=None):
    """Selective scan with the contract of :func:`mmgroupmamba.ops.selective_scan`.

    Args:
        u, delta: (batch, dim, L), any float dtype (computed in fp32).
        A: (dim, 1). B, C: (batch, 1, L). D, delta_bias: (dim,) or None.
        _block_l, _seg_chunks: chunk length and chunks per segment instead of the tuned
            choice (tests).

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
                          delta_softplus, _block_l, _seg_chunks)


# --------------------------------------------------------------- fused GroupMamba layer
def _grouped_operands(u, xdbl, z, w, bias, A1, D1, lnw, lnb, G, R):
    # xdbl per token: G * R values of dt_r, then the G values of B, then the G of C
    sx = _token_strides(xdbl)
    return _Operands(u, _token_strides(u), xdbl, sx, w, bias, A1, D1, xdbl[..., G * R:], sx,
                     xdbl[..., G * R + G:], sx, z,
                     _token_strides(z) if z is not None else (0, 0, 0), lnw, lnb)


def _token_maps(u, xdbl, z):
    """The layer's maps, each readable as (batch, token, channel) (copied if not)."""
    return _tokens(u)[0], _tokens(xdbl)[0], None if z is None else _tokens(z)[0]


def _grouped_cfg(u, z, w, bias, D, lnw, eps, save_states, block_l, seg_chunks):
    batch, H, W, _ = u.shape
    G, d, R = w.shape
    block_d = max(16, _next_pow2(d))
    return _Cfg(batch, H * W, H, W, d, G, R, float(eps),
                _block_l(block_d, save_states, block_l), block_d, u.device,
                _flags(True, bias is not None, True, D is not None, z is not None,
                       lnw is not None), seg_chunks)


def _grouped_scan_forward(u, xdbl, z, w, bias, A, D, lnw, lnb, eps, directions,
                          block_l, seg_chunks, save_states):
    """The forward launches: ``(out, chunk-end states)`` (an empty tensor for the
    states when ``save_states`` is off). ``w``, ``bias``, ``A``, ``D``, ``lnw``,
    ``lnb``: fp32, contiguous; ``directions``: codes (:data:`DIRECTION_CODES`)."""
    u, xdbl, z = _token_maps(u, xdbl, z)
    cfg = _grouped_cfg(u, z, w, bias, D, lnw, eps, save_states, block_l, seg_chunks)
    batch, H, W, GD = u.shape
    out = torch.empty(batch, H, W, GD, device=u.device, dtype=u.dtype)
    ops = _grouped_operands(u, xdbl, z, w, bias, A, D, lnw, lnb, cfg.G, cfg.R)
    dirs = _direction_tensor(directions, u.device)
    hs = _forward(cfg, ops, out, _token_strides(out), dirs, save_states)
    return out, (hs if save_states else u.new_empty(0, dtype=torch.float32))


def _grouped_scan_backward(grad_out, u, xdbl, z, w, bias, A, D, lnw, lnb, hs, eps,
                           directions, block_l, seg_chunks):
    """The backward launches: gradients of ``u, xdbl, z, w, bias, A, D, lnw, lnb`` (an
    empty tensor for each absent input), the states ``hs`` from the forward."""
    u, xdbl, z = _token_maps(u, xdbl, z)
    cfg = _grouped_cfg(u, z, w, bias, D, lnw, eps, True, block_l, seg_chunks)
    G, R = cfg.G, cfg.R
    grad_out, sgo = _tokens(grad_out)
    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    dz = (torch.empty_like(z, memory_format=torch.contiguous_format)
          if z is not None else None)
    # dt_r, B and C gradients: each position written once, in xdbl's dtype
    dx = torch.empty(*xdbl.shape, device=u.device, dtype=xdbl.dtype)
    sdx = _token_strides(dx)
    sBd = (0, sdx[0], sdx[1], sdx[2])
    ops = _grouped_operands(u, xdbl, z, w, bias, A, D, lnw, lnb, G, R)
    grad_args = dict(**tensor_args('go', grad_out, sgo, 'blc'),
                     **tensor_args('du', du, _token_strides(du), 'blc'),
                     **tensor_args('ddl', dx, sdx, 'blc'),
                     **tensor_args('dB', dx[..., G * R:], sBd, 'kblg'),
                     **tensor_args('dC', dx[..., G * R + G:], sBd, 'kblg'),
                     **tensor_args('dz', A if dz is None else dz,
                                   (0, 0, 0) if dz is None else _token_strides(dz), 'blc'),
                     hs_ptr=hs, dir_ptr=_direction_tensor(directions, u.device))
    grads = _backward(cfg, ops, grad_args)

    def absent():  # a fresh one for each absent input (a custom op's outputs are distinct)
        return u.new_empty(0, dtype=torch.float32)
    return (du, dx, absent() if dz is None else dz,
            *(absent() if grads[k] is None else grads[k]
              for k in ('w', 'bias', 'A', 'D', 'lnw', 'lnb')))


def _present(grads, inputs):
    """Gradients for the inputs that exist (None where an input is None)."""
    return tuple(None if x is None else g for g, x in zip(grads, inputs))


class _GroupedScanFn(torch.autograd.Function):
    """The eager-mode autograd of the fused layer scan (see :func:`call_fused`)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, u, xdbl, z, w, bias, A, D, lnw, lnb, eps, directions, block_l,
                seg_chunks):
        save = any(ctx.needs_input_grad)
        out, hs = _grouped_scan_forward(u, xdbl, z, w, bias, A, D, lnw, lnb, eps,
                                        directions, block_l, seg_chunks, save)
        ctx.save_for_backward(u, xdbl, z, w, bias, A, D, lnw, lnb, hs)
        ctx.args = (eps, directions, block_l, seg_chunks)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        grads = _grouped_scan_backward(grad_out, *saved, *ctx.args)
        return (*_present(grads, saved[:9]), None, None, None, None)


# The same computation as custom operators, for torch.compile.
def _grouped_scan_op(u: torch.Tensor, xdbl: torch.Tensor, z: Optional[torch.Tensor],
                     w: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor,
                     D: Optional[torch.Tensor], lnw: Optional[torch.Tensor],
                     lnb: Optional[torch.Tensor], eps: float, directions: List[int],
                     block_l: Optional[int], seg_chunks: Optional[int],
                     save_states: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _grouped_scan_forward(u, xdbl, z, w, bias, A, D, lnw, lnb, eps, directions,
                                 block_l, seg_chunks, save_states)


def _grouped_scan_fake(u, xdbl, z, w, bias, A, D, lnw, lnb, eps, directions, block_l,
                       seg_chunks, save_states):
    batch, H, W, GD = u.shape
    G, d, _ = w.shape
    out = u.new_empty(batch, H, W, GD)
    if not save_states:
        return out, u.new_empty(0, dtype=torch.float32)
    chunk = _block_l(max(16, _next_pow2(d)), True, block_l)
    return out, u.new_empty(batch * G, (H * W + chunk - 1) // chunk, d, dtype=torch.float32)


def _grouped_scan_backward_op(
        grad_out: torch.Tensor, u: torch.Tensor, xdbl: torch.Tensor,
        z: Optional[torch.Tensor], w: torch.Tensor, bias: Optional[torch.Tensor],
        A: torch.Tensor, D: Optional[torch.Tensor], lnw: Optional[torch.Tensor],
        lnb: Optional[torch.Tensor], hs: torch.Tensor, eps: float, directions: List[int],
        block_l: Optional[int], seg_chunks: Optional[int]) -> List[torch.Tensor]:
    return list(distinct(_grouped_scan_backward(grad_out, u, xdbl, z, w, bias, A, D, lnw,
                                                lnb, hs, eps, directions, block_l,
                                                seg_chunks)))


def _grouped_scan_backward_fake(grad_out, u, xdbl, z, w, bias, A, D, lnw, lnb, hs, eps,
                                directions, block_l, seg_chunks):
    def like(t, dtype=None):
        return (u.new_empty(0, dtype=torch.float32) if t is None
                else t.new_empty(t.shape, dtype=dtype or t.dtype))
    return [like(u), like(xdbl), like(z), like(w, torch.float32)] + [
        like(t, torch.float32) for t in (bias, A, D, lnw, lnb)]


def _grouped_scan_setup(ctx, inputs, output):
    u, xdbl, z, w, bias, A, D, lnw, lnb, eps, directions, block_l, seg_chunks, _ = inputs
    ctx.save_for_backward(u, xdbl, z, w, bias, A, D, lnw, lnb, output[1])
    ctx.args = (eps, directions, block_l, seg_chunks)


def _grouped_scan_autograd(ctx, grad_out, _grad_states):
    saved = ctx.saved_tensors
    grads = grouped_scan_backward_op(grad_out, *saved, *ctx.args)
    return (*_present(grads, saved[:9]), None, None, None, None, None)


grouped_scan_backward_op = register_fused_op(
    'grouped_scan_backward', _grouped_scan_backward_op, _grouped_scan_backward_fake)
grouped_scan_op = register_fused_op(
    'grouped_scan', _grouped_scan_op, _grouped_scan_fake, _grouped_scan_autograd,
    _grouped_scan_setup)


def _compiled_grouped_scan(*args):
    """The operator as :func:`call_fused` calls it under torch.compile: states are kept
    for the backward when autograd records."""
    return grouped_scan_op(*args, records_grad(*args))[0]


def grouped_selective_scan_triton(u, xdbl, z, dt_weight, dt_bias, A, D=None,
                                  ln_weight=None, ln_bias=None, eps=1e-5,
                                  directions=SCAN_DIRECTIONS,
                                  _block_l=None, _seg_chunks=None):
    """All groups of a GroupMamba layer in one launch (two for long sequences
    without the look-back), ``d_state = 1``.

    Args:
        u: (B, H, W, G*d) channels-last map after the depthwise conv and SiLU; group k
            owns channels ``[k d, (k+1) d)`` and is scanned in ``directions[k]``.
        xdbl: (B, H, W, G*R + 2G) per token: the G groups' ``dt_r`` (R each), then the
            G values of ``B``, then the G values of ``C``.
        z: (B, H, W, G*d) gate input (``SiLU(z)`` multiplies the output) or None.
        dt_weight: (G, d, R) dt projections. dt_bias, A, D: (G*d,), ``A = -exp(A_log)``.
        ln_weight, ln_bias: (G*d,) per-group ``out_norm`` affine (LayerNorm over each
            group's d channels, ``eps``) or None for no norm.
        directions: one of ``row``, ``col``, ``row_rev``, ``col_rev`` (or its code) per
            group (:mod:`.directions`).
        _block_l, _seg_chunks: chunk length and chunks per segment instead of the tuned
            choice (tests).

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
    f32 = [None if t is None else t.float().contiguous()
           for t in (dt_weight, dt_bias, A.reshape(-1), D, ln_weight, ln_bias)]
    w, bias, A1, D1, lnw, lnb = f32
    return call_fused(_GroupedScanFn, _compiled_grouped_scan, u, xdbl, z, w, bias, A1, D1,
                      lnw, lnb, float(eps), direction_codes(directions), _block_l,
                      _seg_chunks)
