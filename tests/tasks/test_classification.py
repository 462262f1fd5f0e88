"""ImageNet configs (GroupMamba-T/S/B), one training step of each, evaluation of released
weights with tools/test.py, and exact resumption with tools/train.py --resume."""
import copy
import glob
import json
import os
import os.path as osp
import pickle
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmgroupmamba  # noqa: F401
from conftest import MICRO_ARCH, REPO_ROOT
from tools_import import load_tool
from mmgroupmamba.datasets import SHAPE_CLASSES, generate_classification_set
from mmgroupmamba.models.teachers import TimmRegNet
from mmgroupmamba.utils import load_checkpoint_file

CONFIGS = {n: osp.join(REPO_ROOT, 'configs', 'groupmamba', f'groupmamba-{n}_8xb128_in1k.py')
           for n in 'tsb'}
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'groupmamba-demo_distill_shapes.py')
TINY_TEACHER = dict(w0=16, wa=8, wm=1.5, group_size=8, depth=3, se_ratio=0.25)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """A small generated set in the ImageNet layout (with meta/*.txt)."""
    root = str(tmp_path_factory.mktemp('shapes'))
    return generate_classification_set(root, num_train_per_class=4, num_val_per_class=2,
                                       image_size=32)


def write_teacher(path, num_classes=1000):
    """A tiny random RegNetY teacher checkpoint in DeiT's format."""
    torch.save({'model': TimmRegNet(TINY_TEACHER, num_classes=num_classes).state_dict()},
               path)
    return dict(type='TimmRegNet', arch=TINY_TEACHER, num_classes=num_classes)


# ------------------------------------------------------------------------ the recipe
def test_recipe_of_the_configs():
    cfg = Config.fromfile(CONFIGS['t'])
    assert cfg.default_scope == 'mmpretrain'
    assert 'mmgroupmamba' in cfg.custom_imports.imports
    # optimisation: AdamW 1e-3 at 1024, wd 0.05, clip 5, AMP, 300 epochs, 20 warm-up
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper'
    assert ow.optimizer.type == 'AdamW' and ow.optimizer.lr == pytest.approx(1e-3)
    assert ow.optimizer.weight_decay == 0.05 and ow.clip_grad.max_norm == 5.0
    assert cfg.auto_scale_lr.base_batch_size == 1024 == 8 * cfg.train_dataloader.batch_size
    warmup, cosine = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 20
    assert warmup.start_factor * ow.optimizer.lr == pytest.approx(5e-7)
    assert cosine.type == 'CosineAnnealingLR' and cosine.eta_min == 5e-6
    assert (cosine.begin, cosine.end, cosine.T_max) == (20, 300, 280)
    assert warmup.convert_to_iter_based and cosine.convert_to_iter_based
    assert cfg.train_cfg.max_epochs == 300
    # EMA 0.9999 (mmengine's momentum is 1 - decay), buffers too
    ema, = [h for h in cfg.custom_hooks if h.type == 'EMAHook']
    assert ema.momentum == pytest.approx(1e-4) and ema.update_buffers
    # model: drop path 0.05, hard distillation alpha 0.5, label smoothing, Mixup/CutMix
    m = cfg.model
    assert m.backbone.drop_path_rate == 0.05 and not m.backbone.final_norm
    assert (m.head.distill_type, m.head.distill_alpha) == ('hard', 0.5)
    assert m.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                               mode='original')
    assert m.teacher.model_name == 'regnety_160'
    assert m.teacher_checkpoint.endswith('regnety_160-a5fe301d.pth')
    assert [(a.type, a.alpha) for a in m.train_cfg.augments] == [('Mixup', 0.8),
                                                                 ('CutMix', 1.0)]
    # data: bicubic RRC 224, RandAugment m9-mstd0.5 inc, erasing 0.25; test 256 -> 224
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResizedCrop'].scale == 224
    assert train['RandomResizedCrop'].interpolation == 'bicubic'
    ra = train['RandAugment']
    assert (ra.policies, ra.num_policies, ra.magnitude_level, ra.magnitude_std) == (
        'timm_increasing', 2, 9, 0.5)
    assert train['RandomErasing'].erase_prob == 0.25
    test = {t.type: t for t in cfg.test_dataloader.dataset.pipeline}
    assert test['ResizeEdge'].scale == 256 and test['ResizeEdge'].interpolation == 'bicubic'
    assert test['CenterCrop'].crop_size == 224  # crop ratio 224 / 256 = 0.875
    assert cfg.val_evaluator.topk == (1, 5)
    assert cfg.test_dataloader.dataset.data_root == 'data/imagenet'


