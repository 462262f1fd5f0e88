"""The Triton selective scan (generic and fused multi-group) against the references.

GPU tests skip without CUDA. The kernels' logic also runs on CPU through Triton's
interpreter (``TRITON_INTERPRET=1``) in a subprocess, on tiny shapes; that test skips
when Triton is not installed (or ``MMGM_SKIP_TRITON_INTERPRET=1``).

On a GPU machine:
    python -m pytest tests/ops/test_selective_scan_triton.py \
        tests/models/test_grouped_layer.py -q
"""
import pytest
import torch

from conftest import (HAS_TRITON, requires_triton_gpu, requires_triton_interpreter,
                      run_in_triton_interpreter)
from mmgroupmamba.ops import grouped_selective_scan_torch, selective_scan_ref

# fp32 comparisons without TF32; launch settings restored after each test (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('_no_tf32', '_restore_tuning')


def _scan_inputs(batch, dim, length, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = dict(u=mk(batch, dim, length), delta=mk(batch, dim, length) * 0.5,
             A=-torch.rand(dim, 1, generator=g) * 3 - 0.1, B=mk(batch, 1, length),
             C=mk(batch, 1, length), D=mk(dim), delta_bias=mk(dim) * 0.5)
    return {k: v.to(device=device, dtype=dtype if k in ('u', 'delta', 'B', 'C')
                    else torch.float32).requires_grad_() for k, v in t.items()}


def _grouped_inputs(batch, H, W, d, R, device, dtype=torch.float32, gate=True, norm=True,
                    seed=0):
    G = 4
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = dict(u=mk(batch, H, W, G * d), xdbl=mk(batch, H, W, G * R + 2 * G),
             z=mk(batch, H, W, G * d) if gate else None, dt_weight=mk(G, d, R) * 0.5,
             dt_bias=mk(G * d) * 0.5, A=-torch.rand(G * d, 1, generator=g) * 2 - 0.1,
             D=mk(G * d), ln_weight=1 + 0.3 * mk(G * d) if norm else None,
             ln_bias=0.3 * mk(G * d) if norm else None)
    low = ('u', 'xdbl', 'z')
    return {k: None if v is None else v.to(device=device, dtype=dtype if k in low
                                           else torch.float32).requires_grad_()
            for k, v in t.items()}


def _grads(inputs):
    return {k: v.grad for k, v in inputs.items() if v is not None}


def _assert_grads_close(grads, ref, rtol=1e-4, msg=''):
    for k, g in ref.items():
        scale = max(1e-3, g.abs().max().item())
        torch.testing.assert_close(grads[k], g, atol=rtol * scale, rtol=rtol,
                                   msg=f'{msg} grad {k}')


def _assert_matches_reference(y, y_ref, inputs, ref_inputs, tol=1e-4, msg=''):
    """Outputs, then the gradients of both for one random output gradient."""
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y.backward(grad)
    _assert_grads_close(_grads(inputs), _grads(ref_inputs), rtol=tol, msg=msg)


# ------------------------------------------------------------------ fused multi-group
GROUPED_SHAPES = [
    # batch, H, W, d, R
    (2, 14, 14, 87, 6),    # T/S stage 3: 87 channels per group
    (1, 56, 56, 16, 1),    # T stage 1, batch 1
    (3, 7, 9, 112, 7),     # T stage 4 width, non-square
    (2, 13, 17, 32, 2),    # odd H and W
    (4, 1, 1, 112, 7),     # the class block: L = 1
    (1, 23, 290, 24, 2),   # long sequence (6670 tokens) over many chunks
]


@requires_triton_gpu
@pytest.mark.parametrize('shape', GROUPED_SHAPES)
def test_fused_grouped_scan_matches_reference_fp32(shape):
    from mmgroupmamba.ops.selective_scan_triton import grouped_selective_scan_triton
    ref_in = _grouped_inputs(*shape, 'cuda')
    tri_in = _grouped_inputs(*shape, 'cuda')
    y_ref = grouped_selective_scan_torch(**ref_in, sequential=shape[1] * shape[2] <= 400)
    y = grouped_selective_scan_triton(**tri_in)
    _assert_matches_reference(y, y_ref, tri_in, ref_in, msg=str(shape))


@requires_triton_gpu
@pytest.mark.parametrize('gate,norm', [(False, False), (True, False), (False, True)])
def test_fused_grouped_scan_without_gate_or_norm(gate, norm):
    from mmgroupmamba.ops.selective_scan_triton import grouped_selective_scan_triton
    shape = (2, 9, 11, 20, 2)
    ref_in = _grouped_inputs(*shape, 'cuda', gate=gate, norm=norm)
    tri_in = _grouped_inputs(*shape, 'cuda', gate=gate, norm=norm)
    y_ref = grouped_selective_scan_torch(**ref_in)
    y = grouped_selective_scan_triton(**tri_in)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y.backward(grad)
    _assert_grads_close(_grads(tri_in), _grads(ref_in), rtol=1e-4)


@requires_triton_gpu
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_fused_grouped_scan_half_precision(dtype):
    from mmgroupmamba.ops.selective_scan_triton import grouped_selective_scan_triton
    shape = (2, 28, 28, 32, 2)
    inp = _grouped_inputs(*shape, 'cuda', dtype=dtype)
    y = grouped_selective_scan_triton(**inp)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y_ref = grouped_selective_scan_torch(**{k: None if v is None else v.detach().float()
                                            for k, v in inp.items()})
    torch.testing.assert_close(y.float(), y_ref, atol=5e-2, rtol=5e-2)
    y.float().square().mean().backward()
    for k, v in inp.items():
        if v is not None:
            assert v.grad.dtype == v.dtype and torch.isfinite(v.grad).all(), k


@requires_triton_gpu
def test_fused_grouped_scan_large_batch_and_map():
    from mmgroupmamba.ops.selective_scan_triton import grouped_selective_scan_triton
    with torch.no_grad():
        # 1333 x 800 at stride 4: 200 x 334 = 66800 tokens
        inp = {k: None if v is None else v.detach()
               for k, v in _grouped_inputs(1, 200, 334, 16, 1, 'cuda').items()}
        torch.testing.assert_close(grouped_selective_scan_triton(**inp),
                                   grouped_selective_scan_torch(**inp), atol=2e-4, rtol=2e-4)
        inp = {k: None if v is None else v.detach()
               for k, v in _grouped_inputs(256, 7, 7, 112, 7, 'cuda',
                                           dtype=torch.bfloat16).items()}
        y = grouped_selective_scan_triton(**inp)
        assert y.shape == (256, 7, 7, 448) and torch.isfinite(y).all()


# ------------------------------------------------- long sequences: parallel along L
# Detection and segmentation maps (batch 1-2): the kernels cut each sequence into
# segments; forward and every gradient against the float64 evaluation of the same
# recurrence (the two-level chunked scan in fp64; the sequential loop would take 200,000
# Python steps), all four directions at once (one per group), 87 channels per group.
# Also 16 channels per group (GroupMamba-T's stage 1), where every channel vector is
# held by several threads of a program.
LONG_SHAPES = [(1, 200, 336, 87), (2, 200, 336, 87), (1, 400, 500, 87), (2, 400, 500, 87),
               (2, 200, 336, 16)]  # L 67,200 / 200,000


@pytest.fixture(params=[0, 1], ids=['carry-pass', 'look-back'])
def look_back(request, _restore_tuning):
    """Long sequences scanned in one pass with a look-back (the default) and with a
    carry pass (``TUNING``'s ``fwd_look_back`` / ``bwd_look_back``; ``_restore_tuning``
    puts the default back)."""
    from mmgroupmamba.ops.selective_scan_triton import set_tuning
    set_tuning(fwd_look_back=request.param, bwd_look_back=request.param)
    return request.param


def _long_inputs(batch, H, W, dtype, d=87, seed=0):
    # dt around softplus(-2) ~ 0.13 with |A| ~ 1: states decay over ~10 tokens, as in
    # the trained models, so a wrong carry across segments shows in the outputs
    inp = _grouped_inputs(batch, H, W, d, -(-d // 16), 'cuda', dtype=dtype, seed=seed)
    with torch.no_grad():
        inp['dt_bias'] -= 2.
    ref = {k: None if v is None else v.detach().double().requires_grad_()
           for k, v in inp.items()}
    return inp, ref


@requires_triton_gpu
@pytest.mark.parametrize('batch,H,W,d', LONG_SHAPES)
def test_fused_grouped_scan_long_sequences_fp32(batch, H, W, d, look_back):
    from mmgroupmamba.ops.selective_scan_triton import grouped_selective_scan_triton
    inp, ref = _long_inputs(batch, H, W, torch.float32, d)
    y = grouped_selective_scan_triton(**inp)
    y_ref = grouped_selective_scan_torch(**ref)
    scale = y_ref.abs().max().item()
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4 * scale, rtol=1e-4)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad.double())
    _assert_grads_close({k: g.double() for k, g in _grads(inp).items()}, _grads(ref),
                        rtol=1e-4, msg=f'{batch}x{H}x{W}, d={d}')


@requires_triton_gpu
@pytest.mark.parametrize('batch,H,W', [(2, 200, 336), (1, 400, 500)])
def test_fused_grouped_scan_long_sequences_bf16(batch, H, W, look_back):
    from mmgroupmamba.ops.selective_scan_triton import grouped_selective_scan_triton
    inp, ref = _long_inputs(batch, H, W, torch.bfloat16)
    y = grouped_selective_scan_triton(**inp)
    assert y.dtype == torch.bfloat16
    y_ref = grouped_selective_scan_torch(**ref)      # the same bf16 values, in fp64
    # bf16 outputs and input gradients are rounded to 8 bits of mantissa (4e-3)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-2 * y_ref.abs().max().item(),
                               rtol=1e-2)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad.double())
    _assert_grads_close({k: g.double() for k, g in _grads(inp).items()}, _grads(ref),
                        rtol=1e-2, msg=f'{batch}x{H}x{W} bf16')


