"""The --dense table of tools/analysis/benchmark.py from given rows (no timing)."""
from tools_import import load_tool


def _row(model, backend, batch, img, mode, ms, gpu_ms=None, scan_ms=None):
    row = dict(model=model, backend=backend, batch=batch, img=img, mode=mode,
               precision='amp', img_s=1e3 * batch / ms)
    if gpu_ms is not None:
        row['profile'] = dict(gpu_ms=gpu_ms, scan_ms=scan_ms or 0., launches=1)
    return row


def test_dense_table_compares_gpu_time_with_swin(capsys):
    bm = load_tool('analysis', 'benchmark.py')
    batch, h, w = bm.DENSE_SHAPES[0]
    img = (h, w)
    rows = [_row('GroupMamba-T', 'triton', batch, img, 'train', 200., 36., 7.2),
            _row('GroupMamba-T', 'triton+backbone-graph', batch, img, 'train', 40.),
            _row('Swin-T', 'timm', batch, img, 'train', 50., 24.),
            _row('ConvNeXt-T', 'timm', batch, img, 'train', 45., 20.),
            # no profile: the GPU columns stay empty
            _row('GroupMamba-T', 'triton', batch, img, 'infer', 20.),
            _row('Swin-T', 'timm', batch, img, 'infer', 10.)]
    bm.print_dense_table(rows, 'GroupMamba-T')
    lines = [ln.split('|') for ln in capsys.readouterr().out.splitlines() if '|' in ln]
    header = [c.strip() for c in lines[0]]
    train, infer = ([c.strip() for c in ln] for ln in lines[1:3])
    cell = dict(zip(header, train))
    assert cell['graph/Swin'] == '0.80x' and cell['eager/Swin'] == '4.00x'
    assert cell['scan %'] == '20.0'
    assert (cell['GM GPU ms'], cell['Swin GPU ms'], cell['GPU GM/Swin']) == ('36.00', '24.00',
                                                                            '1.50x')
    cell = dict(zip(header, infer))
    assert cell['mode'] == 'infer' and cell['GPU GM/Swin'] == '-'


def test_compile_options_are_a_json_object():
    import argparse

    import pytest
    bm = load_tool('analysis', 'benchmark.py')
    assert bm._compile_options('{"mode": "reduce-overhead", "dynamic": false}') == dict(
        mode='reduce-overhead', dynamic=False)
    for bad in ('mode=reduce-overhead', '["reduce-overhead"]'):
        with pytest.raises(argparse.ArgumentTypeError):
            bm._compile_options(bad)