def test_data_root_from_the_environment(monkeypatch):
    monkeypatch.setenv('IMAGENET_ROOT', '/datasets/in1k')
    cfg = Config.fromfile(CONFIGS['s'])
    assert {cfg[k].dataset.data_root for k in (
        'train_dataloader', 'val_dataloader', 'test_dataloader')} == {'/datasets/in1k'}


@pytest.mark.parametrize('name,arch,params', [('t', 'tiny', 23.36), ('s', 'small', 34.78),
                                              ('b', 'base', 57.15)])
def test_configs_build(name, arch, params):
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(CONFIGS[name])
    assert cfg.model.backbone.arch == arch
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    # the released models' parameter counts (both heads); the teacher is not counted
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params,
                                                                             abs=0.005)
    assert model.teacher is None  # built only when training starts


def test_no_weight_decay_on_1d_parameters_and_biases():
    """As released: decay on every >=2-D weight (A_log (d, N) included), none on norms,
    biases, D and skip_scale."""
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(CONFIGS['t'])
    cfg.model.backbone.arch = MICRO_ARCH
    cfg.model.head.update(in_channels=64, num_classes=10)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AmpOptimWrapper needs a GPU
    cfg.optim_wrapper.pop('loss_scale')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
    wd = {id(p): g['weight_decay'] for g in optim.optimizer.param_groups for p in g['params']}
    names = dict(model.named_parameters())
    assert len(wd) == len(names)
    for name, p in names.items():
        no_decay = p.ndim <= 1 or name.endswith('.bias')
        assert wd[id(p)] == (0.0 if no_decay else 0.05), name
    kinds = {n.rsplit('.', 1)[-1] for n in names}
    assert {'A_log', 'D', 'skip_scale'} <= kinds
    assert all(wd[id(p)] == 0.05 for n, p in names.items() if n.endswith('A_log'))
    # one group per setting (MergedGroupsOptimWrapperConstructor), each parameter with
    # the settings mmengine's default constructor gives it in a group of its own
    assert cfg.optim_wrapper.constructor == 'MergedGroupsOptimWrapperConstructor'
    assert len(optim.optimizer.param_groups) == 2
    cfg.optim_wrapper.pop('constructor')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        default = build_optim_wrapper(model, cfg.optim_wrapper)
    assert len(default.optimizer.param_groups) == len(names)

    def settings(optimizer):
        return {id(p): {k: v for k, v in g.items() if k != 'params'}
                for g in optimizer.param_groups for p in g['params']}

    assert settings(optim.optimizer) == settings(default.optimizer)
    order = [id(p) for g in optim.optimizer.param_groups for p in g['params']]
    assert sorted(order) == sorted(id(p) for p in model.parameters())


def test_merged_groups_resume_from_per_parameter_groups():
    """A run started with one parameter group per parameter (mmengine's default
    constructor) resumes under MergedGroupsOptimWrapperConstructor: the saved state is
    merged as the groups are, and the next step is the one the old optimizer takes."""
    from mmengine.optim import build_optim_wrapper
    from mmgroupmamba.models import GroupMamba
    torch.manual_seed(0)
    model = GroupMamba(MICRO_ARCH, drop_path_rate=0.)
    twin = copy.deepcopy(model)
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05),
               paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                                  flat_decay_mult=0.))
    old = build_optim_wrapper(model, copy.deepcopy(cfg))
    x = torch.randn(2, 3, 32, 32)

    def step(m, optim):
        optim.zero_grad()
        sum(o.square().mean() for o in m(x)).backward()
        optim.step()

    step(model, old)
    twin.load_state_dict(model.state_dict())
    new = build_optim_wrapper(twin, dict(copy.deepcopy(cfg),
                                         constructor='MergedGroupsOptimWrapperConstructor'))
    assert len(new.optimizer.param_groups) == 2 < len(old.optimizer.param_groups)
    new.load_state_dict(copy.deepcopy(old.state_dict()))
    for p, q in zip(model.parameters(), twin.parameters()):
        for key, value in old.optimizer.state[p].items():
            assert torch.equal(new.optimizer.state[q][key], value), key
    step(model, old)
    step(twin, new)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------ training
