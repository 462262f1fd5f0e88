import torch

from mmgroupmamba.analysis import count_flops, scan_flops
from mmgroupmamba.models.layers import VSSS


def test_scan_is_counted_in_vsss():
    op = VSSS(8, 'col')
    x = torch.randn(1, 5, 7, 8)
    total = count_flops(op, x)
    L, d, r = 35, 8, op.dt_rank
    dense = L * d * 2 * d + L * d * 9 + L * d * (r + 2) + L * r * d + L * d * d
    # + out_norm (fvcore: 5 per element for layer norm with affine)
    assert total - dense - 5 * L * d == scan_flops(1, d, L, 1)


def test_tiny_flops_match_released():
    from tools_import_flops import get_flops
    model = get_flops.build_classifier('tiny')
    flops, analyzer = count_flops(model, torch.randn(1, 3, 224, 224),
                                  return_analyzer=True)
    # Released: 4.69G. Ours: 4.689G dense (fvcore) + 0.017G for the 19 x 4 scans.
    assert abs(flops / 1e9 - 4.69) / 4.69 < 0.01, flops / 1e9
    scans = analyzer.by_operator()['PythonOp._OpaqueSelectiveScan']
    hw = [56, 28, 14, 7]
    expected = sum(depth * scan_flops(1, dim, hw[i] ** 2, 1)
                   for i, (depth, dim) in enumerate(zip([3, 4, 9, 3], [64, 128, 348, 448])))
    expected += scan_flops(1, 448, 1, 1)  # class block, one token
    assert scans == expected
