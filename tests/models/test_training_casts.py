"""An eager autocast training step casts each layer's matmul parameters together
(``mmgroupmamba.utils.amp.training_casts``): the same step as autocast's cast per use,
in fewer launches (CPU)."""
import pytest
import torch

from tools_import import load_tool
from mmgroupmamba.models import GroupMamba
from mmgroupmamba.models.layers import ffn, group_mamba_layer
from mmgroupmamba.utils.amp import cast_together, training_casts


def test_cast_together_equals_casting_one_by_one():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True),
              torch.randn(2, 2, 2, requires_grad=True)]
    cast = cast_together(params, torch.bfloat16)
    ref = [p.to(torch.bfloat16) for p in params]
    for c, r in zip(cast, ref):
        assert c.dtype == torch.bfloat16 and c.shape == r.shape and torch.equal(c, r)
    # one buffer: the outputs are views of it
    assert len({c.untyped_storage().data_ptr() for c in cast}) == 1
    grads = [torch.randn_like(r) for r in ref]
    # one output unused: its gradient is zero, as for the per-tensor casts
    got = torch.autograd.grad(cast[:2], params, grads[:2], allow_unused=True)
    want = torch.autograd.grad(ref[:2], params, grads[:2], allow_unused=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].dtype == torch.float32 and not got[2].any() and want[2] is None

    with pytest.raises(ValueError, match='one dtype'):
        cast_together([params[0], params[1].double()], torch.bfloat16)


def test_training_casts_only_in_eager_autocast_training():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(2, 4)
    assert training_casts(x, [w]) is None                       # no autocast
    with torch.autocast('cpu', dtype=torch.bfloat16):
        cast = training_casts(x, [w])
        assert cast is not None and cast[0].dtype == torch.bfloat16
        with torch.no_grad():                                   # inference caches casts
            assert training_casts(x, [w]) is None
        assert training_casts(x, [w.detach().bfloat16()]) is None    # nothing to cast
        assert training_casts(x, [w, w.detach().double()]) is None   # mixed: autocast's


def _train_step(model, x):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
    sum(o.float().square().mean() for o in outs).backward()
    return ([o.detach() for o in outs],
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize('linear_mode', ['auto', 'bmm'])
def test_backbone_step_unchanged_with_fewer_casts(monkeypatch, linear_mode):
    counter = load_tool('analysis', 'count_launches.py').LaunchCounter
    torch.manual_seed(0)
    model = GroupMamba('demo', out_indices=(0, 1, 2, 3), drop_path_rate=0.,
                       execution=dict(linear_mode=linear_mode)).train()
    x = torch.randn(2, 3, 64, 64)
    outs, grads = _train_step(model, x)
    with counter() as together:
        _train_step(model, x)

    for module in (ffn, group_mamba_layer):   # autocast casting each use, as before
        monkeypatch.setattr(module, 'training_casts', lambda x, params: None)
    ref_outs, ref_grads = _train_step(model, x)
    with counter() as one_by_one:
        _train_step(model, x)

    # the same numbers to the last bit: the same roundings, only fewer launches
    assert all(torch.equal(a, b) for a, b in zip(outs, ref_outs))
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.parameters()))
    assert all(torch.equal(grads[k], ref_grads[k]) for k in grads)
    # per block: the mixer's 3 (bmm: 4) matmul weights, its proj, the affinity's and the
    # FFN's linears were cast one by one, forward and backward; now 2 casts each way
    blocks = sum(model.arch_settings['depths'])
    casts = 9 + 4 + (linear_mode == 'bmm')
    assert one_by_one.aten['_to_copy'] - together.aten['_to_copy'] == 2 * casts * blocks
    assert together.aten['cat'] - one_by_one.aten['cat'] == 4 * blocks
    assert together.total < one_by_one.total