@pytest.mark.parametrize('name', ['t', 's', 'b'])
def test_one_training_iteration_with_distillation(name, shapes, tmp_path):
    """The real config (pipeline, Mixup/CutMix, EMA, clip, schedule, distillation) on
    32x32 crops on the CPU, with a tiny random teacher checkpoint."""
    from mmengine.runner import Runner
    cfg = Config.fromfile(CONFIGS[name])
    cfg.model.teacher = write_teacher(tmp_path / 'teacher.pth')
    cfg.model.teacher_checkpoint = str(tmp_path / 'teacher.pth')
    cfg.optim_wrapper.type = 'OptimWrapper'  # CPU: no AMP
    cfg.optim_wrapper.pop('loss_scale')
    loader = cfg.train_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False, pin_memory=False)
    loader.dataset.data_root = shapes
    loader.dataset.pipeline[1].scale = 32  # RandomResizedCrop
    cfg.train_cfg = dict(by_epoch=False, max_iters=1)
    cfg.param_scheduler[0].convert_to_iter_based = False
    cfg.param_scheduler = cfg.param_scheduler[:1]
    for key in ('val', 'test'):
        cfg[f'{key}_cfg'] = cfg[f'{key}_dataloader'] = cfg[f'{key}_evaluator'] = None
    # no checkpoint files (hundreds of MB for B): the state dicts are inspected directly
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10**6,
                                        by_epoch=False, save_last=False)
    cfg.default_hooks.logger.interval = 1
    cfg.log_processor = dict(by_epoch=False, window_size=1)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.randomness = dict(seed=0)

    runner = Runner.from_cfg(cfg)
    runner.train()
    teacher = runner.model.teacher
    assert teacher is not None and not teacher.training
    hub = runner.message_hub
    loss_cls = hub.get_scalar('train/loss_cls').current()
    loss_dist = hub.get_scalar('train/loss_dist').current()
    assert np.isfinite(loss_cls) and np.isfinite(loss_dist) and loss_dist > 0
    assert hub.get_scalar('train/loss').current() == pytest.approx(loss_cls + loss_dist)
    # the teacher stays out of the student's state dict and of its EMA copy
    from mmengine.hooks import EMAHook
    ema, = [h.ema_model for h in runner.hooks if isinstance(h, EMAHook)]
    for sd in (runner.model.state_dict(), ema.state_dict()):
        assert not any('teacher' in k or k.startswith(('stem.', 's1.')) for k in sd)
    assert ema.module.teacher is teacher
    saved = load_checkpoint_file(tmp_path / 'teacher.pth')['model']
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, saved[k]), k  # frozen


# ------------------------------------------------------------------------ evaluation
def test_released_weights_evaluate_with_tools_test(reference, tmp_path):
    """official2mm.py, then tools/test.py with the ImageNet config on a val folder in the
    standard layout: full top-1/top-5, without the teacher (its file does not exist)."""
    from mmpretrain.apis import init_model
    from tools_import import official2mm
    test_tool = load_tool('test.py')

    ckpt, out_cfg = str(tmp_path / 'gm.pth'), str(tmp_path / 'gm_cfg.py')
    arch = official2mm.convert(reference['checkpoint_path'], ckpt, out_cfg)
    # The reference model is a small GroupMamba with 10 classes: the T config with its
    # architecture. Its val folder: 1000 wnid folders, images in the first eight.
    root = tmp_path / 'imagenet'
    generated = generate_classification_set(str(tmp_path / 'src'), num_train_per_class=1,
                                            num_val_per_class=2, image_size=48)
    for i in range(1000):
        os.makedirs(root / 'val' / f'n{i:08d}')
        if i < len(SHAPE_CLASSES):
            for f in glob.glob(osp.join(generated, 'val', SHAPE_CLASSES[i], '*.png')):
                shutil.copy(f, root / 'val' / f'n{i:08d}')
    num_images = 2 * len(SHAPE_CLASSES)
    cfg_file = tmp_path / 'gm-small.py'
    cfg_file.write_text(
        f"_base_ = ['{CONFIGS['t']}']\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, "
        f"stem_channels={arch['stem_channels']}, "
        f"embed_dims={arch['embed_dims']}, depths={arch['depths']}, "
        f"mlp_ratios={arch['mlp_ratios']})), head=dict(num_classes=10, "
        f"in_channels={arch['embed_dims'][-1]}, mlp_ratio={arch['cls_mlp_ratio']}), "
        f"teacher_checkpoint='{tmp_path / 'no_teacher_here.pth'}')\n"
        "data_preprocessor = dict(num_classes=10)\n"
        "test_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)\n")
    metrics = test_tool.main([
        str(cfg_file), ckpt, '--work-dir', str(tmp_path / 'work'),
        '--out', str(tmp_path / 'preds.pkl'),
        '--cfg-options', f'test_dataloader.dataset.data_root={root}'])
    assert set(metrics) == {'accuracy/top1', 'accuracy/top5'}

    # The same numbers from the converter's own config, loaded independently.
    model = init_model(out_cfg, ckpt, device='cpu')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        from mmengine.dataset import Compose
        from mmpretrain.registry import TRANSFORMS  # noqa: F401
        pipeline = Compose(Config.fromfile(CONFIGS['t']).test_pipeline)
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == num_images
    correct = 0
    for pred in preds:
        data = pipeline(dict(img_path=pred['img_path']))
        batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                             data_samples=[data['data_samples']]))
        with torch.no_grad():
            score = model(batch['inputs'], mode='tensor').softmax(-1)[0]
        torch.testing.assert_close(pred['pred_score'], score, rtol=1e-4, atol=1e-5)
        correct += int(score.argmax() == pred['gt_label'].item())
    assert metrics['accuracy/top1'] == pytest.approx(100 * correct / num_images)


