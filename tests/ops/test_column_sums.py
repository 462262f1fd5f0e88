"""Token sums as GEMVs (``mmgroupmamba.ops.column_sums``) against the PyTorch expressions
they replace: ``x.sum(0)``, ``F.linear``'s gradients, ``x.mean((1, 2))``.

The CPU tests run the same code (cuBLAS's GEMV is CPU BLAS there); the GPU tests check
the dispatch (``ops.linear`` in training, the channel affinity's mean) under autocast.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import requires_cuda
from mmgroupmamba.ops import column_sums


@pytest.mark.parametrize('shape', [(1, 5), (1000, 3), (2049, 70)])
def test_column_sum_is_the_sum_over_rows(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    total = column_sums.column_sum(x)
    assert total.shape == (shape[1], )
    torch.testing.assert_close(total, x.sum(0))
    with pytest.raises(ValueError, match='2-D'):
        column_sums.column_sum(x[None])


def test_ones_vectors_are_grown_and_never_dropped():
    """A captured CUDA graph keeps the address of the vector it read: growing the cache
    must not free it."""
    like = torch.zeros(1, dtype=torch.float16)
    first = column_sums._ones(3000, like)
    second = column_sums._ones(10000, like)
    assert second.numel() == 10000 and bool((second == 1).all())
    made = column_sums._ONES[(like.device, like.dtype)]
    assert any(v.data_ptr() == first.data_ptr() for v in made)
    assert column_sums._ones(5, like).data_ptr() == made[-1].data_ptr()


@pytest.mark.parametrize('lead', [(7, ), (2, 3, 5)])
def test_linear_matches_f_linear_with_its_gradients(lead):
    x = torch.randn(*lead, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y, y_ref = column_sums.linear(x, w, b), F.linear(x, w, b)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (x, w, b), g),
                        torch.autograd.grad(y_ref, (x, w, b), g)):
        torch.testing.assert_close(got, ref)
    # only the inputs that need gradients get them
    y = column_sums.linear(x.detach(), w, b)
    dw, db = torch.autograd.grad(y.sum(), (w, b))
    torch.testing.assert_close(db, torch.full_like(db, x[..., 0].numel()))
    with pytest.raises(ValueError, match='one dtype'):
        column_sums.linear(x, w.float(), b)


def test_token_mean_gemv_and_its_gradient():
    """The GEMV function itself (on CPU in bf16: CPU maps take PyTorch's mean)."""
    x = torch.randn(2, 5, 7, 12).bfloat16().requires_grad_()
    mean = column_sums._TokenMeanFn.apply(x)
    ref = x.float().mean(dim=(1, 2))
    torch.testing.assert_close(mean.float(), ref, atol=2e-2, rtol=2e-2)
    g = torch.randn(2, 12).bfloat16()
    (dx, ) = torch.autograd.grad(mean, x, g)
    (dx_ref, ) = torch.autograd.grad(x.mean(dim=(1, 2)), x, g)
    torch.testing.assert_close(dx.float(), dx_ref.float(), atol=1e-4, rtol=1e-2)
    # float32 and CPU maps: PyTorch's mean, exactly
    x32 = torch.randn(2, 5, 7, 12)
    torch.testing.assert_close(column_sums.token_mean(x32), x32.mean(dim=(1, 2)),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match=r'\(B, H, W, C\)'):
        column_sums.token_mean(x32[0])


@requires_cuda
def test_training_linear_and_mean_under_autocast_on_gpu():
    from mmgroupmamba.models.layers import Linear
    from mmgroupmamba.models.layers.group_mamba_layer import ChannelAffinity
    torch.manual_seed(0)
    layer = Linear(64, 512).cuda()
    x = torch.randn(2, 40, 48, 64, device='cuda', requires_grad=True)
    g = torch.randn(2, 40, 48, 512, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        y = layer(x)
        y_ref = F.linear(x, layer.weight, layer.bias)
    assert y.grad_fn is not None and 'LinearFn' in type(y.grad_fn).__name__
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    got = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
    ref = torch.autograd.grad(y_ref, (x, layer.weight, layer.bias), g)
    for name, a, r in zip(('x', 'weight', 'bias'), got, ref):
        assert a.dtype == r.dtype, name
        torch.testing.assert_close(a, r, atol=2e-2 * r.abs().max().item(), rtol=2e-2,
                                   msg=name)
    cam = ChannelAffinity(64).cuda()
    xb = x.detach().bfloat16().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        a = cam(xb)
    torch.testing.assert_close(column_sums.token_mean(xb).float(),
                               xb.float().mean(dim=(1, 2)), atol=1e-2, rtol=1e-2)
    (dx, ) = torch.autograd.grad(a.float().sum(), xb)
    cam.execution.update(fused_kernels=False)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        a_ref = cam(xb)
    (dx_ref, ) = torch.autograd.grad(a_ref.float().sum(), xb)
    torch.testing.assert_close(a.float(), a_ref.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(dx.float(), dx_ref.float(), atol=1e-4, rtol=5e-2)
