"""The LayerNorm op (plain, modulated and after a residual add) and the LayerNorm module.

CPU tests check the module and the PyTorch path; the kernels run on CPU through Triton's
interpreter in a subprocess (skips without Triton), and on the GPU in the
``requires_triton_gpu`` tests (fp32 against the PyTorch composition, forward and
backward; low-precision outputs).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import requires_triton_gpu, requires_triton_interpreter, run_in_triton_interpreter
from mmgroupmamba.models.layers import LayerNorm
from mmgroupmamba.ops import layer_norm, modulated_layer_norm, residual_layer_norm

# (shape, eps): narrow power-of-two rows, the odd widths of T/S stage 3 (348 = 4 x 87),
# a class token (1 x 1 map), a 3-D input, several tiles per image
SHAPES = [((2, 5, 7, 64), 1e-5), ((3, 4, 4, 348), 1e-6), ((4, 1, 1, 448), 1e-6),
          ((2, 9, 33), 1e-5), ((3, 10, 10, 32), 1e-5)]


def _inputs(shape, device='cpu', dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    t = dict(x=torch.randn(*shape, generator=g) * 2 + 0.5,
             y=torch.randn(*shape, generator=g),
             scale=torch.rand(shape[0], C, generator=g) + 0.5,
             weight=1 + 0.3 * torch.randn(C, generator=g),
             bias=0.3 * torch.randn(C, generator=g))
    t = {k: v.to(device=device, dtype=dtype if k in ('x', 'y') else torch.float32)
         .requires_grad_() for k, v in t.items()}
    # a drop path's factors: one image dropped, the other kept and scaled
    t['factor'] = (torch.arange(shape[0], device=device) % 2).float() / 0.8
    return t


# plain, modulated, residual add (without and with drop-path factors) then the norm
MODES = ('plain', 'modulated', 'residual', 'residual_factor')


def _reference(t, mode, eps):
    v = t['x']
    if mode == 'modulated':
        v = t['y'] * t['x'] * t['scale'].view(v.shape[0], *([1] * (v.dim() - 2)), -1)
    if mode.startswith('residual'):
        y = t['y'].float()
        if mode == 'residual_factor':
            y = y * t['factor'].view(-1, *([1] * (y.dim() - 1)))
        v = t['x'] + y
        return v, F.layer_norm(v, v.shape[-1:], t['weight'], t['bias'], eps)
    return F.layer_norm(v, v.shape[-1:], t['weight'], t['bias'], eps)


def _run(t, mode, eps, out_dtype=None):
    if mode == 'modulated':
        return modulated_layer_norm(t['y'], t['x'], t['scale'], t['weight'], t['bias'], eps,
                                    out_dtype)
    if mode.startswith('residual'):
        return residual_layer_norm(t['x'], t['y'],
                                   t['factor'] if mode == 'residual_factor' else None,
                                   t['weight'], t['bias'], eps, out_dtype)
    return layer_norm(t['x'], t['weight'], t['bias'], eps, out_dtype)


def _backward(out, ref):
    """Both through one random gradient per output (the residual sum's too)."""
    outs, refs = ((out, ), (ref, )) if torch.is_tensor(out) else (out, ref)
    for o, r in zip(outs, refs):
        g = torch.randn_like(r)
        o.backward(g, retain_graph=True)
        r.backward(g, retain_graph=True)


def _check_against_reference(device, atol, grad_rtol):
    for shape, eps in SHAPES:
        for mode in MODES:
            a, b = _inputs(shape, device), _inputs(shape, device)
            out, ref = _run(a, mode, eps), _reference(b, mode, eps)
            torch.testing.assert_close(out, ref, atol=atol, rtol=atol)
            _backward(out, ref)
            for k, v in b.items():
                if v.grad is None:
                    assert a[k].grad is None, k
                    continue
                scale = max(1e-3, v.grad.abs().max().item())
                torch.testing.assert_close(a[k].grad, v.grad, atol=grad_rtol * scale,
                                           rtol=grad_rtol, msg=f'{shape} {mode} {k}')


# ---------------------------------------------------------------------------- CPU
def test_module_is_a_drop_in_nn_layernorm():
    ref = nn.LayerNorm(87, eps=1e-6)
    ours = LayerNorm(87, eps=1e-6, amp_output=True)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    ours.load_state_dict(ref.state_dict())
    assert isinstance(ours, nn.LayerNorm)   # optimizers' paramwise rules see a norm
    x = torch.randn(2, 3, 5, 87)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert ours(x).dtype == torch.bfloat16           # feeds matmuls
        assert LayerNorm(87)(x).dtype == torch.float32   # like nn.LayerNorm


def test_module_modulated_matches_the_composition():
    norm = LayerNorm(16)
    y, x, s = torch.randn(2, 3, 4, 16), torch.randn(2, 3, 4, 16), torch.rand(2, 16)
    torch.testing.assert_close(norm.modulated(y, x, s), norm(y * x * s[:, None, None]))


def test_module_add_and_norm_matches_the_composition():
    norm = LayerNorm(16)
    x, y, f = torch.randn(2, 3, 4, 16), torch.randn(2, 3, 4, 16), torch.tensor([0., 1.25])
    total, out = norm.add_and_norm(x, y, f)
    torch.testing.assert_close(total, x + y * f[:, None, None, None])
    torch.testing.assert_close(out, norm(total))
    total, out = norm.add_and_norm(x, y)
    torch.testing.assert_close(out, norm(x + y))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='48 channels'):
        LayerNorm(48)(torch.randn(2, 3, 3, 64))
    with pytest.raises(ValueError, match='last dimension only'):
        LayerNorm((4, 8))
    with pytest.raises(ValueError, match='scale \\(B, C\\)'):
        modulated_layer_norm(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.rand(2, 4))
    with pytest.raises(ValueError, match='one shape'):
        modulated_layer_norm(torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.rand(2, 8))
    with pytest.raises(ValueError, match='factor \\(B,\\)'):
        residual_layer_norm(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.rand(3))
    with pytest.raises(ValueError, match='one shape'):
        residual_layer_norm(torch.randn(2, 4, 8), torch.randn(2, 4, 7))


