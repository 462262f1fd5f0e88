"""The grouped execution of the GroupMamba layer against the per-group reference (CPU)."""
import pytest
import torch

from conftest import MICRO_ARCH, released_small_classifier
from mmgroupmamba.models import GroupMamba
from mmgroupmamba.models.layers import ModulatedGroupMamba
from mmgroupmamba.execution import ExecutionPolicy, configure_execution
from mmgroupmamba.models.layers.group_mamba_layer import grouped_linear
from mmgroupmamba.ops import (arrange_groups, grouped_selective_scan,
                              grouped_selective_scan_torch, restore_groups)

SMALL_ARCH = MICRO_ARCH


def _perturbed_layer(dim, d_state=1, seed=0):
    torch.manual_seed(seed)
    layer = ModulatedGroupMamba(dim, d_state=d_state)
    with torch.no_grad():  # no default value (ones, zeros) may hide a wrong mapping
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _run(layer, x, impl, grad_out):
    layer.execution.mixer = impl
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(grad_out)
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize('dim,hw,d_state', [
    (348, (5, 7), 1),   # 87 channels per group, as stage 3 of T/S, non-square map
    (64, (8, 8), 1),
    (128, (1, 1), 1),   # the class block: a sequence of length 1
    (48, (3, 4), 2),    # any state size on the PyTorch path
])
def test_grouped_matches_reference_forward_and_backward(dim, hw, d_state):
    layer = _perturbed_layer(dim, d_state)
    x = torch.randn(2, *hw, dim)
    grad_out = torch.randn(2, *hw, dim)
    y_ref, gx_ref, gp_ref = _run(layer, x, 'reference', grad_out)
    y, gx, gp = _run(layer, x, 'grouped', grad_out)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=5e-5, rtol=1e-4)
    for name, g in gp_ref.items():
        # skip_scale's gradient is one sum over every element (B*H*W*C terms of order 1
        # that cancel to ~1e-2): fp32 rounding alone moves it by ~1e-4 in either path,
        # so it gets an absolute tolerance here and an exact check in float64 below.
        atol = 5e-4 if name == 'skip_scale' else 1e-4 * max(1., g.abs().max().item())
        torch.testing.assert_close(gp[name], g, atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize('dim,hw,d_state', [(348, (5, 7), 1), (48, (3, 4), 2)])
def test_grouped_matches_reference_in_float64(dim, hw, d_state):
    """In float64 skip_scale's gradient (the one sum over everything) agrees tightly.

    The scans still accumulate in fp32 inside, so outputs differ by ~1e-6, not 1e-12.
    """
    layer = _perturbed_layer(dim, d_state).double()
    x = torch.randn(2, *hw, dim, dtype=torch.float64)
    grad_out = torch.randn(2, *hw, dim, dtype=torch.float64)
    y_ref, gx_ref, gp_ref = _run(layer, x, 'reference', grad_out)
    y, gx, gp = _run(layer, x, 'grouped', grad_out)
    torch.testing.assert_close(y, y_ref, atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(gp['skip_scale'], gp_ref['skip_scale'], atol=1e-6, rtol=1e-5)


def test_state_dict_keys_are_unchanged_and_shared():
    layer = _perturbed_layer(64)
    keys = set(layer.state_dict())
    assert 'groups.2.A_log' in keys and 'groups.0.in_proj.weight' in keys
    assert 'skip_scale' in keys and not any('stack' in k or 'grouped' in k for k in keys)
    other = ModulatedGroupMamba(64, execution=ExecutionPolicy(mixer='reference'))
    assert set(other.state_dict()) == keys
    other.load_state_dict(layer.state_dict())
    x = torch.randn(1, 4, 6, 64)
    layer.execution.mixer = 'grouped'
    with torch.no_grad():
        torch.testing.assert_close(layer(x), other(x), atol=2e-5, rtol=1e-5)


def test_scan_backends_of_the_grouped_path_agree():
    layer = _perturbed_layer(96)
    x = torch.randn(2, 6, 5, 96)
    outs = []
    for backend in ('pytorch', 'reference'):
        layer.execution.scan_backend = backend
        assert all(op.execution.scan_backend == backend for op in layer.groups)
        with torch.no_grad():
            outs.append(layer.forward_grouped(x))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_grouped_linear_modes_agree():
    x = torch.randn(3, 5, 4 * 20, requires_grad=True)
    w = torch.randn(4, 30, 20, requires_grad=True)
    ys = []
    for mode in ('blockdiag', 'bmm'):
        y = grouped_linear(x, w, mode)
        gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
        ys.append((y, gx, gw))
        assert y.shape == (3, 5, 120)
    for a, b in zip(*ys):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # each group is its own linear
    torch.testing.assert_close(ys[0][0][..., 30:60], x[..., 20:40] @ w[1].t())
    with pytest.raises(ValueError, match='grouped linear mode'):
        grouped_linear(x, w, 'dense')


def test_arrange_and_restore_are_inverse_and_follow_directions():
    x = torch.arange(2 * 3 * 4 * 8.).view(2, 3, 4, 8)
    dirs = ('row', 'col', 'row_rev', 'col_rev')
    seq = arrange_groups(x, dirs)
    assert seq.shape == (2, 8, 12)
    torch.testing.assert_close(restore_groups(seq, dirs, (3, 4)), x)
    # group 1 (channels 2-3) is read column-major, group 2 row-major reversed
    torch.testing.assert_close(seq[:, 2:4], x[..., 2:4].permute(0, 3, 2, 1).flatten(2))
    torch.testing.assert_close(seq[:, 4:6], x[..., 4:6].permute(0, 3, 1, 2).flatten(2).flip(-1))


def test_grouped_scan_errors_and_dispatch():
    u = torch.randn(1, 2, 3, 8)
    args = dict(xdbl=torch.randn(1, 2, 3, 4 + 8), z=None, dt_weight=torch.randn(4, 2, 1),
                dt_bias=torch.zeros(8), A=-torch.ones(8, 1), D=torch.ones(8))
    ref = grouped_selective_scan_torch(u, **args)
    torch.testing.assert_close(grouped_selective_scan(u, **args, backend='auto'), ref)
    with pytest.raises(RuntimeError, match='cannot run on cpu'):
        grouped_selective_scan(u, **args, backend='triton')
    with pytest.raises(ValueError, match='Unknown execution mixer'):
        ModulatedGroupMamba(16, execution=ExecutionPolicy(mixer='fast'))
    with pytest.raises(ValueError, match='Unknown execution mixer'):
        ModulatedGroupMamba(16).execution.mixer = 'fast'


def test_jit_trace_counts_the_released_operators():
    # FLOP counting traces the model; the grouped path would count block-diagonal matmuls
    from mmgroupmamba.analysis import count_flops
    layer = _perturbed_layer(48)
    x = torch.randn(1, 6, 5, 48)
    flops = {}
    for impl in ('reference', 'auto'):
        layer.execution.mixer = impl
        flops[impl] = count_flops(layer, x)
    assert flops['auto'] == flops['reference'] > 0


def test_backbone_default_is_grouped_and_matches_reference_with_grads():
    torch.manual_seed(0)
    model = GroupMamba(dict(SMALL_ARCH, embed_dims=[16, 32, 116, 64]), drop_path_rate=0.)
    assert all(m.execution.mixer == 'auto' for m in model.modules()
               if isinstance(m, ModulatedGroupMamba))
    x = torch.randn(2, 3, 48, 40)
    results = {}
    for impl in ('reference', 'grouped'):
        configure_execution(model, mixer=impl)
        model.zero_grad()
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results[impl] = ([o.detach() for o in outs],
                         {n: p.grad.clone() for n, p in model.named_parameters()})
    for a, b in zip(results['grouped'][0], results['reference'][0]):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)
    for name, g in results['reference'][1].items():
        torch.testing.assert_close(results['grouped'][1][name], g,
                                   atol=1e-4 * max(1., g.abs().max().item()), rtol=1e-3,
                                   msg=name)


def test_with_checkpointing_and_mixer_checkpointing():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for with_cp, mixer_cp, ffn_cp in ((False, False, False), (True, False, False),
                                      (False, True, False), (False, False, True)):
        torch.manual_seed(1)
        model = GroupMamba(SMALL_ARCH, with_cp=with_cp, execution=dict(ffn_cp=ffn_cp),
                           drop_path_rate=0.)
        configure_execution(model, mixer='grouped', mixer_cp=mixer_cp)
        sum(o.sum() for o in model(x)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], atol=1e-5, rtol=1e-4)