def test_sequences_are_cut_into_segments_only_where_the_gpu_is_underfilled():
    if not HAS_TRITON:
        pytest.skip('triton not installed')
    from mmgroupmamba.ops.selective_scan_triton import segments_for
    sms = 132  # an H200
    # classification, batch 128 at 56 x 56 (4 groups, one channel block): one launch
    assert segments_for(n_chunks=25, programs=128 * 4, sm_count=sms) == 1
    # Mask R-CNN, batch 2 at 200 x 336: 525 chunks of 128 tokens, 8 programs
    n_seg = segments_for(n_chunks=525, programs=2 * 4, sm_count=sms)
    assert 32 <= n_seg <= 525 and n_seg * 8 >= 2 * sms
    # never more segments than chunks
    assert segments_for(n_chunks=3, programs=1, sm_count=sms) == 3


# ------------------------------------------------------------------------- generic API
@requires_triton_gpu
@pytest.mark.parametrize('shape,variant', [
    ((2, 6, 37), 'full'), ((3, 200, 300), 'full'),  # 200 channels: 4 channel blocks
    ((2, 16, 2049), 'full'), ((2, 6, 37), 'no_d_bias'), ((2, 6, 37), 'no_softplus')])
def test_generic_triton_matches_reference_fp32(shape, variant):
    from mmgroupmamba.ops.selective_scan_triton import selective_scan_triton
    ref_in = _scan_inputs(*shape, 'cuda')
    tri_in = _scan_inputs(*shape, 'cuda')
    kw = dict(delta_softplus=variant != 'no_softplus')
    if variant == 'no_d_bias':
        for inp in (ref_in, tri_in):
            inp['D'] = inp['delta_bias'] = None
    if variant == 'no_softplus':
        for inp in (ref_in, tri_in):  # positive delta without softplus
            inp['delta'] = inp['delta'].detach().abs().requires_grad_()
    ref_in = {k: v for k, v in ref_in.items() if v is not None}
    tri_in = {k: v for k, v in tri_in.items() if v is not None}
    y_ref = selective_scan_ref(**ref_in, **kw)
    y = selective_scan_triton(**tri_in, **kw)
    _assert_matches_reference(y, y_ref, tri_in, ref_in, msg=str(shape))


