"""tools/demo/image_demo.py for the three tasks on CPU, with checkpoints that tools/train.py
writes for the demo configs (trained for one short epoch / two iterations here)."""
import glob
import os.path as osp

import numpy as np
import pytest
from mmengine.registry import DefaultScope
from PIL import Image

from conftest import REPO_ROOT
from mmgroupmamba.datasets import SHAPE_CLASSES, generate_classification_set
from mmgroupmamba.datasets.synthetic_ade import SEG_CLASSES, generate_segmentation_set
from mmgroupmamba.datasets.synthetic_coco import DET_CATEGORIES, generate_detection_set
from tools_import import _load

image_demo = _load('image_demo', 'demo', 'image_demo.py')
train_tool = _load('demo_train', 'train.py')
CONFIGS = {t: osp.join(REPO_ROOT, 'configs', 'demo', name) for t, name in (
    ('cls', 'groupmamba-demo_shapes.py'), ('det', 'maskrcnn_groupmamba_demo.py'),
    ('seg', 'upernet_groupmamba_demo.py'))}
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _train(task, work_dir, options):
    options = options + [f'{k}.num_workers=0' for k in LOADERS] + [
        f'{k}.persistent_workers=False' for k in LOADERS]
    scope = {'cls': 'mmpretrain', 'det': 'mmdet', 'seg': 'mmseg'}[task]
    with DefaultScope.overwrite_default_scope(scope):
        train_tool.main([CONFIGS[task], '--work-dir', work_dir, '--no-validate',
                         '--cfg-options', *options])
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


@pytest.fixture(scope='module')
def cls_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cls_demo')
    root = generate_classification_set(str(tmp / 'shapes'), num_train_per_class=2,
                                       num_val_per_class=1, image_size=64)
    ckpt = _train('cls', str(tmp / 'work'), [f'{k}.dataset.data_root={root}' for k in LOADERS]
                  + ['train_cfg.max_epochs=1', 'default_hooks.checkpoint.interval=1'])
    return ckpt, sorted(glob.glob(osp.join(root, 'val', '*', '*')))[0]


@pytest.fixture(scope='module')
def det_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('det_demo')
    root = generate_detection_set(str(tmp / 'coco'), seed=1, num_train=2, num_val=1,
                                  image_size=(96, 128), instances_per_image=(2, 3))
    ann = osp.join(root, 'annotations', 'instances_val.json')
    ckpt = _train('det', str(tmp / 'work'),
                  [f'{k}.dataset.data_root={root}' for k in LOADERS]
                  + [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
                     'train_dataloader.batch_size=2', 'train_cfg.max_epochs=1',
                     'default_hooks.checkpoint.interval=1'])
    return ckpt, sorted(glob.glob(osp.join(root, 'val', '*')))[0]


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('seg_demo')
    root = generate_segmentation_set(str(tmp / 'ade'), seed=1, num_train=2, num_val=1,
                                     size_range=(96, 128))
    ckpt = _train('seg', str(tmp / 'work'),
                  [f'{k}.dataset.data_root={root}' for k in LOADERS]
                  + ['train_dataloader.batch_size=2', 'train_cfg.max_iters=2',
                     'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=1',
                     'param_scheduler.1.begin=1', 'param_scheduler.1.end=2'])
    return ckpt, sorted(glob.glob(osp.join(root, 'images', 'validation', '*')))[0]


def _drawn(out_file, image):
    """The written drawing as an array, checked to be an enlarged copy of ``image`` with
    something drawn on it."""
    with Image.open(image) as src, Image.open(out_file) as out:
        src, out = np.asarray(src.convert('RGB')), np.asarray(out.convert('RGB'))
    factor = out.shape[0] // src.shape[0]
    assert factor >= 1 and out.shape[:2] == (src.shape[0] * factor, src.shape[1] * factor)
    assert min(out.shape[:2]) >= image_demo.MIN_DRAW_SIDE
    plain = np.kron(src, np.ones((factor, factor, 1), src.dtype))
    changed = (np.abs(out.astype(int) - plain).max(-1) > 8).mean()
    assert changed > 0.005, 'nothing was drawn'
    return out, changed


def test_classification_demo(cls_run, tmp_path, capsys):
    ckpt, image = cls_run
    out = str(tmp_path / 'cls.png')
    result = image_demo.main([image, CONFIGS['cls'], ckpt, '--out-file', out])
    assert result['pred_class'] in SHAPE_CLASSES and 0 < result['pred_score'] <= 1
    assert f'{result["pred_class"]} (class {result["pred_label"]})' in capsys.readouterr().out
    _drawn(out, image)


def test_detection_demo(det_run, tmp_path):
    ckpt, image = det_run
    out = str(tmp_path / 'det.png')
    # an untrained detector's scores are low: draw everything it proposes
    found = image_demo.main([image, CONFIGS['det'], ckpt, '--out-file', out,
                             '--score-thr', '0'])
    assert found, 'a threshold of 0 keeps every detection'
    h, w = np.asarray(Image.open(image)).shape[:2]
    for d in found:
        assert d['pred_class'] in DET_CATEGORIES and 0 <= d['score'] <= 1
        x1, y1, x2, y2 = d['bbox']
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert d['mask_area'] is not None
    _drawn(out, image)


def test_segmentation_demo(seg_run, tmp_path):
    ckpt, image = seg_run
    out = str(tmp_path / 'seg.png')
    shares = image_demo.main([image, CONFIGS['seg'], ckpt, '--out-file', out,
                              '--opacity', '0.6'])
    assert set(shares) <= set(SEG_CLASSES) and sum(shares.values()) == pytest.approx(1)
    _, changed = _drawn(out, image)
    assert changed > 0.3, 'the map covers the whole image'


def test_bad_inputs_are_named(cls_run, tmp_path):
    ckpt, image = cls_run
    with pytest.raises(FileNotFoundError, match='Image'):
        image_demo.main([str(tmp_path / 'none.png'), CONFIGS['cls'], ckpt])
    with pytest.raises(FileNotFoundError, match='Checkpoint'):
        image_demo.main([image, CONFIGS['cls'], str(tmp_path / 'none.pth')])


# The Grad-CAM target layer the README documents: mmpretrain's vis_cam.py takes a 4-D
# activation as (B, C, H, W); inside the blocks our maps are channels-last, and the
# stride-32 convolution of the last stage's embedding is the last layer with NCHW output.
CAM_LAYER = 'backbone.patch_embeds.3.proj'


def test_grad_cam_with_mmpretrains_vis_cam(cls_run, tmp_path):
    pytest.importorskip('pytorch_grad_cam')
    import subprocess
    import sys

    import mmpretrain
    import torch
    from mmpretrain import get_model
    ckpt, image = cls_run
    model = get_model(CONFIGS['cls'], pretrained=ckpt)
    seen = []
    dict(model.named_modules())[CAM_LAYER].register_forward_hook(
        lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64), mode='tensor')
    assert seen == [(1, 128, 2, 2)]  # NCHW, the last stage's width, stride 32

    vis_cam = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'visualization',
                       'vis_cam.py')
    out = tmp_path / 'cam.png'
    run = subprocess.run([sys.executable, vis_cam, image, CONFIGS['cls'], ckpt,
                          '--target-layers', CAM_LAYER, '--save-path', str(out)],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    with Image.open(image) as src, Image.open(out) as cam:
        assert cam.format == 'PNG' and cam.size == src.size
        src, cam = np.asarray(src.convert('RGB')), np.asarray(cam.convert('RGB'))
    assert np.abs(cam.astype(int) - src).mean() > 10, 'the heat map is blended in'
