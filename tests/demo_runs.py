"""Small real runs of the classification demo config for the checkpoint and fault tests:
a config writer and ``tools/train.py`` / ``tools/test.py`` in child processes."""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys

from conftest import REPO_ROOT

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'groupmamba-demo_shapes.py')
TESTS_DIR = osp.dirname(osp.abspath(__file__))


def write_demo_config(path, data_root, max_epochs=3, checkpoint='',
                      custom_hooks="dict(type='StepSeedHook')", extra=()):
    """The demo config on ``data_root`` at batch 8, CPU-friendly: no loader workers,
    every iteration logged, validation at the end, a checkpoint per epoch (the demo keeps
    one; ``checkpoint``: more CheckpointHook arguments), ``custom_hooks`` (StepSeedHook
    for exact resumption), the test helpers (``fault_injection``) importable, and
    ``extra`` lines (which must not assign the keys above again: a later assignment in
    a config file replaces the earlier one)."""
    lines = [
        f"_base_ = ['{DEMO_CONFIG}']",
        "custom_imports = dict(imports=['mmgroupmamba', 'fault_injection'], "
        "allow_failed_imports=False)",
        f"train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, "
        f"dataset=dict(data_root='{data_root}'))",
        f"val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, "
        f"dataset=dict(data_root='{data_root}'))",
        f"test_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, "
        f"dataset=dict(data_root='{data_root}'))",
        f"train_cfg = dict(max_epochs={max_epochs}, val_interval={max_epochs})",
        "param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, "
        "begin=0, end=1, convert_to_iter_based=True), dict(type='CosineAnnealingLR', "
        f"T_max={max_epochs}, eta_min=1e-5, by_epoch=True, begin=1, end={max_epochs + 1}, "
        "convert_to_iter_based=True)]",
        "default_hooks = dict(logger=dict(interval=1), "
        f"checkpoint=dict(interval=1{', ' + checkpoint if checkpoint else ''}))",
        "log_processor = dict(window_size=1)",
        f"custom_hooks = [{custom_hooks}]",
        *extra,
    ]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(path)


def child_env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT, TESTS_DIR, os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
    env.update(extra)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(tool, *args, nproc=1, env=None, timeout=600):
    """``tools/<tool>.py args`` in a child process (``nproc`` > 1: under torchrun with
    ``--launcher pytorch``); returns the CompletedProcess (no check of its status)."""
    script = osp.join(REPO_ROOT, 'tools', f'{tool}.py')
    if nproc > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
               str(nproc), '--master_port', str(_free_port()), script, *args,
               '--launcher', 'pytorch']
    else:
        cmd = [sys.executable, script, *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env or child_env(), capture_output=True,
                          text=True, timeout=timeout)


def check(result):
    """Assert that a run_tool run succeeded, showing its output without the log lines."""
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if ' - mmengine - INFO - ' not in line]
    assert result.returncode == 0, '\n'.join(lines)[-6000:]
    return result


def logged_losses(work_dir):
    """[{iteration: loss}, ...]: the losses of every run logged in ``work_dir``, in the
    order of the runs."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            runs.append({r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r})
    return runs