@requires_triton_gpu
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_generic_triton_half_inputs(dtype):
    from mmgroupmamba.ops import selective_scan
    inp = {k: v.detach() for k, v in _scan_inputs(2, 24, 333, 'cuda', dtype).items()}
    y = selective_scan(**inp, backend='triton')
    assert y.dtype == dtype
    y_ref = selective_scan_ref(**{k: v.float() for k, v in inp.items()})
    torch.testing.assert_close(y.float(), y_ref, atol=3e-2, rtol=3e-2)


def test_generic_triton_rejects_state_size_above_one():
    if not HAS_TRITON:
        pytest.skip('triton not installed')
    from mmgroupmamba.ops.selective_scan_triton import selective_scan_triton
    u = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match='state size 1'):
        selective_scan_triton(u, u, -torch.ones(2, 3), torch.randn(1, 3, 5),
                              torch.randn(1, 3, 5))


# ------------------------------------------------------------------ Triton interpreter
if HAS_TRITON:
    import triton
    import triton.language as tl

    from mmgroupmamba.ops.selective_scan_triton import _look_back

    @triton.jit
    def _look_back_probe(p_ptr, s_ptr, lb_ptr, out_ptr, k, n_chunks, d,
                         BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                         REVERSE: tl.constexpr):
        # one sequence (grid (1,)): chunk ``k``'s carry from the slots already in lb_ptr
        j = tl.arange(0, BLOCK_D)
        mask_d = j < d
        p = tl.load(p_ptr + j, mask=mask_d, other=1.)
        s = tl.load(s_ptr + j, mask=mask_d, other=0.)
        carry = _look_back(p, s, lb_ptr, 0, k, n_chunks, d, j, mask_d, BLOCK_L, BLOCK_D,
                           REVERSE)
        tl.store(out_ptr + j, carry, mask=mask_d)


