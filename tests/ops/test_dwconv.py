"""The fused depthwise 3x3 convolution + activation (``mmgroupmamba.ops.dwconv``)
against the PyTorch composition (conv2d, then SiLU / GELU), forward and backward.

GPU tests skip without CUDA. The kernels' logic also runs on CPU through Triton's
interpreter (``TRITON_INTERPRET=1``) in a subprocess, on tiny shapes; that test skips
when Triton is not installed (or ``MMGM_SKIP_TRITON_INTERPRET=1``).

On a GPU machine:
    python -m pytest tests/ops/test_dwconv.py -q
"""
import pytest
import torch

from conftest import requires_triton_gpu, requires_triton_interpreter, run_in_triton_interpreter

# fp32 comparisons without TF32; launch settings restored after each test (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('_no_tf32', '_restore_tuning')


# ------------------------------------------------------------------- fused dwconv+act
@requires_triton_gpu
@pytest.mark.parametrize('shape,act', [((2, 56, 56, 64), 'silu'), ((3, 13, 17, 348), 'silu'),
                                       ((2, 1, 1, 448), 'silu'), ((2, 28, 28, 512), 'gelu'),
                                       ((1, 7, 7, 1792), 'gelu')])
@pytest.mark.parametrize('slide,prefetch', [(False, False), (True, False), (True, True)],
                         ids=['bwd-reload', 'bwd-slide', 'bwd-prefetch'])
def test_fused_dwconv_matches_pytorch(shape, act, slide, prefetch):
    from mmgroupmamba.ops.dwconv import _torch_impl, depthwise_conv3x3_act, set_tuning
    set_tuning(bwd_slide=slide, bwd_prefetch=prefetch)
    torch.manual_seed(0)
    C = shape[-1]
    x = torch.randn(*shape, device='cuda', requires_grad=True)
    w = torch.randn(C, 1, 3, 3, device='cuda', requires_grad=True)
    b = torch.randn(C, device='cuda', requires_grad=True)
    y, y_ref = depthwise_conv3x3_act(x, w, b, act), _torch_impl(x, w, b, act)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), g)
    for name, a, r in zip('xwb', grads, grads_ref):
        torch.testing.assert_close(a, r, atol=1e-4 * max(1., r.abs().max().item()),
                                   rtol=1e-4, msg=name)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        y16 = depthwise_conv3x3_act(x.detach().bfloat16(), w, b, act)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y_ref, atol=5e-2, rtol=5e-2)


# ------------------------------------------------------------------ Triton interpreter
_INTERPRET_SCRIPT = '''
    import torch
    torch.manual_seed(0)
    from mmgroupmamba.ops.dwconv import _torch_impl, depthwise_conv3x3_act, set_tuning
    for shape, act, slide, prefetch in [
            ((2, 5, 7, 20), 'silu', False, False), ((1, 3, 2, 70), 'gelu', False, False),
            ((2, 19, 7, 20), 'gelu', True, False), ((1, 5, 3, 70), 'silu', True, False),
            ((2, 9, 7, 20), 'gelu', True, True), ((1, 6, 3, 70), 'silu', True, True)]:
        set_tuning(bwd_slide=slide, bwd_prefetch=prefetch, bwd_rows=4)
        x = torch.randn(*shape, requires_grad=True)
        w = torch.randn(shape[-1], 1, 3, 3, requires_grad=True)
        b = torch.randn(shape[-1], requires_grad=True)
        y, y_ref = depthwise_conv3x3_act(x, w, b, act), _torch_impl(x, w, b, act)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(y)
        for a, r in zip(torch.autograd.grad(y, (x, w, b), g),
                        torch.autograd.grad(y_ref, (x, w, b), g)):
            torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_dwconv_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)