# ------------------------------------------------------------------------ resumption
def _scalars(work_dir):
    (path, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {r['step']: r['loss'] for r in rows if 'loss' in r}


@pytest.mark.parametrize('augment', [False, True])
def test_resume_is_exact(augment, shapes, tmp_path):
    """tools/train.py: 3 epochs straight vs 1 epoch + ``--resume`` from its checkpoint:
    identical losses at every later iteration (CPU, num_workers=0).

    Everything in the checkpoint is exercised: AdamW state, warm-up/cosine position,
    EMA, the message hub, the data order; the teacher is reloaded from its file. With
    random augmentation (crops, flips, Mixup/CutMix) the RNG streams must also match,
    which MMEngine does not provide by itself: that variant adds our StepSeedHook
    (mmgroupmamba/engine), as the ImageNet configs do.
    """
    train_tool = load_tool('train.py')
    teacher = write_teacher(tmp_path / 'teacher.pth', num_classes=8)
    cfg_file = tmp_path / 'demo.py'
    lines = [
        f"_base_ = ['{DEMO_CONFIG}']",
        f"model = dict(teacher=dict(_delete_=True, **{teacher!r}), "
        f"teacher_checkpoint='{tmp_path / 'teacher.pth'}'"
        + (", train_cfg=dict(_delete_=True, augments=[dict(type='Mixup', alpha=0.8), "
           "dict(type='CutMix', alpha=1.0)])" if augment else '') + ')',
        f"train_dataloader = dict(batch_size=8, dataset=dict(data_root='{shapes}'"
        + ('' if augment else ", pipeline=[dict(type='LoadImageFromFile'), "
           "dict(type='PackInputs')]") + '))',
        f"val_dataloader = dict(dataset=dict(data_root='{shapes}'))",
        "train_cfg = dict(max_epochs=3, val_interval=1)",
        "param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, "
        "begin=0, end=1, convert_to_iter_based=True), dict(type='CosineAnnealingLR', "
        "T_max=2, eta_min=1e-5, by_epoch=True, begin=1, end=3, "
        "convert_to_iter_based=True)]",
        "default_hooks = dict(logger=dict(interval=1), "
        "checkpoint=dict(interval=1, max_keep_ckpts=-1))",
        "log_processor = dict(window_size=1)",
    ]
    if augment:
        lines.append("custom_hooks = [dict(type='EMAHook', momentum=1e-2, "
                     "priority='ABOVE_NORMAL', update_buffers=True), "
                     "dict(type='StepSeedHook')]")
    cfg_file.write_text('\n'.join(lines) + '\n')

    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    train_tool.main([str(cfg_file), '--work-dir', straight])
    os.makedirs(resumed)
    shutil.copy(osp.join(straight, 'epoch_1.pth'), resumed)
    train_tool.main([str(cfg_file), '--work-dir', resumed,
                     '--resume', osp.join(resumed, 'epoch_1.pth')])

    a, b = _scalars(straight), _scalars(resumed)
    iters_per_epoch = 4 * len(SHAPE_CLASSES) // 8  # 4 images per class, batch 8
    assert sorted(b) == list(range(iters_per_epoch + 1, 3 * iters_per_epoch + 1))
    for step in sorted(b):
        assert b[step] == a[step], (step, a[step], b[step])  # bit-exact
    for name in ('epoch_2.pth', 'epoch_3.pth'):
        sa = load_checkpoint_file(osp.join(straight, name))
        sb = load_checkpoint_file(osp.join(resumed, name))
        for key in ('state_dict', 'ema_state_dict'):
            for k, v in sa[key].items():
                assert torch.equal(v, sb[key][k]), (name, key, k)
