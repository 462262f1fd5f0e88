"""``ResidualDropPath``: ``x + DropPath(y)`` in one pass, against mmcv's DropPath."""
import pytest
import torch
from mmcv.cnn.bricks.drop import drop_path

from mmgroupmamba.models.layers import GroupMambaBlock, ResidualDropPath


def test_matches_mmcv_drop_path_then_add_with_its_gradients():
    x = torch.randn(16, 5, 6, 8, requires_grad=True)
    y = torch.randn(16, 5, 6, 8, requires_grad=True)
    layer = ResidualDropPath(0.3).train()
    torch.manual_seed(3)
    out = layer(x, y)
    torch.manual_seed(3)  # the same uniform draw per sample: the same masks as mmcv's
    ref = x + drop_path(y, 0.3, training=True)
    torch.testing.assert_close(out, ref)
    kept = (out - x).flatten(1).abs().amax(1) > 0
    assert 0 < int(kept.sum()) < 16  # some samples dropped, some kept
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, y), g),
                         torch.autograd.grad(ref, (x, y), g)):
        torch.testing.assert_close(got, want)


def test_plain_add_outside_training_and_without_drop():
    x, y = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    assert torch.equal(ResidualDropPath(0.5).eval()(x, y), x + y)
    assert torch.equal(ResidualDropPath(0.).train()(x, y), x + y)
    with pytest.raises(ValueError, match='drop_prob'):
        ResidualDropPath(1.)


def test_mixed_precision_branch_adds_in_the_trunk_dtype():
    x = torch.randn(4, 2, 2, 8)
    y = torch.randn(4, 2, 2, 8).bfloat16()
    layer = ResidualDropPath(0.2).train()
    assert layer(x, y).dtype == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert layer(x, y).dtype == torch.float32
    assert layer(x.bfloat16(), y).dtype == torch.bfloat16
    block = GroupMambaBlock(16, 2., drop_path=0.1)
    assert block.drop_path.drop_prob == 0.1
