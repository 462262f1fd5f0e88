"""A small, learnable image-classification set in the ImageNet folder layout.

Procedural shapes and textures on noisy backgrounds: no downloads, deterministic for a
seed. Layout (what mmpretrain's ``CustomDataset``/``ImageNet`` read)::

    root/train/<class>/<class>_00000.png
    root/val/<class>/<class>_00000.png
    root/meta/train.txt, root/meta/val.txt   ("<class>/<file> <label>" per line)
    root/classes.txt
"""
import os
import os.path as osp

import numpy as np
from PIL import Image

SHAPE_CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring', 'h_stripes',
                 'v_stripes', 'checker')


def _colour_pair(rng):
    fg = rng.integers(0, 256, 3)
    bg = rng.integers(0, 256, 3)
    while np.abs(fg.astype(int) - bg.astype(int)).sum() < 200:  # keep the shape visible
        bg = rng.integers(0, 256, 3)
    return fg, bg


def _shape_mask(name, size, rng):
    """Boolean (size, size) mask of one class instance at a random place and scale."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = rng.uniform(0.18, 0.32) * size
    cy, cx = rng.uniform(r + 1, size - r - 1, 2)
    dy, dx = yy - cy, xx - cx
    if name == 'circle':
        return dy**2 + dx**2 <= r**2
    if name == 'ring':
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.6 * r)**2)
    if name == 'square':
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if name == 'triangle':
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if name == 'cross':
        w = r * 0.3
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    period = rng.uniform(5, 10)
    phase = rng.uniform(0, period)
    if name == 'h_stripes':
        return ((yy + phase) % period) < period / 2
    if name == 'v_stripes':
        return ((xx + phase) % period) < period / 2
    if name == 'checker':
        return (((yy + phase) // (period / 1.5)) + ((xx + phase) // (period / 1.5))) % 2 == 0
    raise KeyError(name)


def render_shape(name, size, rng):
    fg, bg = _colour_pair(rng)
    mask = _shape_mask(name, size, rng)
    img = np.where(mask[..., None], fg, bg).astype(np.float32)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_classification_set(root, num_train_per_class=60, num_val_per_class=20,
                                image_size=64, classes=SHAPE_CLASSES, seed=0,
                                overwrite=False):
    """Write the set under ``root`` (skipped if already complete). Returns ``root``."""
    done = osp.join(root, '.complete')
    signature = f'{num_train_per_class} {num_val_per_class} {image_size} {classes} {seed}'
    if not overwrite and osp.exists(done) and open(done).read() == signature:
        return root
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split, count in (('train', num_train_per_class), ('val', num_val_per_class)):
        lines = []
        for label, name in enumerate(classes):
            os.makedirs(osp.join(root, split, name), exist_ok=True)
            for i in range(count):
                fname = f'{name}_{i:05d}.png'
                Image.fromarray(render_shape(name, image_size, rng)).save(
                    osp.join(root, split, name, fname))
                lines.append(f'{name}/{fname} {label}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(classes) + '\n')
    with open(done, 'w') as f:
        f.write(signature)
    return root
