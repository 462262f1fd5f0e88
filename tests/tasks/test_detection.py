"""Mask R-CNN on GroupMamba (mmdet): the 1x COCO config (size, optimizer rules, schedule,
pretrained initialisation, one training and one test iteration at a reduced image size),
the generated COCO-format shapes set, and the demo config through tools/train.py and
tools/test.py with mmdet's CocoMetric."""
import copy
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

import mmgroupmamba  # noqa: F401
from mmgroupmamba.datasets.synthetic_coco import DET_CATEGORIES, generate_detection_set
from mmgroupmamba.utils import unlisted_globals
from conftest import REPO_ROOT

CFG_1X = osp.join(REPO_ROOT, 'configs', 'maskrcnn_groupmamba_t_1x.py')
CFG_DEMO = osp.join(REPO_ROOT, 'configs', 'demo', 'maskrcnn_groupmamba_demo.py')
PAPER_PARAMS = 40e6  # GroupMamba-T Mask R-CNN, paper Table 3


def _build(cfg_model):
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(copy.deepcopy(cfg_model))


def _point_at(cfg, root, scale=None):
    """Point every dataloader and evaluator of ``cfg`` at the generated set ``root`` and
    optionally resize to ``scale``: data and pipeline overrides only, never the model."""
    for key, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                       ('test_dataloader', 'val')):
        loader = cfg[key]
        loader.num_workers = 0
        loader.persistent_workers = False
        ds = loader.dataset
        ds.data_root = root
        ds.ann_file = f'annotations/instances_{split}.json'
        ds.data_prefix = dict(img=f'{split}/')
        ds.metainfo = dict(classes=DET_CATEGORIES)
        if scale is not None:
            for t in ds.pipeline:
                if t['type'] == 'Resize':
                    t['scale'] = scale
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = osp.join(root, 'annotations', 'instances_val.json')
    return cfg


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    """Four training and two validation images, 96-128 px, of the four shapes."""
    root = str(tmp_path_factory.mktemp('shapes_coco'))
    return generate_detection_set(root, seed=1, num_train=4, num_val=2,
                                  image_size=(96, 128), instances_per_image=(2, 4))


@pytest.fixture(scope='module')
def cfg_1x():
    return Config.fromfile(CFG_1X)


@pytest.fixture(scope='module')
def model_1x(cfg_1x):
    return _build(cfg_1x.model)