def _packed(p, s):
    """Slots as :func:`_pack` writes them (p in the low half, s in the high)."""
    import numpy as np
    pair = np.stack([p.numpy(), s.numpy()], -1).astype(np.float32)
    return torch.from_numpy(pair.view(np.int64)[..., 0].copy())


def _check_look_back():
    """The look-back against a walk written in Python: chunks whose slots
    hold only their aggregate, an inclusive result with some channels still missing
    (counts as an aggregate), unwritten chunks past the first full inclusive result
    (never read), in both directions."""
    n_chunks, d = 11, 3
    g = torch.Generator().manual_seed(0)
    agg_p, agg_s = torch.rand(n_chunks, d, generator=g), torch.randn(n_chunks, d, generator=g)
    inc_s = torch.randn(n_chunks, d, generator=g)
    for reverse, k, full, partial, unwritten in ((False, 9, 2, 5, (0, 1)),
                                                 (True, 0, 8, 3, (9, 10))):
        agg, inc = _packed(agg_p, agg_s), _packed(agg_p, inc_s)
        inc[:] = -1
        inc[full] = _packed(agg_p, inc_s)[full]
        inc[partial, :2] = _packed(agg_p, inc_s)[partial, :2]
        for c in unwritten:
            agg[c] = -1
        lb = torch.cat([torch.tensor([-1]), agg.flatten(), inc.flatten()])
        p_own, s_own = torch.rand(d, generator=g), torch.randn(d, generator=g)
        out = torch.empty(d)
        _look_back_probe[(1, )](p_own, s_own, lb, out, k, n_chunks, d, BLOCK_L=4,
                                BLOCK_D=4, REVERSE=reverse)
        acc_p, acc_s = torch.ones(d), torch.zeros(d)
        for idx in (range(k + 1, full + 1) if reverse else range(k - 1, full - 1, -1)):
            if idx == full:
                acc_s = acc_s + acc_p * inc_s[idx]
                break
            acc_s, acc_p = acc_s + acc_p * agg_s[idx], acc_p * agg_p[idx]
        torch.testing.assert_close(out, acc_s)
        # the chunk's own aggregate and inclusive result are published
        slots = lb[1:].view(2, n_chunks, d)
        assert torch.equal(slots[0, k], _packed(p_own, s_own))
        assert torch.equal(slots[1, k], _packed(p_own, s_own + p_own * acc_s))


