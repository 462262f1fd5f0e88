"""The whole model on the Triton path against the reference execution: the released
fixture's logits (fp32 and fp16 autocast), a training step (outputs and gradients, fp32
and bf16 autocast), and the ``auto`` scan backend on CUDA. GPU only.

On a GPU machine:
    python -m pytest tests/models/test_triton_paths.py -q
"""
import pytest
import torch

from conftest import HAS_TRITON, released_small_classifier, requires_cuda, requires_triton_gpu

# fp32 comparisons without TF32; launch settings restored after each test (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('_no_tf32', '_restore_tuning')


# ------------------------------------------------------------------------ whole model
@requires_triton_gpu
def test_released_fixture_logits_on_triton_path(reference):
    from mmgroupmamba.execution import configure_execution
    model = released_small_classifier(reference, 'cuda')
    configure_execution(model, mixer='grouped', scan_backend='triton')
    exp = reference['expected']
    x, expected = exp['input'].cuda(), exp['logits_eval'].cuda()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=0)
        configure_execution(model, mixer='reference', scan_backend='pytorch')
        with torch.autocast('cuda', dtype=torch.float16):
            ref_amp = model(x).float()
        configure_execution(model, mixer='grouped', scan_backend='triton')
        with torch.autocast('cuda', dtype=torch.float16):
            amp = model(x).float()
    assert torch.isfinite(amp).all()
    err, ref_err = (amp - expected).abs().max().item(), (ref_amp - expected).abs().max().item()
    print(f'fp16 autocast: max |logit error| triton {err:.2e}, reference path {ref_err:.2e}')
    # fp16 rounding of the matmuls' weights and inputs (stem, FFN, heads, not the scan)
    # sets the floor: fp16 weights alone move these logits by more than 1e-3
    # (test_official_equivalence); the reference execution is as far off, ours must be
    # within 1.5x of it.
    assert err <= max(1e-3, 1.5 * ref_err)
    torch.testing.assert_close(amp, ref_amp, atol=max(1e-3, 2 * ref_err), rtol=0)


@requires_triton_gpu
@pytest.mark.parametrize('amp', [False, True])
def test_model_training_step_triton_vs_reference(amp):
    from mmgroupmamba.models import GroupMamba
    from mmgroupmamba.execution import configure_execution
    torch.manual_seed(0)
    model = GroupMamba(dict(stem_channels=16, embed_dims=[32, 64, 348, 128],
                            depths=[1, 2, 2, 1], mlp_ratios=[2, 2, 2, 2]),
                       drop_path_rate=0.).cuda()
    x = torch.randn(3, 3, 96, 80, device='cuda')
    results = {}
    for impl, backend in (('reference', 'pytorch'), ('grouped', 'triton')):
        configure_execution(model, mixer=impl, scan_backend=backend)
        model.zero_grad()
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
            outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
        loss.backward()
        results[impl] = ([o.float() for o in outs],
                         {n: p.grad.clone() for n, p in model.named_parameters()})
    tol = 5e-2 if amp else 1e-4
    for a, b in zip(results['grouped'][0], results['reference'][0]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=tol * max(1., b.abs().max().item()), rtol=tol)
    for name, g in results['reference'][1].items():
        got = results['grouped'][1][name]
        assert torch.isfinite(got).all(), name
        if not amp:
            torch.testing.assert_close(got, g, atol=1e-3 * max(1e-2, g.abs().max().item()),
                                       rtol=1e-3, msg=name)


@requires_cuda
def test_auto_backend_prefers_triton_on_cuda():
    from mmgroupmamba.ops import resolve_backend
    if HAS_TRITON:
        assert resolve_backend('auto', 'cuda') == 'triton'