def test_pytorch_path_matches_reference():
    _check_against_reference('cpu', atol=1e-6, grad_rtol=1e-5)


# ---------------------------------------------------------------------------- GPU
@requires_triton_gpu
def test_kernels_match_reference_fp32():
    _check_against_reference('cuda', atol=1e-5, grad_rtol=1e-4)


@requires_triton_gpu
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_kernels_low_precision_in_and_out(dtype):
    shape, eps = (4, 28, 28, 348), 1e-5
    for modulated in (False, True):
        mode = MODES[modulated]
        t = _inputs(shape, 'cuda', dtype)
        out = _run(t, mode, eps)
        # type promotion as in the composition: scale is float32
        assert out.dtype == (torch.float32 if modulated else dtype)
        ref = _reference({k: v.detach().float() for k, v in t.items()}, mode, eps)
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
        # fp32 input, low-precision output (a norm feeding a matmul under autocast)
        t32 = _inputs(shape, 'cuda')
        out = _run(t32, mode, eps, out_dtype=dtype)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), _reference(t32, mode, eps),
                                   atol=3e-2, rtol=3e-2)
        out.float().square().mean().backward()
        for k in (('x', 'y', 'scale') if modulated else ('x', )) + ('weight', 'bias'):
            assert t32[k].grad is not None and torch.isfinite(t32[k].grad).all(), k


@requires_triton_gpu
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_residual_norm_low_precision_branch(dtype):
    # as in the blocks under autocast: float32 trunk, half-precision branch, the norm
    # writing the half-precision type; the sum stays float32, gradients in input dtypes
    shape, eps = (2, 50, 84, 348), 1e-6
    t = _inputs(shape, 'cuda')
    t['y'] = t['y'].detach().to(dtype).requires_grad_()
    total, out = _run(t, 'residual_factor', eps, out_dtype=dtype)
    assert total.dtype == torch.float32 and out.dtype == dtype
    ref_total, ref = _reference({k: v.detach() for k, v in t.items()}, 'residual_factor',
                                eps)
    torch.testing.assert_close(total, ref_total, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    (total.sum() + out.float().square().mean()).backward()
    assert t['x'].grad.dtype == torch.float32 and t['y'].grad.dtype == dtype
    # image 0 is dropped: no gradient reaches its branch
    assert t['y'].grad[0].abs().max() == 0 and t['y'].grad[1].abs().max() > 0


@requires_triton_gpu
def test_large_map_many_tiles_per_program():
    # more tiles than backward programs: per-program weight/bias partial sums accumulate
    shape, eps = (64, 56, 56, 64), 1e-6
    for mode in ('modulated', 'residual_factor'):
        a, b = _inputs(shape, 'cuda'), _inputs(shape, 'cuda')
        out, ref = _run(a, mode, eps), _reference(b, mode, eps)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        _backward(out, ref)
        for k in ('x', 'y', 'weight', 'bias') + (('scale', ) if mode == 'modulated' else ()):
            scale = b[k].grad.abs().max().item()
            torch.testing.assert_close(a[k].grad, b[k].grad, atol=1e-4 * scale, rtol=1e-3,
                                       msg=f'{mode} {k}')


@requires_triton_gpu
def test_fused_false_turns_the_kernel_off():
    t = _inputs((2, 3, 3, 64), 'cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        # PyTorch's LayerNorm under autocast: float32, as without our kernels
        assert layer_norm(t['x'], t['weight'], t['bias'], fused=False).dtype == torch.float32
        # and the module follows its execution policy
        norm = LayerNorm(64).cuda()
        with norm.execution.override(fused_kernels=False):
            assert norm(t['x']).dtype == torch.float32


# ------------------------------------------------------------------ interpreter
_INTERPRET_SCRIPT = '''
    import test_layer_norm as t
    t._check_against_reference('cpu', atol=1e-5, grad_rtol=1e-4)
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_kernels_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)