def test_autocast_bf16_is_finite_and_close():
    layer = _perturbed_layer(96)
    x = torch.randn(2, 7, 5, 96)
    with torch.no_grad():
        y32 = layer(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y16 = layer(x)
    assert torch.isfinite(y16).all()
    assert (y16.float() - y32).abs().max() < 0.05 * y32.abs().max()


def test_released_fixture_logits_on_grouped_path(reference):
    model = released_small_classifier(reference)
    exp = reference['expected']
    for impl in ('grouped', 'reference'):
        configure_execution(model, mixer=impl)
        with torch.no_grad():
            logits = model(exp['input'])
        torch.testing.assert_close(logits, exp['logits_eval'], atol=1e-4, rtol=0, msg=impl)


def test_inference_parameter_cache_follows_updates():
    layer = _perturbed_layer(32).eval()
    x = torch.randn(1, 4, 4, 32)
    with torch.no_grad():
        y1 = layer.forward_grouped(x)
        torch.testing.assert_close(layer.forward_grouped(x), y1)
        layer.groups[1].A_log.add_(0.5)       # an optimizer step / load_state_dict
        layer.groups[3].in_proj.weight.mul_(1.1)
        y2 = layer.forward_grouped(x)
        torch.testing.assert_close(y2, layer.forward_reference(x), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize('blockdiag', [True, False])
def test_packed_group_params_equal_the_arrangement_with_grads(blockdiag):
    """One gather (and one in the backward) gives what stack/cat/block_diag give."""
    from mmgroupmamba.models.layers.grouped_params import (SOURCES, arrange,
                                                           pack_group_params,
                                                           source_params)
    layer = _perturbed_layer(348, d_state=2)
    ops = layer.groups
    params = source_params(ops)
    assert len(params) == len(SOURCES) * len(ops)
    assert {id(p) for p in params} == {id(p) for p in ops.parameters()}
    packed = pack_group_params(params, ops, blockdiag, {})
    G = len(ops)
    plain = arrange({name: params[i * G:(i + 1) * G] for i, (name, _) in enumerate(SOURCES)},
                    ops[0].dim, ops[0].dt_rank, ops[0].d_state, blockdiag)
    assert packed.keys() == plain.keys()
    weights = {k: torch.randn_like(v) for k, v in plain.items()}
    grads = []
    for out in (packed, plain):
        loss = sum((out[k] * weights[k]).sum() for k in out)
        grads.append(torch.autograd.grad(loss, params))
    for k in plain:
        torch.testing.assert_close(packed[k], plain[k], rtol=0, atol=0, msg=k)
    for g_packed, g_plain in zip(*grads):
        torch.testing.assert_close(g_packed, g_plain, rtol=0, atol=0)
    # a gradient that reaches only some packed tensors (the rest count as zero)
    g = torch.autograd.grad(packed['D'].sum(), params, allow_unused=True)
    d_grads = g[7 * G:8 * G]  # SOURCES[7] is D
    assert all(torch.equal(x, torch.ones_like(x)) for x in d_grads)
    assert all(x.abs().sum() == 0 for i, x in enumerate(g) if not 7 * G <= i < 8 * G)