_INTERPRET_SCRIPT = '''
    import torch
    # fixed output gradients: grad A sums thousands of terms in another order than the
    # reference's (chunks, segments), at the tolerance's edge for a few random draws
    torch.manual_seed(0)
    from test_selective_scan_triton import (_scan_inputs, _grouped_inputs, _grads,
                                            _assert_grads_close)
    from mmgroupmamba.ops import selective_scan_ref, grouped_selective_scan_torch
    from mmgroupmamba.ops import grouped_selective_scan
    from mmgroupmamba.ops.selective_scan_triton import selective_scan_triton
    for shape in [(2, 5, 37), (1, 3, 1)]:
        a, b = _scan_inputs(*shape, 'cpu'), _scan_inputs(*shape, 'cpu')
        y, y_ref = selective_scan_triton(**a, _block_l=16), selective_scan_ref(**b)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(y); y.backward(g); y_ref.backward(g)
        _assert_grads_close(_grads(a), _grads(b), rtol=1e-5)
    for shape in [(2, 3, 7, 5, 2), (1, 1, 1, 3, 1)]:
        a, b = _grouped_inputs(*shape, 'cpu'), _grouped_inputs(*shape, 'cpu')
        y = grouped_selective_scan(**a, backend='triton')
        y_ref = grouped_selective_scan_torch(**b, sequential=True)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(y); y.backward(g); y_ref.backward(g)
        _assert_grads_close(_grads(a), _grads(b), rtol=1e-5)
    # parallel along L: 16-token chunks, sequences cut into segments, scanned in one
    # launch with a look-back across one-chunk segments, and (look_back=0) by carry
    # passes over segments of 1-3 chunks (21 segments fold in two blocks of 16)
    from mmgroupmamba.ops.selective_scan_triton import (grouped_selective_scan_triton,
                                                        set_tuning)
    for look_back in (1, 0):
        set_tuning(fwd_look_back=look_back, bwd_look_back=look_back)
        for shape, seg_chunks in [((2, 5, 13, 3, 2), 2), ((1, 7, 9, 5, 3), 3),
                                  ((1, 9, 37, 2, 1), 1)]:
            a, b = _grouped_inputs(*shape, 'cpu'), _grouped_inputs(*shape, 'cpu')
            y = grouped_selective_scan_triton(**a, _block_l=16, _seg_chunks=seg_chunks)
            y_ref = grouped_selective_scan_torch(**b, sequential=True)
            torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
            g = torch.randn_like(y); y.backward(g); y_ref.backward(g)
            _assert_grads_close(_grads(a), _grads(b), rtol=1e-4)
        a, b = _scan_inputs(2, 5, 70, 'cpu'), _scan_inputs(2, 5, 70, 'cpu')
        y = selective_scan_triton(**a, _block_l=16, _seg_chunks=2)
        y_ref = selective_scan_ref(**b)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(y); y.backward(g); y_ref.backward(g)
        _assert_grads_close(_grads(a), _grads(b), rtol=1e-5)
    # the dt_r gradient as a dot and as a reduction, the token index by float and by
    # integer division, with the tuned chunk lengths (32 rows in the forward, 16 in the
    # backward here); one pass with a look-back and carry passes
    for look_back in (1, 0):
        for dt_dot, flt in ((1, 1), (0, 0)):
            set_tuning(fwd_tile=512, bwd_narrow_tile=256, split_below_per_sm=100,
                       fwd_look_back=look_back, bwd_look_back=look_back,
                       bwd_dt_dot_rank=dt_dot, float_index=flt)
            for shape in [(1, 9, 37, 2, 1), (2, 5, 13, 3, 2)]:
                a, b = _grouped_inputs(*shape, 'cpu'), _grouped_inputs(*shape, 'cpu')
                y = grouped_selective_scan_triton(**a)
                y_ref = grouped_selective_scan_torch(**b, sequential=True)
                torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
                g = torch.randn_like(y); y.backward(g); y_ref.backward(g)
                _assert_grads_close(_grads(a), _grads(b), rtol=1e-4)
    from test_selective_scan_triton import _check_look_back
    _check_look_back()
    print('interpreter ok')
'''


def test_float_token_index_is_exact_below_2_21():
    """The kernels' column-major index divides by the map height as
    ``floor((seq + 0.5) * rn(1 / H))`` in fp32 (``FLOAT_INDEX``, used while ``L < 2**21``):
    the same arithmetic in numpy (round-to-nearest fp32, truncation) against integer
    division for every position below ``2**21``; a reciprocal 2 ulps off breaks it."""
    import numpy as np
    seq = np.arange(2**21, dtype=np.int64)
    x = seq.astype(np.float32) + np.float32(0.5)
    for H in list(range(1, 130)) + [200, 336, 800, 1344, 2047, 65536, 2**21 - 1]:
        inv = np.float32(1) / np.float32(H)
        assert np.array_equal((x * inv).astype(np.int64), seq // H), H
    inv = np.float32(1) / np.float32(3)
    off = np.nextafter(np.nextafter(inv, np.float32(1)), np.float32(1))
    assert not np.array_equal((x * off).astype(np.int64), seq // 3)
    if HAS_TRITON:  # the launcher keeps the integer division from 2**21 tokens on
        from mmgroupmamba.ops.selective_scan_triton import _Cfg

        def float_index(H, W):
            return _Cfg(1, H * W, H, W, 16, 4, 1, 1e-5, 16, 16, torch.device('cpu'),
                        {}).meta(8)['FLOAT_INDEX']
        assert float_index(2048, 1023) and not float_index(2048, 1024)


@requires_triton_interpreter
def test_kernels_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)
