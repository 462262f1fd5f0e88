"""tools/misc/gpu_amp_longrun.py (the GPU long-run AMP check) in its CPU mode: a few
steps of a tiny model in bf16 and fp16 (with the GradScaler), the report and its JSON."""
import json
import math

from tools_import import load_tool

TINY = ('{"stem_channels": 8, "embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], '
        '"mlp_ratios": [2, 2, 2, 2]}')


def test_cpu_mode_runs_both_dtypes(tmp_path, capsys):
    tool = load_tool('misc', 'gpu_amp_longrun.py')
    out = tmp_path / 'result.json'
    status = tool.main(['--device', 'cpu', '--steps', '3', '--batch-size', '2',
                        '--img-size', '32', '--pool', '16', '--arch', TINY,
                        '--log-interval', '2', '--json', str(out),
                        # from torch's initial 2**16 the first fp16 steps of this tiny
                        # model overflow (every one of 3); 2**8 leaves gradients finite
                        '--init-scale', '256'])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert 'PASS' in printed
    results = json.loads(out.read_text())['results']
    assert [r['dtype'] for r in results] == ['bf16', 'fp16']
    for r in results:
        assert r['steps'] == 3 and r['nonfinite_loss_steps'] == 0 and not r['problems']
        assert math.isfinite(r['loss_start']) and math.isfinite(r['loss_end'])
        # ln(8 classes) at the start: a fresh classifier on the 8 shapes classes
        assert abs(r['loss_start'] - math.log(8)) < 1.0
    bf16, fp16 = results
    for r in results:
        assert r['nonfinite_grad_steps'] == 0 and r['max_grad_norm'] > 0
    assert bf16['final_loss_scale'] is None and fp16['final_loss_scale'] == 256
