"""The scan directions (``mmgroupmamba.ops.directions``): names, kernel codes, token order."""
import pytest
import torch

from mmgroupmamba.ops.directions import (DIRECTION_CODES, SCAN_DIRECTIONS, check_direction,
                                         direction_codes, flatten_channels_last,
                                         flatten_in_direction, unflatten_channels_last,
                                         unflatten_from_direction)

# Visiting order on a 2 x 3 map whose pixel (h, w) holds h * 3 + w:
#   0 1 2
#   3 4 5
EXPECTED_ORDER = {
    'row': [0, 1, 2, 3, 4, 5],
    'col': [0, 3, 1, 4, 2, 5],
    'row_rev': [5, 4, 3, 2, 1, 0],
    'col_rev': [5, 2, 4, 1, 3, 0],
}


def test_directions_and_codes():
    assert SCAN_DIRECTIONS == ('row', 'col', 'row_rev', 'col_rev')
    # the codes the Triton kernel's _token_index understands
    assert DIRECTION_CODES == {'row': 0, 'col': 1, 'row_rev': 2, 'col_rev': 3}
    assert direction_codes(SCAN_DIRECTIONS) == [0, 1, 2, 3]
    assert direction_codes(['col_rev', 'row', 2, torch.tensor(1)]) == [3, 0, 2, 1]
    assert direction_codes(()) == []


def test_unknown_directions_raise():
    with pytest.raises(ValueError, match=r"'diag'.*\('row', 'col', 'row_rev', 'col_rev'\)"):
        direction_codes(['row', 'diag'])
    with pytest.raises(ValueError, match='code 4'):
        direction_codes([0, 4])
    with pytest.raises(ValueError, match='code -1'):
        direction_codes([-1])
    for name in SCAN_DIRECTIONS:
        assert check_direction(name) == name
    with pytest.raises(ValueError, match=r"Unknown scan direction 'Row'; expected one of "
                       r"\('row', 'col', 'row_rev', 'col_rev'\)\."):
        check_direction('Row')
    from mmgroupmamba.models.layers import VSSS
    with pytest.raises(ValueError, match="Unknown scan direction 'up'"):
        VSSS(8, direction='up')


@pytest.mark.parametrize('direction', SCAN_DIRECTIONS)
def test_visiting_order_on_2x3_map(direction):
    x = torch.arange(6.).view(1, 1, 2, 3)
    seq = flatten_in_direction(x, direction)
    assert seq.shape == (1, 1, 6)
    assert seq.flatten().tolist() == EXPECTED_ORDER[direction]
    seq_cl = flatten_channels_last(x.permute(0, 2, 3, 1), direction)
    assert seq_cl.flatten().tolist() == EXPECTED_ORDER[direction]


@pytest.mark.parametrize('direction', SCAN_DIRECTIONS)
@pytest.mark.parametrize('hw', [(2, 3), (5, 4), (1, 7), (6, 1)])
def test_flatten_unflatten_round_trip(direction, hw):
    H, W = hw
    x = torch.randn(2, 3, H, W)
    seq = flatten_in_direction(x, direction)
    assert seq.shape == (2, 3, H * W)
    assert torch.equal(unflatten_from_direction(seq, direction, hw), x)
    # and the other way round: unflatten then flatten is the identity on sequences
    s = torch.randn(2, 3, H * W)
    assert torch.equal(flatten_in_direction(unflatten_from_direction(s, direction, hw),
                                            direction), s)
    # channels-last
    x_cl = torch.randn(2, H, W, 3)
    seq_cl = flatten_channels_last(x_cl, direction)
    assert seq_cl.shape == (2, 3, H * W)
    assert torch.equal(unflatten_channels_last(seq_cl, direction, hw), x_cl)


@pytest.mark.parametrize('direction', SCAN_DIRECTIONS)
def test_channels_last_agrees_with_channels_first(direction):
    H, W = 3, 5
    x = torch.randn(2, 4, H, W)
    x_cl = x.permute(0, 2, 3, 1).contiguous()
    seq = flatten_in_direction(x, direction)
    assert torch.equal(flatten_channels_last(x_cl, direction), seq)
    out_cl = unflatten_channels_last(seq, direction, (H, W))
    assert out_cl.shape == (2, H, W, 4)
    assert torch.equal(out_cl, unflatten_from_direction(seq, direction, (H, W))
                       .permute(0, 2, 3, 1))
    assert torch.equal(out_cl, x_cl)


def test_one_definition_reexported():
    """The old homes re-export the one definition (same objects)."""
    import mmgroupmamba.ops as ops
    import mmgroupmamba.ops.directions as directions
    from mmgroupmamba.models import layers
    assert layers.SCAN_DIRECTIONS is directions.SCAN_DIRECTIONS
    assert layers.flatten_in_direction is directions.flatten_in_direction
    assert layers.unflatten_from_direction is directions.unflatten_from_direction
    assert ops.SCAN_DIRECTIONS is directions.SCAN_DIRECTIONS
    assert ops.DIRECTION_CODES is directions.DIRECTION_CODES
    try:
        from mmgroupmamba.ops import selective_scan_triton
    except ImportError:  # no Triton
        return
    assert selective_scan_triton.DIRECTION_CODES is directions.DIRECTION_CODES
