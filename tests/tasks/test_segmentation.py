"""UperNet on GroupMamba (mmseg): the 160k ADE20K config, its optimizer rules, training and
single-scale / multi-scale-flip testing through tools/train.py and tools/test.py at a reduced
size, odd input sizes in whole-image inference, and the generated ADE20K-layout set."""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

import mmgroupmamba  # noqa: F401
from mmgroupmamba.datasets.synthetic_ade import (ADE_INDICES, SEG_CLASSES, SEG_PALETTE,
                                                 generate_segmentation_set)
from mmgroupmamba.utils import unlisted_globals
from conftest import REPO_ROOT
from tools_import import load_tool

CFG_160K = osp.join(REPO_ROOT, 'configs', 'upernet_groupmamba_t_160k_ade20k.py')
CFG_DEMO = osp.join(REPO_ROOT, 'configs', 'demo', 'upernet_groupmamba_demo.py')
PAPER_PARAMS = 49e6


def _build_model(cfg_model):
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return revert_sync_batchnorm(MODELS.build(cfg_model))


@pytest.fixture(scope='module')
def tiny_ade(tmp_path_factory):
    """Two training images and one validation image of odd, non-square sizes."""
    root = str(tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016')
    return generate_segmentation_set(root, seed=1, num_train=2, num_val=1,
                                     size_range=(41, 59))


# ------------------------------------------------------------------------------- data set
def test_generated_set_layout_labels_and_idempotence(tmp_path):
    root = str(tmp_path / 'ade')
    assert generate_segmentation_set(root, num_train=6, num_val=3,
                                     size_range=(33, 47)) == root
    for split, count in (('training', 6), ('validation', 3)):
        imgs = sorted(os.listdir(osp.join(root, 'images', split)))
        anns = sorted(os.listdir(osp.join(root, 'annotations', split)))
        assert len(imgs) == len(anns) == count
        assert all(f.endswith('.jpg') for f in imgs) and all(f.endswith('.png') for f in anns)
        assert [f[:-4] for f in imgs] == [f[:-4] for f in anns]
    # ADE20K label space with reduce_zero_label semantics: 0 = unlabelled, else 1 + ADE id.
    allowed = {0} | {i + 1 for i in ADE_INDICES}
    seen, shapes = set(), set()
    for f in sorted(os.listdir(osp.join(root, 'annotations', 'training'))):
        lab = np.array(Image.open(osp.join(root, 'annotations', 'training', f)))
        img = Image.open(osp.join(root, 'images', 'training', f[:-4] + '.jpg'))
        assert lab.dtype == np.uint8 and lab.shape == (img.height, img.width)
        seen |= set(np.unique(lab).tolist())
        shapes.add(lab.shape)
    assert seen <= allowed and {0, 1, 4, 23} <= seen  # unlabelled, wall, floor, painting
    assert any(h != w for h, w in shapes)

    # Idempotent: a complete set with the same arguments is left untouched...
    probe = osp.join(root, 'annotations', 'training', 'ade_train_00000000.png')
    before = os.stat(probe).st_mtime_ns
    generate_segmentation_set(root, num_train=6, num_val=3, size_range=(33, 47))
    assert os.stat(probe).st_mtime_ns == before
    # ...while other arguments regenerate it, leaving exactly the new set.
    generate_segmentation_set(root, num_train=4, num_val=2, size_range=(33, 47))
    assert len(os.listdir(osp.join(root, 'images', 'training'))) == 4
    assert len(os.listdir(osp.join(root, 'annotations', 'validation'))) == 2
    with pytest.raises(ValueError, match='size_range'):
        generate_segmentation_set(str(tmp_path / 'bad'), size_range=(8, 4))


def test_ade20k_dataset_reads_the_generated_set(tiny_ade):
    """mmseg's ADE20KDataset: the 150-class view keeps ADE ids, the demo's metainfo maps
    them to 0..4; unlabelled pixels become 255 either way."""
    from mmseg.registry import DATASETS
    demo = Config.fromfile(CFG_DEMO)
    assert tuple(demo.metainfo.classes) == SEG_CLASSES
    assert [list(c) for c in demo.metainfo.palette] == [list(c) for c in SEG_PALETTE]
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', reduce_zero_label=True)]
    common = dict(type='ADE20KDataset', data_root=tiny_ade, pipeline=pipeline,
                  data_prefix=dict(img_path='images/training',
                                   seg_map_path='annotations/training'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        full = DATASETS.build(common)
        demo_set = DATASETS.build(dict(common, metainfo=demo.metainfo))
    assert len(full) == len(demo_set) == 2
    assert len(full.metainfo['classes']) == 150 and len(demo_set.metainfo['classes']) == 5
    for i in range(2):
        raw = np.array(Image.open(full.get_data_info(i)['seg_map_path']))
        ade = full[i]['gt_seg_map']
        ours = demo_set[i]['gt_seg_map']
        assert np.array_equal(ade == 255, raw == 0) and np.array_equal(ours == 255, raw == 0)
        for k, ade_id in enumerate(ADE_INDICES):
            assert np.array_equal(ade == ade_id, raw == ade_id + 1)
            assert np.array_equal(ours == k, raw == ade_id + 1)


# ------------------------------------------------------------------------- 160k config
def test_160k_config_is_the_recipe():
    cfg = Config.fromfile(CFG_160K)
    assert cfg.default_scope == 'mmseg' and 'mmgroupmamba' in cfg.custom_imports.imports
    m = cfg.model
    assert m.type == 'EncoderDecoder' and m.test_cfg.mode == 'whole'
    assert m.backbone.type == 'GroupMamba' and m.backbone.arch == 'tiny'
    assert m.backbone.drop_path_rate == 0.2
    assert m.backbone.init_cfg.type == 'Pretrained' and m.backbone.init_cfg.checkpoint
    assert m.backbone.execution.cuda_graph == 'train'   # crops: one size; testing eager
    assert m.decode_head.type == 'UPerHead' and m.decode_head.channels == 512
    assert list(m.decode_head.in_channels) == [64, 128, 348, 448]
    assert m.decode_head.num_classes == m.auxiliary_head.num_classes == 150
    assert m.auxiliary_head.type == 'FCNHead' and m.auxiliary_head.in_channels == 348
    assert m.auxiliary_head.loss_decode.loss_weight == 0.4
    assert tuple(m.data_preprocessor.size) == (512, 512)
    assert m.data_preprocessor.seg_pad_val == 255

    crop = [t for t in cfg.train_pipeline if t.type == 'RandomCrop'][0]
    assert tuple(crop.crop_size) == (512, 512) and crop.cat_max_ratio == 0.75
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.train_dataloader.dataset.type == cfg.test_dataloader.dataset.type == \
        'ADE20KDataset'
    assert cfg.val_evaluator.type == 'IoUMetric' and cfg.val_evaluator.iou_metrics == ['mIoU']

    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 6e-5, 0.01)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.power) == ('LinearLR', 1500, 'PolyLR', 1.)
    assert poly.begin == 1500 and poly.end == cfg.train_cfg.max_iters == 160000

    assert cfg.tta_model.type == 'SegTTAModel'
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug'
    assert [t.scale_factor for t in tta.transforms[0]] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert sorted(t.prob for t in tta.transforms[1]) == [0., 1.]


def test_160k_model_size_pretrained_init_and_no_decay_groups(tmp_path):
    from mmengine.optim import build_optim_wrapper
    from mmgroupmamba import GroupMamba
    # An ImageNet classifier checkpoint as tools/train.py writes it (`backbone.*` keys).
    classifier = GroupMamba('tiny', out_indices=(3, ), final_norm=False)
    ckpt = str(tmp_path / 'groupmamba-t_in1k.pth')
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in classifier.state_dict().items()}}, ckpt)
    cfg = Config.fromfile(CFG_160K)
    cfg.model.backbone.init_cfg.checkpoint = ckpt
    model = _build_model(cfg.model)
    model.init_weights()  # what Runner.train() does first
    probe = 'stages.2.5.mixer.groups.1.x_proj.weight'
    assert torch.equal(model.backbone.state_dict()[probe], classifier.state_dict()[probe])
    total = sum(p.numel() for p in model.parameters())
    print(f'UperNet GroupMamba-T: {total / 1e6:.2f}M parameters (backbone '
          f'{sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f}M); '
          f'paper: 49M')
    assert abs(total - PAPER_PARAMS) / PAPER_PARAMS < 0.05

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay_of = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            decay_of[id(p)] = group['weight_decay']
    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
    checked = dict(A_log=0, D=0, skip_scale=0, norm=0, bias=0, decayed=0)
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f'{mod_name}.{p_name}'
            if p_name in ('A_log', 'D', 'skip_scale'):
                kind = p_name
            elif isinstance(module, norms):
                kind = 'norm'
            elif p_name == 'bias' or p.ndim <= 1:
                kind = 'bias'
            else:
                kind = 'decayed'
            checked[kind] += 1
            expected = 0.01 if kind == 'decayed' else 0.
            assert decay_of[id(p)] == expected, f'{name} ({kind}): wd {decay_of[id(p)]}'
    # A_log is 2-D (d, N): only the custom key keeps it out of weight decay.
    assert all(checked.values()), checked
    assert checked['A_log'] == checked['D'] == 4 * 19 and checked['skip_scale'] == 19