# ------------------------------------------------------------------------------- data set
def test_generated_set_is_coco_and_idempotent(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    root = str(tmp_path / 'coco')
    assert generate_detection_set(root, num_train=5, num_val=3, image_size=(64, 96)) == root
    for split, count in (('train', 5), ('val', 3)):
        coco = COCO(osp.join(root, 'annotations', f'instances_{split}.json'))
        assert len(coco.getImgIds()) == count == len(os.listdir(osp.join(root, split)))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(DET_CATEGORIES)
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            img = np.array(Image.open(osp.join(root, split, info['file_name'])))
            assert img.shape == (info['height'], info['width'], 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert len(anns) >= 1
            union = np.zeros(img.shape[:2], bool)
            for ann in anns:
                assert ann['iscrowd'] == 0 and isinstance(ann['segmentation'], list)
                mask = coco.annToMask(ann).astype(bool)
                ys, xs = np.nonzero(mask)
                # bbox and area are those of the rasterised polygon, i.e. of the shape
                x, y, w, h = ann['bbox']
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1,
                                                 ys.max() + 1)
                assert ann['area'] == mask.sum() == mask_utils.area(
                    coco.annToRLE(ann))
                assert not (union & mask).any(), 'instances must not overlap'
                union |= mask
                # the shape is painted through its mask: one colour (plus noise) inside
                inner = mask.copy()
                inner[1:] &= mask[:-1]
                inner[:-1] &= mask[1:]
                inner[:, 1:] &= mask[:, :-1]
                inner[:, :-1] &= mask[:, 1:]
                assert img[inner].std(0).max() < 20
    # Non-square images of different sizes
    coco = COCO(osp.join(root, 'annotations', 'instances_train.json'))
    assert len({(i['height'], i['width']) for i in coco.dataset['images']}) > 1

    # Idempotent: the same arguments leave a complete set untouched...
    probe = osp.join(root, 'train', '000000.jpg')
    before = os.stat(probe).st_mtime_ns
    generate_detection_set(root, num_train=5, num_val=3, image_size=(64, 96))
    assert os.stat(probe).st_mtime_ns == before
    # ...other arguments (or overwrite=True) regenerate exactly the new set.
    generate_detection_set(root, num_train=2, num_val=1, image_size=(64, 96))
    assert sorted(os.listdir(osp.join(root, 'train'))) == ['000000.jpg', '000001.jpg']
    with open(osp.join(root, 'annotations', 'instances_val.json')) as f:
        assert len(json.load(f)['images']) == 1
    generate_detection_set(root, num_train=2, num_val=1, image_size=(64, 96),
                           overwrite=True)
    assert os.stat(probe).st_mtime_ns != before
    with pytest.raises(ValueError, match='categories'):
        generate_detection_set(root, categories=('circle', 'hexagon'))
    with pytest.raises(ValueError, match='image_size'):
        generate_detection_set(root, image_size=(96, 64))


def test_ground_truth_as_prediction_scores_full_map(tiny_coco):
    """mmdet's CocoDataset + LoadAnnotations + CocoMetric read the set consistently:
    the ground truth, passed through mmdet's own mask decoding, scores mAP 1."""
    from mmdet.datasets import CocoDataset
    from mmdet.evaluation import CocoMetric

    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = CocoDataset(
            data_root=tiny_coco, ann_file='annotations/instances_val.json',
            data_prefix=dict(img='val/'), metainfo=dict(classes=DET_CATEGORIES),
            test_mode=True,
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                      dict(type='PackDetInputs')])
        metric = CocoMetric(ann_file=osp.join(tiny_coco, 'annotations',
                                              'instances_val.json'),
                            metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    samples = []
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        gt = sample.gt_instances
        samples.append(dict(
            img_id=sample.img_id, ori_shape=sample.ori_shape,
            pred_instances=dict(bboxes=gt.bboxes.tensor, labels=gt.labels,
                                scores=torch.ones(len(gt.labels)),
                                masks=gt.masks.to_tensor(torch.bool, 'cpu'))))
    metric.process({}, samples)
    results = metric.compute_metrics(metric.results)
    assert results['bbox_mAP'] == pytest.approx(1.0)
    assert results['segm_mAP'] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ 1x config
def test_1x_config_matches_the_paper_recipe(cfg_1x):
    assert cfg_1x.default_scope == 'mmdet'
    bb = cfg_1x.model.backbone
    assert (bb.type, bb.arch, tuple(bb.out_indices)) == ('GroupMamba', 'tiny', (0, 1, 2, 3))
    assert bb.final_norm and bb.norm_eval and bb.drop_path_rate == 0.2
    assert bb.init_cfg.type == 'Pretrained' and bb.init_cfg.checkpoint
    # training steps replay CUDA graphs, one per batch size (a few dozen on COCO)
    assert bb.execution.cuda_graph == 'train' and bb.execution.max_cuda_graphs >= 48
    assert cfg_1x.model.neck.in_channels == [64, 128, 348, 448]
    opt = cfg_1x.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert cfg_1x.optim_wrapper.constructor == 'MergedGroupsOptimWrapperConstructor'
    assert cfg_1x.train_dataloader.batch_size * 8 == cfg_1x.auto_scale_lr.base_batch_size == 16
    assert cfg_1x.train_cfg.max_epochs == 12
    resize = [t for t in cfg_1x.train_pipeline if t['type'] == 'Resize']
    assert len(resize) == 1 and tuple(resize[0]['scale']) == (1333, 800)
    assert resize[0]['keep_ratio']
    assert set(cfg_1x.val_evaluator.metric) == {'bbox', 'segm'}


def test_1x_lr_schedule_per_epoch(cfg_1x):
    """The lr of each of the 12 epochs: x0.1 from epoch 9 on and again for epoch 12
    (1-indexed), after the 1000-iteration warm-up."""
    from mmengine.registry import PARAM_SCHEDULERS
    warmup_cfg, step_cfg = cfg_1x.param_scheduler
    assert (warmup_cfg.type, warmup_cfg.end, warmup_cfg.start_factor) == ('LinearLR', 1000,
                                                                         0.001)
    assert not warmup_cfg.by_epoch
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))],
                            lr=cfg_1x.optim_wrapper.optimizer.lr)
    sched = PARAM_SCHEDULERS.build(dict(step_cfg, optimizer=opt))
    lrs = []
    for _ in range(cfg_1x.train_cfg.max_epochs):
        lrs.append(opt.param_groups[0]['lr'])
        sched.step()  # the ParamSchedulerHook steps epoch schedulers after each epoch
    assert lrs == pytest.approx([1e-4] * 8 + [1e-5] * 3 + [1e-6], rel=1e-6)


