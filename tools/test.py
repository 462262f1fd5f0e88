"""Evaluate a checkpoint on an mmpretrain, mmdet or mmseg config's test set.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--tta] [--show-dir DIR]
                         [--out FILE] [--cfg-options k=v ...] [--launcher pytorch]

Released GroupMamba checkpoints go through ``tools/model_converters/official2mm.py``
first (the backbone's ``init_cfg`` also accepts them directly).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))

import mmgroupmamba  # noqa: E402,F401
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmgroupmamba.utils.compat import setup_cpu_distributed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a GroupMamba model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for the evaluation logs')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation with the config\'s tta_model and '
                             'tta_pipeline (mmseg multi-scale + flip, mmdet, mmpretrain)')
    parser.add_argument('--show-dir', help='save visualised predictions under this dir')
    parser.add_argument('--out', help='dump raw predictions to this pickle file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_tta(cfg):
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise KeyError('--tta needs `tta_model` and `tta_pipeline` in the config.')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def enable_show_dir(cfg, show_dir):
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise KeyError('--show-dir needs a `visualization` hook in default_hooks.')
    hooks.visualization.draw = True
    hooks.visualization.interval = 1
    # mmdet/mmseg hooks take `test_out_dir`, mmpretrain's takes `out_dir`.
    key = 'out_dir' if cfg.get('default_scope') == 'mmpretrain' else 'test_out_dir'
    hooks.visualization[key] = show_dir


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.tta:
        enable_tta(cfg)
    if args.show_dir:
        enable_show_dir(cfg, args.show_dir)

    runner = Runner.from_cfg(setup_cpu_distributed(cfg))
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    return metrics


if __name__ == '__main__':
    main()
