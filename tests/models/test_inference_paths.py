"""Inference shortcuts that save host time: they must compute what the plain path does."""
import pytest
import torch
import torch.nn.functional as F

from conftest import (HAS_TRITON, requires_triton_gpu, requires_triton_interpreter,
                      run_in_triton_interpreter)
from mmgroupmamba.models.layers import ConvFFN, Linear
from mmgroupmamba.ops import linear, linear_tf32x3
from mmgroupmamba.ops.dispatch import apply_function
from mmgroupmamba.ops.tf32x3 import tf32x3_applies


def _autocast_linear(x, fc):
    # a fresh autocast block each time: autocast's own cast cache ignores in-place updates
    with torch.autocast('cpu', dtype=torch.bfloat16):
        return F.linear(x, fc.weight, fc.bias)


def test_linear_reuses_autocast_weights_until_they_change():
    torch.manual_seed(0)
    fc = Linear(16, 8)
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        y1 = fc(x)
        copies = fc._cast_cache._value
        assert y1.dtype == torch.bfloat16 and copies[0].dtype == torch.bfloat16
        fc(x)
        assert fc._cast_cache._value is copies
    torch.testing.assert_close(y1, _autocast_linear(x, fc), rtol=0, atol=0)
    with torch.no_grad():
        fc.weight.mul_(2.)                         # an optimizer step / EMA update
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y2 = fc(x)
    torch.testing.assert_close(y2, _autocast_linear(x, fc), rtol=0, atol=0)
    assert not torch.equal(y1, y2)
    # while autograd records, nothing is cached: gradients reach the parameters
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fc(x).float().sum().backward()
    assert fc.weight.grad is not None and fc.bias.grad is not None
    # fp32 outside autocast, and copies of the module leave the cache out
    torch.testing.assert_close(fc(x), F.linear(x, fc.weight, fc.bias))
    assert '_cast_cache' not in fc.__getstate__()
    assert isinstance(Linear(4, 4, bias=False)(torch.randn(2, 4)), torch.Tensor)


class _Scale(torch.autograd.Function):
    """y = x * s, with what a fused kernel's Function does with its ctx."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, x, s):
        ctx.save_for_backward(x)
        ctx.flags = ctx.needs_input_grad
        return x * s

    @staticmethod
    def backward(ctx, grad):
        return grad * 2., None


def test_apply_function_skips_autograd_only_without_a_graph():
    x = torch.randn(5, requires_grad=True)
    y = apply_function(_Scale, x, 2.)
    assert y.grad_fn is not None            # the Function's own backward is recorded
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.))
    with torch.no_grad():
        y = apply_function(_Scale, x, 3.)
    assert y.grad_fn is None
    torch.testing.assert_close(y, x.detach() * 3.)
    with torch.inference_mode():
        torch.testing.assert_close(apply_function(_Scale, x.detach(), 3.), x.detach() * 3.)


# ------------------------------------------------------------ 3xTF32 float32 linears
# (M, N, K): K not a multiple of the tile (348 = stage-3 width), N narrower than a tile
LINEAR_SHAPES = [(37, 24, 20), (50, 64, 48), (33, 40, 17)]


def _check_linear_tf32x3(device, shapes, precision='tf32x3', tol=None):
    torch.manual_seed(0)
    for M, N, K in shapes:
        for with_bias in (True, False):
            x = torch.randn(M, K, device=device)
            w = torch.randn(N, K, device=device) / K**0.5
            b = torch.randn(N, device=device) if with_bias else None
            exact = F.linear(x.double(), w.double(), None if b is None else b.double())
            err = (linear_tf32x3(x, w, b, precision) - exact).abs().max().item()
            sgemm = (F.linear(x, w, b) - exact).abs().max().item()
            # 3xTF32 is float32-accurate: within a few times cuBLAS's float32 error
            assert err <= (tol or max(4 * sgemm, 1e-6)), (M, N, K, err, sgemm)


_INTERPRET_SCRIPT = '''
    import test_inference_paths as t
    t._check_linear_tf32x3('cpu', t.LINEAR_SHAPES)
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_linear_tf32x3_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)


@pytest.mark.skipif(not HAS_TRITON, reason='needs Triton')
def test_linear_tf32x3_tries_no_tile_wider_than_needed():
    from mmgroupmamba.ops import tf32x3
    configs = [triton_config(n) for n in (64, 128, 256)]
    assert [c.kwargs['BLOCK_N'] for c in tf32x3._prune_configs(configs, {'N': 12})] == [64]
    assert len(tf32x3._prune_configs(configs, {'N': 129})) == 3
    # the launcher passes its arguments by name: the autotuner hands them over as kwargs
    assert [c.kwargs['BLOCK_N'] for c in tf32x3._prune_configs(configs, {}, N=12)] == [64]


def triton_config(block_n):
    import triton
    return triton.Config(dict(BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=32))


def test_linear_tf32x3_errors_and_fallback():
    with pytest.raises(ValueError, match='float32'):
        linear_tf32x3(torch.randn(4, 8).half(), torch.randn(3, 8).half())
    with pytest.raises(ValueError, match='8 input features'):
        linear_tf32x3(torch.randn(4, 5), torch.randn(3, 8))
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    torch.testing.assert_close(linear(x, w), F.linear(x, w))   # CPU: PyTorch's


@requires_triton_gpu
def test_linear_tf32x3_is_float32_accurate_on_gpu():
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # the comparison is cuBLAS's float32
    try:
        shapes = LINEAR_SHAPES + [(4099, 1392, 348), (8192, 64, 512), (5000, 512, 64),
                                  (4096, 12, 64)]
        _check_linear_tf32x3('cuda', shapes)
        # the check can fail: one TF32 product is ~1e3 times less accurate
        with pytest.raises(AssertionError):
            _check_linear_tf32x3('cuda', shapes[-4:-1], precision='tf32')
        x, w = torch.randn(8192, 64, device='cuda'), torch.randn(32, 64, device='cuda')
        with torch.no_grad():
            assert tf32x3_applies(x, w)
            torch.backends.cuda.matmul.allow_tf32 = True   # TF32 asked for: cuBLAS's
            assert not tf32x3_applies(x, w)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


@requires_triton_gpu
def test_ffn_float32_inference_takes_tf32x3_and_matches():
    torch.manual_seed(0)
    ffn = ConvFFN(64, 256).cuda().eval()
    x = torch.randn(2, 56, 56, 64, device='cuda')             # 6272 rows >= MIN_ROWS
    with torch.no_grad():
        fast = ffn(x)
        with ffn.execution.override(fused_kernels=False):
            plain = ffn(x)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