def test_1x_model_size_near_the_paper(model_1x):
    def count(m):
        return sum(p.numel() for p in m.parameters())
    total = count(model_1x)
    parts = dict(backbone=count(model_1x.backbone), neck=count(model_1x.neck),
                 rpn_head=count(model_1x.rpn_head),
                 bbox_head=count(model_1x.roi_head.bbox_head),
                 mask_head=count(model_1x.roi_head.mask_head))
    print(f'\nMask R-CNN GroupMamba-T 1x: {total / 1e6:.2f}M parameters '
          f'(paper: 40M); ' + ', '.join(f'{k} {v / 1e6:.2f}M' for k, v in parts.items()))
    assert sum(parts.values()) == total
    assert abs(total - PAPER_PARAMS) / PAPER_PARAMS < 0.03  # 40.62M


def test_1x_no_weight_decay_groups(cfg_1x, model_1x):
    from mmengine.optim import build_optim_wrapper
    from torch.nn.modules.batchnorm import _BatchNorm
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(model_1x, copy.deepcopy(cfg_1x.optim_wrapper))
    wd = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            wd[id(p)] = group.get('weight_decay', wrapper.optimizer.defaults['weight_decay'])
    norm_params = {id(p) for m in model_1x.modules()
                   if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, _BatchNorm))
                   for p in m.parameters(recurse=False)}
    names = dict(model_1x.named_parameters())
    assert set(wd) == {id(p) for p in names.values() if p.requires_grad}
    kinds = {'A_log': 0, 'D': 0, 'skip_scale': 0, 'norm': 0, 'bias': 0, 'decayed': 0}
    for name, p in names.items():
        leaf = name.rsplit('.', 1)[-1]
        if leaf in ('A_log', 'D', 'skip_scale'):
            kind = leaf
        elif id(p) in norm_params:
            kind = 'norm'
        elif leaf == 'bias':
            kind = 'bias'
        else:
            kind = 'decayed'
        kinds[kind] += 1
        assert wd[id(p)] == (0.05 if kind == 'decayed' else 0.0), (name, kind, wd[id(p)])
    # GroupMamba-T: 19 blocks x 4 groups of A_log and D, one skip_scale per block.
    assert kinds['A_log'] == kinds['D'] == 76 and kinds['skip_scale'] == 19
    assert kinds['norm'] > 0 and kinds['bias'] > 0 and kinds['decayed'] > 0
    assert names['backbone.stages.0.0.mixer.groups.0.A_log'].dim() == 2  # not "flat"


def test_1x_pretrained_init_loads_a_classifier_checkpoint(cfg_1x, model_1x, tmp_path):
    """init_cfg=Pretrained from the config, with an ImageNet classifier's checkpoint (ours:
    ``backbone.*`` keys plus the class-token head whose final norm feeds ``norm3``)."""
    ref = model_1x.backbone.state_dict()
    fake = {f'backbone.{k}': torch.randn_like(v) if v.is_floating_point() else v
            for k, v in ref.items() if not k.startswith('norm3.')}
    fake['head.norm.weight'] = torch.randn_like(ref['norm3.weight'])
    fake['head.norm.bias'] = torch.randn_like(ref['norm3.bias'])
    ckpt = str(tmp_path / 'groupmamba_t_in1k.pth')
    torch.save({'state_dict': fake}, ckpt)
    cfg = copy.deepcopy(cfg_1x.model.backbone)
    cfg.init_cfg.checkpoint = ckpt
    backbone = _build(cfg)
    backbone.init_weights()
    loaded = backbone.state_dict()
    for k in ref:
        src = fake['head.norm.' + k.split('.')[-1]] if k.startswith('norm3.') else \
            fake[f'backbone.{k}']
        assert torch.equal(loaded[k], src), k
    missing = copy.deepcopy(cfg)
    missing.init_cfg.checkpoint = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError):
        _build(missing).init_weights()


