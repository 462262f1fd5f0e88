"""A small, learnable semantic-segmentation set in the ADE20K folder layout.

Procedural indoor-like scenes (no downloads, deterministic for a seed): a wall above a tiled
floor, with paintings (striped rectangles), boxes (flat squares with a lit edge) and balls
(shaded disks) in front, plus a little unlabelled clutter. Layout (what mmseg's
``ADE20KDataset`` reads)::

    root/images/training/ade_train_00000000.jpg
    root/images/validation/ade_val_00000000.jpg
    root/annotations/training/ade_train_00000000.png   (uint8 label map)
    root/annotations/validation/ade_val_00000000.png

Label maps use ADE20K's own label space and ``reduce_zero_label`` semantics: a pixel holds
``1 + (index of its class among ADE20K's 150 classes)``, and 0 marks unlabelled pixels (object
outlines and clutter), which ``LoadAnnotations(reduce_zero_label=True)`` turns into 255
(ignored). The classes are real ADE20K class names (:data:`SEG_CLASSES`), so that

* a 150-class ADE20K config trains and evaluates on this set unchanged (the other 145 classes
  are simply absent), and
* a config that passes ``metainfo=dict(classes=SEG_CLASSES, palette=SEG_PALETTE)`` to
  ``ADE20KDataset`` gets labels 0..4: mmseg only accepts custom class names that are a subset
  of the dataset's classes, and maps the stored ids through its ``label_map``.

Image sizes are drawn per image (height and width independently), so they are non-square and
mostly odd, like ADE20K's.
"""
import os
import os.path as osp

import numpy as np
from PIL import Image

# Class names as ADE20K spells them (mmseg's ADE20KDataset.METAINFO['classes']), in the order
# of a demo config's metainfo, with their indices among ADE20K's 150 classes.
SEG_CLASSES = ('wall', 'floor', 'painting', 'box', 'ball')
ADE_INDICES = (0, 3, 22, 41, 119)
# ADE20K's palette entries of these classes (mmseg's ADE20KDataset.METAINFO['palette']).
SEG_PALETTE = ([120, 120, 120], [80, 50, 50], [255, 6, 51], [0, 255, 20], [255, 0, 163])

# Stored label-map values (reduce_zero_label semantics: 0 = unlabelled).
_LABEL = {name: idx + 1 for name, idx in zip(SEG_CLASSES, ADE_INDICES)}
UNLABELLED = 0


def _random_colour(rng, avoid=None, min_dist=120):
    """A random RGB colour at least ``min_dist`` (L1) away from ``avoid`` (if given)."""
    while True:
        c = rng.integers(0, 256, 3).astype(np.float32)
        if avoid is None or np.abs(c - avoid).sum() >= min_dist:
            return c


