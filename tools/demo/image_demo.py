"""Run a trained model on one image and draw its prediction with the codebase's visualizer.

    python tools/demo/image_demo.py IMAGE CONFIG CKPT [--out-file F] [--device cpu]
        [--score-thr 0.3] [--opacity 0.5]

The config's ``default_scope`` selects the task:

* ``mmpretrain``: class and score (``ImageClassificationInferencer``, drawn by
  ``UniversalVisualizer``);
* ``mmdet``: boxes and masks above ``--score-thr`` (``init_detector`` /
  ``inference_detector``, drawn by ``DetLocalVisualizer``);
* ``mmseg``: the segmentation map over the image (``init_model`` / ``inference_model``,
  drawn by ``SegLocalVisualizer``).

It prints the prediction and writes the drawing to ``--out-file`` (default
``<image name>_<task>.png`` beside the working directory). Small images (the demo sets are
64-192 px) are enlarged for drawing so that the labels stay legible. Works on CPU with
the checkpoints of ``tools/run_demo.sh`` and of the detection and segmentation demo
configs (``configs/demo/``).
"""
import argparse
import os
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import mmgroupmamba  # noqa: E402,F401  (registers the modules, applies the mmengine fixes)

TASKS = {'mmpretrain': 'cls', 'mmdet': 'det', 'mmseg': 'seg'}
# Drawings of smaller images are enlarged to this short side (text and lines keep their
# pixel size, so on a 64 px image they would cover it).
MIN_DRAW_SIDE = 256


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='mmpretrain, mmdet or mmseg config')
    parser.add_argument('checkpoint', help='checkpoint of that config')
    parser.add_argument('--out-file', help='output image (default: <image>_<task>.png)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: smallest score drawn and printed')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the drawn map')
    return parser.parse_args(argv)


def read_rgb(path):
    import mmcv
    img = mmcv.imread(path, channel_order='rgb')
    if img is None:
        raise FileNotFoundError(f'Cannot read image {path!r}.')
    return img


def enlarged(img):
    """``img`` scaled up (nearest neighbour) so its short side is at least
    :data:`MIN_DRAW_SIDE`, and the factor (1 for large images)."""
    import mmcv
    factor = max(1, int(np.ceil(MIN_DRAW_SIDE / min(img.shape[:2]))))
    if factor == 1:
        return img, 1
    h, w = img.shape[:2]
    return mmcv.imresize(img, (w * factor, h * factor), interpolation='nearest'), factor


def classify(image, cfg, checkpoint, device, out_file):
    from mmpretrain.apis import ImageClassificationInferencer
    from mmpretrain.visualization import UniversalVisualizer
    inferencer = ImageClassificationInferencer(cfg, pretrained=checkpoint, device=device)
    sample = inferencer(image, return_datasamples=True)[0]
    classes = inferencer.classes
    label = int(sample.pred_label)
    score = float(sample.pred_score[label])
    name = classes[label] if classes else str(label)
    img, _ = enlarged(read_rgb(image))
    UniversalVisualizer().visualize_cls(
        img, sample, classes=classes, draw_gt=False, draw_pred=True, draw_score=True,
        out_file=out_file)
    print(f'{image}: {name} (class {label}), score {score:.4f}')
    return dict(pred_label=label, pred_class=name, pred_score=score)


def detect(image, cfg, checkpoint, device, out_file, score_thr):
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    model = init_detector(cfg, checkpoint, device=device)
    sample = inference_detector(model, image)
    img, factor = enlarged(read_rgb(image))
    pred = sample.pred_instances
    if factor > 1:  # draw on the enlarged image: scale the boxes, enlarge the masks
        import torch.nn.functional as F
        scaled = pred.clone()  # a new container: the printed result keeps image pixels
        scaled.bboxes = pred.bboxes * factor
        if 'masks' in pred:
            scaled.masks = F.interpolate(pred.masks[:, None].float(),
                                         scale_factor=factor)[:, 0] > 0.5
        sample = sample.clone()
        sample.pred_instances = scaled
    # a registry build returns the existing visualizer of that name: one name per task
    visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='image_demo_det'))
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('result', img, data_sample=sample, draw_gt=False,
                              show=False, out_file=out_file, pred_score_thr=score_thr)
    classes = model.dataset_meta['classes']
    keep = pred.scores >= score_thr
    found = [dict(pred_class=classes[int(label)], score=float(score),
                  bbox=[round(float(v), 1) for v in box],
                  mask_area=int(mask.sum()) if mask is not None else None)
             for label, score, box, mask in zip(
                 pred.labels[keep], pred.scores[keep], pred.bboxes[keep],
                 pred.masks[keep] if 'masks' in pred else [None] * int(keep.sum()))]
    print(f'{image}: {len(found)} instances with score >= {score_thr}')
    for d in found:
        print(f'  {d["pred_class"]:>10s} {d["score"]:.3f} box {d["bbox"]}'
              + (f' mask {d["mask_area"]} px' if d['mask_area'] is not None else ''))
    return found


def segment(image, cfg, checkpoint, device, out_file, opacity):
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import VISUALIZERS
    model = init_model(cfg, checkpoint, device=device)
    sample = inference_model(model, image)
    seg = sample.pred_sem_seg.data[0].cpu().numpy()
    img, factor = enlarged(read_rgb(image))
    if factor > 1:  # draw on the enlarged image: enlarge the map
        from mmengine.structures import PixelData
        data = sample.pred_sem_seg.data
        sample = sample.clone()
        sample.pred_sem_seg = PixelData(data=data.repeat_interleave(
            factor, dim=1).repeat_interleave(factor, dim=2))
    visualizer = VISUALIZERS.build(dict(type='SegLocalVisualizer', name='image_demo_seg'))
    visualizer.alpha = opacity
    visualizer.set_dataset_meta(model.dataset_meta['classes'],
                                model.dataset_meta['palette'])
    visualizer.add_datasample('result', img, data_sample=sample, draw_gt=False,
                              draw_pred=True, show=False, out_file=out_file)
    classes = model.dataset_meta['classes']
    labels, counts = np.unique(seg, return_counts=True)
    shares = {classes[int(k)]: float(c) / seg.size for k, c in zip(labels, counts)
              if 0 <= k < len(classes)}
    print(f'{image}: ' + ', '.join(f'{k} {v:.1%}' for k, v in
                                   sorted(shares.items(), key=lambda kv: -kv[1])))
    return shares


def main(argv=None):
    from mmengine.config import Config
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise FileNotFoundError(f'Image {args.image!r} not found.')
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'Checkpoint {args.checkpoint!r} not found.')
    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ValueError(f'{args.config}: default_scope {scope!r} is none of '
                         f'{sorted(TASKS)}; cannot tell the task.')
    task = TASKS[scope]
    out_file = args.out_file or f'{osp.splitext(osp.basename(args.image))[0]}_{task}.png'
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    if task == 'cls':
        result = classify(args.image, cfg, args.checkpoint, args.device, out_file)
    elif task == 'det':
        result = detect(args.image, cfg, args.checkpoint, args.device, out_file,
                        args.score_thr)
    else:
        result = segment(args.image, cfg, args.checkpoint, args.device, out_file,
                         args.opacity)
    print(f'drawing written to {out_file}')
    return result


if __name__ == '__main__':
    main()
