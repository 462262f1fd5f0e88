"""Effective receptive field (ERF) of a GroupMamba backbone, as a PNG heat map.

    python tools/analysis/visualize_erf.py CONFIG [CKPT] --out erf.png \
        [--images DIR_OR_FILES ...] [--num-images 50] [--size 224 224] [--stage 3]

The ERF as in the RepLKNet and VMamba papers: for each image, the gradient of the centre
position of a stage's output map (summed over its channels) with respect to the input
pixels; its absolute value summed over the colour channels, averaged over the images. The
map shows ``log10(1 + ERF)`` scaled to [0, 1] (the gradient spans orders of magnitude),
and the tool prints, for several shares t of the total, the smallest centred square
holding that share as a fraction of the image area (RepLKNet's high-contribution area
ratio: larger means a wider ERF).

The backbone comes from the config of any codebase (classification, detection,
segmentation) with the config's data normalisation; CKPT is one of our checkpoints (a
classifier's or detector's ``backbone.*``) or a released one, and without it the backbone
is randomly initialised (the ERF before training). Images: files or folders; without
``--images``, the test set of the config (``test_dataloader.dataset``'s image files).
"""
import argparse
import glob
import os
import os.path as osp
import sys

import numpy as np
import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmgroupmamba.apis import backbone_from_config  # noqa: E402

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
AREA_SHARES = (0.2, 0.3, 0.5, 0.99)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config with a GroupMamba backbone')
    parser.add_argument('checkpoint', nargs='?', help='weights (default: random init)')
    parser.add_argument('--out', default='erf.png', help='output PNG')
    parser.add_argument('--images', nargs='+',
                        help='image files or folders (default: the config\'s test set)')
    parser.add_argument('--num-images', type=int, default=50,
                        help='average over at most this many images')
    parser.add_argument('--size', nargs=2, type=int, default=[224, 224],
                        metavar=('H', 'W'), help='input size the images are resized to')
    parser.add_argument('--stage', type=int, default=3,
                        help='backbone stage whose centre output is differentiated (0-3)')
    return parser.parse_args(argv)


def normalisation(cfg):
    """(mean, std, bgr_to_rgb) of the config's data preprocessor."""
    pre = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = pre.get('mean', [123.675, 116.28, 103.53])
    std = pre.get('std', [58.395, 57.12, 57.375])
    to_rgb = pre.get('to_rgb', pre.get('bgr_to_rgb', False))
    return (torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(3, 1, 1), bool(to_rgb))


def find_images(paths):
    files = []
    for path in paths:
        if osp.isdir(path):
            files += sorted(f for f in glob.glob(osp.join(path, '**', '*'), recursive=True)
                            if f.lower().endswith(IMAGE_EXTS))
        elif osp.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f'--images: {path!r} is neither a file nor a folder.')
    if not files:
        raise FileNotFoundError(f'--images: no images ({", ".join(IMAGE_EXTS)}) in {paths}.')
    return files


def test_set_images(cfg):
    """The image folder of the config's test set (``data_root`` / its image prefix)."""
    ds = cfg.test_dataloader.dataset
    prefix = ds.get('data_prefix', '')
    if isinstance(prefix, dict):
        prefix = prefix.get('img', prefix.get('img_path', ''))
    folder = osp.join(ds.get('data_root', ''), prefix)
    if not osp.isdir(folder):
        raise FileNotFoundError(
            f'No --images given and the config\'s test images {folder!r} do not exist '
            '(generate the demo data, or pass --images).')
    return find_images([folder])


def load_image(path, size, mean, std, to_rgb):
    import mmcv
    img = mmcv.imread(path, channel_order='rgb' if to_rgb else 'bgr')
    if img is None:
        raise ValueError(f'Cannot read image {path!r}.')
    img = mmcv.imresize(img, (size[1], size[0]), interpolation='bilinear')
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return ((x - mean) / std)[None]


def effective_receptive_field(backbone, images):
    """Mean over ``images`` (each (1, 3, H, W)) of |d centre output / d input|, summed
    over the output's channels and the input's colour channels: an (H, W) array."""
    total, count = None, 0
    for x in images:
        x = x.clone().requires_grad_(True)
        out, = backbone(x)                                   # (1, C, h, w)
        h, w = out.shape[-2:]
        out[0, :, h // 2, w // 2].sum().backward()
        grad = x.grad[0].abs().sum(0).double()
        total = grad if total is None else total + grad
        count += 1
    return (total / count).numpy()


def high_contribution_area_ratios(erf, shares=AREA_SHARES):
    """For each share t: the area of the smallest square centred on the image centre that
    holds a share t of the ERF's total, as a fraction of the image area."""
    H, W = erf.shape
    cy, cx = H // 2, W // 2
    total = erf.sum()
    ratios = {}
    for t in shares:
        for r in range(max(H, W)):
            window = erf[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
            if window.sum() >= t * total:
                ratios[t] = window.size / erf.size
                break
        else:
            ratios[t] = 1.0
    return ratios


def save_heatmap(erf, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shown = np.log10(1 + erf)
    shown = shown / shown.max() if shown.max() > 0 else shown
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(shown, cmap='RdYlGn', vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    from mmengine.config import Config
    args = parse_args(argv)
    if not 0 <= args.stage <= 3:
        raise ValueError(f'--stage must be 0-3, got {args.stage}.')
    if args.num_images < 1:
        raise ValueError(f'--num-images must be at least 1, got {args.num_images}.')
    cfg = Config.fromfile(args.config)
    backbone = backbone_from_config(cfg, args.checkpoint, out_indices=(args.stage, ))
    mean, std, to_rgb = normalisation(cfg)
    files = find_images(args.images) if args.images else test_set_images(cfg)
    files = files[:args.num_images]
    erf = effective_receptive_field(
        backbone, (load_image(f, args.size, mean, std, to_rgb) for f in files))
    ratios = high_contribution_area_ratios(erf)
    weights = osp.basename(args.checkpoint) if args.checkpoint else 'random init'
    title = (f'ERF of {osp.splitext(osp.basename(args.config))[0]}, stage {args.stage}\n'
             f'{weights}, {len(files)} images, {args.size[0]}x{args.size[1]}')
    save_heatmap(erf, args.out, title)
    print(title.replace('\n', ': '))
    print('high-contribution area ratio: ' + ', '.join(
        f't={t:g}: {r:.3f}' for t, r in ratios.items()))
    print(f'ERF written to {args.out}')
    return erf, ratios


if __name__ == '__main__':
    main()
