"""A small, learnable instance-segmentation set in COCO format.

Filled shapes of a few categories (circle, square, triangle, cross) at random places,
sizes, rotations and colours on noisy, shaded backgrounds; several non-overlapping
instances per image. The category is given by the shape only (colours are random), so a
detector has to learn shape, and every mask is exact: the shape is painted into the image
through the very mask that pycocotools rasterises from the annotated polygon. No
downloads, deterministic for a seed. Layout (what mmdet's ``CocoDataset`` reads)::

    root/train/000000.jpg ...
    root/val/000000.jpg ...
    root/annotations/instances_train.json
    root/annotations/instances_val.json

Annotations carry ``bbox`` (x, y, w, h), ``area`` (mask pixels), ``iscrowd=0`` and a
``segmentation`` polygon, as COCO's non-crowd instances do.
"""
import json
import os
import os.path as osp
import shutil

import numpy as np
from PIL import Image

DET_CATEGORIES = ('circle', 'square', 'triangle', 'cross')
# Part of the completeness signature: bump it when the output of the same arguments changes.
_FORMAT_VERSION = 3


def _unit_polygon(name, rng):
    """Vertices (K, 2) of a shape of circumradius ~1 centred at 0, randomly rotated."""
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == 'square':
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) / np.sqrt(2)
    elif name == 'triangle':
        t = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == 'cross':
        w = 0.3  # half width of an arm (arm half length 1)
        pts = np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1],
                        [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]], np.float64)
    else:
        raise KeyError(f'Unknown shape category {name!r}; known: {DET_CATEGORIES}.')
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return pts @ rot.T


def _background(h, w, rng):
    """A shaded background: random base colour, a linear gradient and blotches."""
    base = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    gy, gx = rng.uniform(-60, 60, 2)
    shade = (gy * (yy / h - 0.5) + gx * (xx / w - 0.5))[..., None]
    img = base[None, None] + shade * rng.uniform(0.5, 1.0, 3)[None, None]
    # Low-frequency blotches (an upsampled coarse noise map) so the background is not flat.
    coarse = rng.normal(0, 20, (4, 4, 3)).astype(np.float32)
    blot = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BILINEAR))
                     for c in range(3)], axis=-1)
    return img + blot


def _distinct_colour(bg_mean, rng):
    while True:
        c = rng.uniform(0, 255, 3)
        if np.abs(c - bg_mean).sum() > 150:  # keep the shape visible against the background
            return c


def _render_image(h, w, categories, rng, num_instances, radius_range):
    from pycocotools import mask as mask_utils

    img = _background(h, w, rng)
    bg_mean = img.reshape(-1, 3).mean(0)
    taken = []  # polygon extents (x0, y0, x1, y1) of the placed instances
    instances = []
    for _ in range(num_instances):
        for _attempt in range(30):
            label = int(rng.integers(len(categories)))
            r = rng.uniform(*radius_range) * min(h, w)
            poly = _unit_polygon(categories[label], rng) * r
            lo, hi = poly.min(0), poly.max(0)
            cx = rng.uniform(2 - lo[0], w - 2 - hi[0]) if w - 4 > hi[0] - lo[0] else None
            cy = rng.uniform(2 - lo[1], h - 2 - hi[1]) if h - 4 > hi[1] - lo[1] else None
            if cx is None or cy is None:
                continue
            poly = poly + np.array([cx, cy])
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            # No overlap (2 px gap): every annotated mask is exactly what is visible.
            if any(x0 < bx1 + 2 and bx0 < x1 + 2 and y0 < by1 + 2 and by0 < y1 + 2
                   for bx0, by0, bx1, by1 in taken):
                continue
            flat = [round(float(v), 2) for v in poly.reshape(-1)]
            rle = mask_utils.merge(mask_utils.frPyObjects([flat], h, w))
            mask = mask_utils.decode(rle).astype(bool)
            if mask.sum() < 16:
                continue
            img[mask] = _distinct_colour(bg_mean, rng)
            ys, xs = np.nonzero(mask)
            bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            taken.append((x0, y0, x1, y1))
            instances.append(dict(
                category_id=label + 1,
                bbox=[float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                area=float(mask_utils.area(rle)),
                iscrowd=0,
                segmentation=[flat]))
            break
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), instances


def generate_detection_set(root, seed=0, overwrite=False, num_train=200, num_val=50,
                           image_size=(128, 160), instances_per_image=(2, 6),
                           radius_range=(0.1, 0.22), categories=DET_CATEGORIES):
    """Write the COCO-format shapes set under ``root`` (skipped if already complete).

    Args:
        root (str): output directory.
        seed (int): random seed; the same arguments give the same files.
        overwrite (bool): regenerate even if a complete set with these arguments exists.
        num_train, num_val (int): number of images per split.
        image_size (tuple[int, int]): inclusive range of image heights and widths, drawn
            independently per image (non-square images exercise the padding paths).
        instances_per_image (tuple[int, int]): inclusive range of instances per image
            (fewer are placed when a crowded image has no room left).
        radius_range (tuple[float, float]): shape circumradius as a fraction of the
            image's shorter side.
        categories (Sequence[str]): subset of :data:`DET_CATEGORIES`, in label order.

    Returns:
        str: ``root``.
    """
    categories = tuple(categories)
    unknown = [c for c in categories if c not in DET_CATEGORIES]
    if unknown or not categories:
        raise ValueError(f'categories must be a non-empty subset of {DET_CATEGORIES}, '
                         f'got {categories}.')
    lo, hi = int(image_size[0]), int(image_size[1])
    if not 32 <= lo <= hi:
        raise ValueError(f'image_size must be a range (lo, hi) with 32 <= lo <= hi, '
                         f'got {image_size}.')
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be positive.')
    done = osp.join(root, '.complete')
    signature = json.dumps(dict(
        format=_FORMAT_VERSION, seed=seed, num_train=num_train, num_val=num_val,
        image_size=[lo, hi], instances_per_image=list(instances_per_image),
        radius_range=list(radius_range), categories=list(categories)), sort_keys=True)
    if not overwrite and osp.exists(done):
        with open(done) as f:
            if f.read() == signature:
                return root
    # Stale or partial output: start clean so no old image or annotation survives.
    for sub in ('train', 'val', 'annotations'):
        shutil.rmtree(osp.join(root, sub), ignore_errors=True)
    if osp.exists(done):
        os.remove(done)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)

    coco_categories = [dict(id=i + 1, name=name, supercategory='shape')
                       for i, name in enumerate(categories)]
    # One generator per split, so changing num_train does not change the val images.
    for split_idx, (split, count) in enumerate((('train', num_train), ('val', num_val))):
        rng = np.random.default_rng([seed, split_idx])
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
            n = int(rng.integers(instances_per_image[0], instances_per_image[1] + 1))
            img, instances = _render_image(h, w, categories, rng, n, radius_range)
            fname = f'{i:06d}.jpg'
            # JPEG as COCO; no chroma subsampling, so colour edges stay on the masks.
            Image.fromarray(img).save(osp.join(root, split, fname), quality=95, subsampling=0)
            images.append(dict(id=i + 1, file_name=fname, height=h, width=w))
            for inst in instances:
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, **inst))
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(info=dict(description=f'GroupMamba synthetic shapes ({split})'),
                           licenses=[], images=images, annotations=annotations,
                           categories=coco_categories), f)
    with open(done, 'w') as f:
        f.write(signature)
    return root