def test_1x_train_and_test_iteration_at_reduced_scale(cfg_1x, model_1x, tiny_coco):
    """One optimisation step and one inference step of the unchanged 1x model; only the
    data location and the Resize scale of the pipelines are overridden."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    cfg = _point_at(copy.deepcopy(cfg_1x), tiny_coco, scale=(192, 128))
    model = model_1x
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        train_loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
        test_loader = Runner.build_dataloader(cfg.test_dataloader, seed=0)
        batch = next(iter(train_loader))
        assert len(batch['inputs']) == 2
        assert max(max(x.shape[1:]) for x in batch['inputs']) <= 192

        model.train()
        stem_bn = model.backbone.patch_embeds[0].conv[1]
        assert not stem_bn.training, 'norm_eval keeps the stem BN statistics frozen'
        running_mean = stem_bn.running_mean.clone()
        watched = {n: p.detach().clone() for n, p in model.named_parameters()
                   if n in ('backbone.stages.2.0.mixer.groups.1.in_proj.weight',
                            'neck.fpn_convs.0.conv.weight',
                            'roi_head.mask_head.conv_logits.weight')}
        losses = model.train_step(batch, wrapper)
        for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
            assert torch.isfinite(losses[key]), key
        for n, before in watched.items():
            assert not torch.equal(before, dict(model.named_parameters())[n]), n
        assert torch.equal(running_mean, stem_bn.running_mean)

        model.eval()
        batch = next(iter(test_loader))
        with torch.no_grad():
            outputs = model.test_step(batch)
    assert len(outputs) == 1  # test batch size 1
    out = outputs[0]
    pred = out.pred_instances
    h, w = out.ori_shape
    assert pred.bboxes.shape[1] == 4 and pred.masks.shape[1:] == (h, w)
    assert len(pred.bboxes) == len(pred.scores) == len(pred.labels) == len(pred.masks)


# ---------------------------------------------------------------------------- demo config
def test_demo_trains_and_tests_through_the_tools(tiny_coco, tmp_path):
    """tools/train.py (one epoch on 4 images) then tools/test.py on the saved checkpoint of
    the demo config, with mmdet's CocoMetric reporting bbox and segm mAP."""
    from tools_import import load_tool

    cfg = Config.fromfile(CFG_DEMO)
    model = _build(cfg.model)
    assert model.backbone.embed_dims == [32, 64, 96, 128]
    assert model.roi_head.bbox_head.num_classes == len(DET_CATEGORIES)

    ann_val = osp.join(tiny_coco, 'annotations', 'instances_val.json')
    options = [f'{k}.dataset.data_root={tiny_coco}' for k in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'{k}.num_workers=0' for k in
                ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'{k}.persistent_workers=False' for k in
                ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'val_evaluator.ann_file={ann_val}', f'test_evaluator.ann_file={ann_val}',
                'train_dataloader.batch_size=2', 'train_cfg.max_epochs=1',
                'default_hooks.checkpoint.interval=1']
    work_dir = str(tmp_path / 'work')
    # A Runner makes its config's scope the process-wide default; the context restores the
    # previous one afterwards, so later tests (e.g. mmpretrain builds) are unaffected.
    with DefaultScope.overwrite_default_scope('mmdet'):
        load_tool('train.py').main([CFG_DEMO, '--work-dir', work_dir, '--no-validate',
                                    '--cfg-options', *options])
        ckpt = osp.join(work_dir, 'epoch_1.pth')
        assert osp.isfile(ckpt)
        # loadable under the loading policy (tools/test.py below loads it through it)
        assert unlisted_globals(ckpt) == []
        metrics = load_tool('test.py').main([CFG_DEMO, ckpt, '--work-dir', work_dir,
                                             '--cfg-options', *options])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