def _render_scene(h, w, rng):
    """Render one (h, w) scene; returns (uint8 RGB image, uint8 label map)."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    lab = np.empty((h, w), np.uint8)

    # Wall: a smooth colour gradient (no texture). Floor: tiles of two colours below a
    # horizon at a random height, so the two stuff classes differ by texture, not colour.
    wall = _random_colour(rng)
    tilt = rng.uniform(-40, 40, 3).astype(np.float32)
    img[:] = wall + tilt * (xx / w - 0.5)[..., None]
    lab[:] = _label('wall')
    horizon = int(h * rng.uniform(0.5, 0.8))
    tile = rng.uniform(6, 14)
    phase = rng.uniform(0, tile, 2)
    tiles = (((yy + phase[0]) // tile + (xx + phase[1]) // tile) % 2).astype(bool)
    floor_a, floor_b = _random_colour(rng), _random_colour(rng)
    on_floor = yy >= horizon
    img[on_floor] = np.where(tiles[on_floor][:, None], floor_a, floor_b)
    lab[on_floor] = _label('floor')

    # Paintings hang on the wall; boxes and balls stand anywhere. Later objects occlude
    # earlier ones, and the label map follows the visible one.
    size = min(h, w)
    n_objects = rng.integers(2, 6)
    kinds = ['painting'] + list(rng.choice(['painting', 'box', 'ball'], n_objects - 1))
    for kind in kinds:
        r = rng.uniform(0.08, 0.2) * size
        cx = rng.uniform(r, w - r)
        if kind == 'painting':
            cy = rng.uniform(r, max(horizon - r, r + 1))
            ry, rx = r * rng.uniform(0.6, 1.0), r * rng.uniform(1.0, 1.6)
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            period = rng.uniform(3, 7)
            stripes = ((yy + rng.uniform(0, period)) % period) < period / 2
            a = _random_colour(rng)
            b = _random_colour(rng, avoid=a)
            img[mask] = np.where(stripes[mask][:, None], a, b)
        else:
            cy = rng.uniform(r, h - r)
            colour = _random_colour(rng)
            if kind == 'box':
                mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                # A lit top edge and a shaded right edge: a flat-shaded cube.
                shade = np.ones((h, w), np.float32)
                shade[(yy - cy) < -0.6 * r] = 1.35
                shade[(xx - cx) > 0.6 * r] = 0.65
            else:
                d2 = ((yy - cy)**2 + (xx - cx)**2) / r**2
                mask = d2 <= 1
                # Radial shading with an off-centre highlight.
                hl = ((yy - cy + 0.35 * r)**2 + (xx - cx + 0.35 * r)**2) / r**2
                shade = 1.3 - 0.8 * np.sqrt(np.minimum(hl, 1.5))
            img[mask] = np.clip(colour * shade[mask][:, None], 0, 255)
        lab[mask] = _label(kind)

    # Unlabelled clutter (ADE's label 0 covers "other objects"): noisy ellipses.
    for _ in range(rng.integers(0, 3)):
        r = rng.uniform(0.04, 0.1) * size
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        mask = ((yy - cy) / r)**2 + ((xx - cx) / (1.5 * r))**2 <= 1
        img[mask] = rng.uniform(0, 255, (int(mask.sum()), 3))
        lab[mask] = UNLABELLED

    # Outlines are unlabelled, as annotators leave thin gaps between polygons.
    edge = np.zeros((h, w), bool)
    edge[1:] |= lab[1:] != lab[:-1]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    lab[edge] = UNLABELLED

    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def _label(name):
    return _LABEL[name]


def generate_segmentation_set(root, seed=0, overwrite=False, num_train=240, num_val=60,
                              size_range=(112, 176), jpeg_quality=95):
    """Write the set under ``root`` in the ADE20K layout and return ``root``.

    Skipped when ``root`` already holds a complete set made with the same arguments (unless
    ``overwrite``); an incomplete or different set is regenerated.

    Args:
        root (str): output directory (plays the role of ``ADEChallengeData2016``).
        seed (int): random seed; the same arguments give the same files.
        overwrite (bool): regenerate even if a complete set exists.
        num_train (int): training images.
        num_val (int): validation images.
        size_range (tuple[int, int]): height and width are drawn independently and
            uniformly from ``[min, max]`` for every image. For the 160k recipe's scales
            use e.g. ``(384, 640)``.
        jpeg_quality (int): JPEG quality of the images (label maps are lossless PNG).
    """
    lo, hi = (int(v) for v in size_range)
    if not 16 <= lo <= hi:
        raise ValueError(f'size_range must satisfy 16 <= min <= max, got {size_range}.')
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be positive, got {num_train}, '
                         f'{num_val}.')
    done = osp.join(root, '.complete')
    signature = f'{num_train} {num_val} {lo} {hi} {jpeg_quality} {seed} {SEG_CLASSES} v1'
    if not overwrite and osp.exists(done):
        with open(done) as f:
            if f.read() == signature:
                return root
    if osp.exists(done):
        os.remove(done)

    rng = np.random.default_rng(seed)
    for split, prefix, count in (('training', 'ade_train', num_train),
                                 ('validation', 'ade_val', num_val)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        # Remove files of an earlier, larger set so the folders hold exactly this set.
        keep = {f'{prefix}_{i:08d}' for i in range(count)}
        for folder in (img_dir, ann_dir):
            for fname in os.listdir(folder):
                if osp.splitext(fname)[0] not in keep:
                    os.remove(osp.join(folder, fname))
        for i in range(count):
            h, w = rng.integers(lo, hi + 1, 2)
            img, lab = _render_scene(int(h), int(w), rng)
            name = f'{prefix}_{i:08d}'
            Image.fromarray(img).save(osp.join(img_dir, name + '.jpg'),
                                      quality=jpeg_quality)
            Image.fromarray(lab).save(osp.join(ann_dir, name + '.png'))
    with open(done, 'w') as f:
        f.write(signature)
    return root
