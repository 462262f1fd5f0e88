"""tools/train.py --amp in bfloat16: autocast without a GradScaler (AutocastOptimWrapper),
which also trains on CPU; float16 keeps mmengine's AmpOptimWrapper with a loss scale."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import REPO_ROOT
from mmgroupmamba.datasets import generate_classification_set
from mmgroupmamba.engine import AutocastOptimWrapper
from tools_import import _load

train_tool = _load('amp_train', 'train.py')
DEMO = osp.join(REPO_ROOT, 'configs', 'demo', 'groupmamba-demo_shapes.py')
TINY = osp.join(REPO_ROOT, 'configs', 'groupmamba', 'groupmamba-t_8xb128_in1k.py')


def _cfg(config, *argv):
    args = train_tool.parse_args([config, *argv])
    return train_tool.merge_args(Config.fromfile(config), args)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU defaults')
def test_amp_choice_of_wrapper_on_cpu():
    ow = _cfg(DEMO, '--amp').optim_wrapper
    assert (ow.type, ow.dtype) == ('AutocastOptimWrapper', 'bfloat16')
    assert 'loss_scale' not in ow
    assert _cfg(DEMO, '--amp-dtype', 'bfloat16').optim_wrapper.type == 'AutocastOptimWrapper'
    with pytest.raises(RuntimeError, match='bfloat16 only'):
        _cfg(DEMO, '--amp', '--amp-dtype', 'float16')
    # a config's own AmpOptimWrapper in bfloat16 drops its loss scale too
    ow = _cfg(TINY, '--cfg-options', 'optim_wrapper.dtype=bfloat16').optim_wrapper
    assert (ow.type, ow.dtype) == ('AutocastOptimWrapper', 'bfloat16')
    assert 'loss_scale' not in ow
    # without --amp and without bfloat16 the config is left as it is
    ow = _cfg(TINY).optim_wrapper
    assert (ow.type, ow.loss_scale) == ('AmpOptimWrapper', 'dynamic') and 'dtype' not in ow
    assert _cfg(DEMO).optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper'


def test_wrapper_refuses_float16():
    param = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match='AmpOptimWrapper'):
        AutocastOptimWrapper(dtype='float16', optimizer=torch.optim.SGD([param], lr=1))


def test_bf16_training_without_grad_scaler(tmp_path):
    from mmengine.runner import Runner
    root = generate_classification_set(str(tmp_path / 'shapes'), num_train_per_class=2,
                                       num_val_per_class=1, image_size=32)
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    options = [f'{k}.dataset.data_root={root}' for k in loaders]
    options += [f'{k}.num_workers=0' for k in loaders]
    options += [f'{k}.persistent_workers=False' for k in loaders]
    options += ['train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=2',
                'train_dataloader.batch_size=8']
    # (explicit: on a CUDA machine --amp alone means float16 with a loss scale)
    cfg = _cfg(DEMO, '--amp', '--amp-dtype', 'bfloat16', '--no-validate', '--work-dir', str(tmp_path / 'work'),
               '--cfg-options', *options)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        runner = Runner.from_cfg(cfg)
        seen = []
        runner.model.backbone.stages[2][0].mixer.proj.register_forward_hook(
            lambda m, i, o: seen.append((o.dtype, torch.is_grad_enabled())))
        before = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
        runner.train()
    wrapper = runner.optim_wrapper
    assert isinstance(wrapper, AutocastOptimWrapper) and wrapper.cast_dtype == torch.bfloat16
    assert not hasattr(wrapper, 'loss_scaler')
    # 2 epochs x 2 iterations (16 images, batch 8); the training forwards ran in bfloat16
    assert runner.iter == 4
    assert seen and all(dtype == torch.bfloat16 for dtype, grad in seen if grad)
    after = dict(runner.model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in after.values())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert len(changed) > 0.9 * len(before), 'the optimizer stepped every parameter'
    ckpt = torch.load(osp.join(str(tmp_path / 'work'), 'epoch_2.pth'), map_location='cpu',
                      weights_only=False)
    assert 'loss_scaler' not in ckpt['optimizer']