def _reduced_160k_cfg(data_root, work_dir):
    """The 160k config at a CPU-sized scale: tiny images, crops of 64, one iteration."""
    cfg = Config.fromfile(CFG_160K)
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.train_pipeline[2].scale = (256, 64)     # RandomResize (2048, 512) / 8
    cfg.train_pipeline[3].crop_size = (64, 64)  # RandomCrop
    cfg.test_pipeline[1].scale = (256, 64)      # Resize (2048, 512) / 8
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg[loader]
        dl.num_workers, dl.persistent_workers = 0, False
        dl.dataset.data_root = data_root
        dl.dataset.pipeline = cfg.train_pipeline if loader == 'train_dataloader' \
            else cfg.test_pipeline
    cfg.train_cfg.max_iters = 1
    cfg.param_scheduler[0].end = 1
    cfg.param_scheduler[1].begin, cfg.param_scheduler[1].end = 1, 2
    cfg.default_hooks.logger.interval = 1
    cfg.env_cfg.cudnn_benchmark = False
    cfg.work_dir = work_dir
    return cfg


def test_160k_train_and_test_iterations(tiny_ade, tmp_path):
    """tools/train.py for one iteration (then its validation), tools/test.py single-scale
    and with --tta (6 scales x 2 flips) on a 47x57-ish image, all with the full model."""
    train_tool, test_tool = load_tool('train.py'), load_tool('test.py')
    cfg = _reduced_160k_cfg(tiny_ade, str(tmp_path / 'train'))
    cfg.visualizer.name = 'seg_test_train'
    cfg_path = str(tmp_path / 'reduced_160k.py')
    cfg.dump(cfg_path)
    train_tool.main([cfg_path, '--work-dir', str(tmp_path / 'train')])
    ckpt = tmp_path / 'train' / 'iter_1.pth'
    assert ckpt.exists()
    # loadable under the loading policy (tools/test.py below loads it through it)
    assert unlisted_globals(str(ckpt)) == []

    results = {}
    for tta in (False, True):
        cfg.visualizer.name = f'seg_test_tta{tta}'
        cfg.dump(cfg_path)
        out = str(tmp_path / f'preds_tta{tta}.pkl')
        argv = [cfg_path, str(ckpt), '--work-dir', str(tmp_path / f'test{tta}'), '--out', out]
        metrics = test_tool.main(argv + (['--tta'] if tta else []))
        assert 0 <= metrics['mIoU'] <= 100, metrics
        import pickle
        with open(out, 'rb') as f:
            preds = pickle.load(f)
        results[tta] = preds
    val_img = os.listdir(osp.join(tiny_ade, 'images', 'validation'))[0]
    h, w = np.array(Image.open(osp.join(tiny_ade, 'annotations', 'validation',
                                        val_img[:-4] + '.png'))).shape
    for tta, preds in results.items():
        assert len(preds) == 1
        # Predictions are at the original (odd) resolution in both modes.
        assert tuple(preds[0]['pred_sem_seg']['data'].shape[-2:]) == (h, w), tta


@pytest.mark.parametrize('hw', [(47, 61), (75, 101), (64, 64), (33, 129)])
def test_whole_inference_odd_sizes(hw):
    """UPerHead/FCNHead align the backbone's odd-sized maps; logits match the input size."""
    from mmseg.structures import SegDataSample
    cfg = Config.fromfile(CFG_DEMO)
    model = _build_model(cfg.model).eval()
    h, w = hw
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         pad_shape=(h, w), padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, h, w))
        assert [f.shape[-2:] for f in feats][0] == ((h + 3) // 4, (w + 3) // 4)
        out = model.predict(torch.randn(1, 3, h, w), [sample])[0]
    assert out.seg_logits.data.shape == (5, h, w)
    assert out.pred_sem_seg.data.shape == (1, h, w)
