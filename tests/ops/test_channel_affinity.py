"""``channel_affinity``: the Channel Affinity Modulation's linears and activations in one
kernel (inference on CUDA), against the PyTorch composition: on CPU through Triton's
interpreter (a subprocess; skips without Triton), on the GPU at the layers' widths."""
import pytest
import torch

from conftest import requires_triton_gpu, requires_triton_interpreter, run_in_triton_interpreter
from mmgroupmamba.models.layers import ChannelAffinity
from mmgroupmamba.ops import channel_affinity, channel_affinity_ref

# (batch, C): the widths of GroupMamba-T/S/B's stages (hidden = C // 16) and a narrow one
SHAPES = [(2, 64), (3, 348), (2, 448), (1, 96), (2, 16)]


def _params(B, C, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = max(C // 16, 1)
    t = [torch.randn(B, C, generator=g), torch.randn(hidden, C, generator=g) / C ** 0.5,
         torch.randn(hidden, generator=g), torch.randn(C, hidden, generator=g) / hidden ** 0.5,
         torch.randn(C, generator=g), torch.tensor([0.7])]
    return [v.to(device) for v in t]


def _check_kernel(device, atol):
    for B, C in SHAPES:
        params = _params(B, C, device)
        with torch.no_grad():
            for scale in (params[5], None):
                for dtype in (torch.float32, torch.bfloat16):
                    mean = params[0].to(dtype)
                    out = channel_affinity(mean, *params[1:5], scale)
                    ref = channel_affinity_ref(mean.float(), *params[1:5], scale)
                    assert out.dtype == torch.float32
                    torch.testing.assert_close(out, ref, atol=atol, rtol=atol,
                                               msg=f'{B}x{C} {dtype} scale {scale}')


def test_module_is_the_composition_and_keeps_gradients():
    layer = ChannelAffinity(64)
    x = torch.randn(2, 5, 6, 64, requires_grad=True)
    scale = torch.tensor([1.5], requires_grad=True)
    out = layer(x, scale)
    mean = x.mean((1, 2))
    ref = scale * torch.sigmoid(layer.fc2(torch.relu(layer.fc1(mean))))
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad is not None and scale.grad is not None and layer.fc1.weight.grad is not None


def test_bad_shapes_are_named():
    mean, w1, b1, w2, b2, _ = _params(2, 64)
    with pytest.raises(ValueError, match='w2 \\(C, hidden\\)'):
        channel_affinity(mean, w1, b1, w2.t(), b2)
    with pytest.raises(ValueError, match='mean \\(B, C\\)'):
        channel_affinity(mean[:, :32], w1, b1, w2, b2)


@requires_triton_gpu
def test_kernel_matches_composition_on_gpu():
    _check_kernel('cuda', 1e-5)


@requires_triton_gpu
def test_training_takes_the_composition_on_gpu():
    mean, w1, b1, w2, b2, scale = _params(2, 348, 'cuda')
    w1.requires_grad_()
    out = channel_affinity(mean, w1, b1, w2, b2, scale)
    out.sum().backward()
    assert w1.grad is not None and torch.isfinite(w1.grad).all()


_INTERPRET_SCRIPT = '''
    import test_channel_affinity as t
    t._check_kernel('cpu', 1e-5)
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_kernel_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)
