"""Inference shortcuts that save host time: they must compute what the plain path does."""
import torch
import torch.nn.functional as F

from mmgroupmamba.models.layers import Linear
from mmgroupmamba.ops.dispatch import apply_function


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
        copies = fc._cast_cache.get((fc.weight, fc.bias), torch.bfloat16)
        assert y1.dtype == torch.bfloat16
        fc(x)
        assert fc._cast_cache.get((fc.weight, fc.bias), torch.bfloat16) is copies
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
