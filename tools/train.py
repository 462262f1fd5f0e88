"""Train a model from an mmpretrain, mmdet or mmseg config with MMEngine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--amp [--amp-dtype float16|bfloat16]]
                          [--resume [CKPT]] [--auto-scale-lr] [--cfg-options k=v ...]
                          [--launcher pytorch]

The config's ``default_scope`` ('mmpretrain', 'mmdet' or 'mmseg') selects the codebase.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))

import mmgroupmamba  # noqa: E402,F401  (registers modules, applies mmengine workarounds)
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmgroupmamba.utils.compat import setup_cpu_distributed  # noqa: E402


AMP_DTYPES = ('float16', 'bfloat16')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a GroupMamba model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the '
                             'work dir when no path is given')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision training: float16 with a dynamic loss '
                             'scale (AmpOptimWrapper), bfloat16 without one '
                             '(AutocastOptimWrapper)')
    parser.add_argument('--amp-dtype', choices=AMP_DTYPES,
                        help='autocast dtype of --amp (implies --amp); default: the '
                             "config's optim_wrapper.dtype, else float16 with CUDA and "
                             'bfloat16 without (CPU autocast is bfloat16 only)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true',
                        help='skip validation during training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_epochs=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def merge_args(cfg, args):
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp or args.amp_dtype:
        enable_amp(cfg, args.amp_dtype)
    elif _dtype_name(cfg.optim_wrapper.get('dtype')) == 'bfloat16' \
            and cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
        enable_amp(cfg, 'bfloat16')  # the config's AMP in bfloat16: no loss scale

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise KeyError('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` '
                           'in the config.')
        cfg.auto_scale_lr.enable = True

    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def _dtype_name(dtype):
    return str(dtype).replace('torch.', '') if dtype is not None else None


def enable_amp(cfg, dtype=None):
    """Mixed precision in ``dtype`` (default: the config's ``optim_wrapper.dtype``, else
    float16 with CUDA and bfloat16 without): ``AmpOptimWrapper`` with a dynamic loss
    scale for float16; ``AutocastOptimWrapper`` (no ``GradScaler``) for bfloat16, whose
    gradients cannot underflow the way float16's do."""
    ow = cfg.optim_wrapper
    if ow.get('type') == 'DeepSpeedOptimWrapper':
        return  # DeepSpeed has its own precision settings
    dtype = _dtype_name(dtype or ow.get('dtype')) or (
        'float16' if torch.cuda.is_available() else 'bfloat16')
    if dtype not in AMP_DTYPES:
        raise ValueError(f'Mixed precision needs float16 or bfloat16, got '
                         f'optim_wrapper.dtype={dtype!r}.')
    if dtype == 'bfloat16':
        ow.type = 'AutocastOptimWrapper'
        ow.pop('loss_scale', None)
    else:
        if not torch.cuda.is_available():
            raise RuntimeError('float16 mixed precision needs a CUDA GPU (CPU autocast '
                               'supports bfloat16 only: --amp-dtype bfloat16).')
        ow.type = 'AmpOptimWrapper'
        ow.setdefault('loss_scale', 'dynamic')
    ow.dtype = dtype


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg = setup_cpu_distributed(merge_args(cfg, args))
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
