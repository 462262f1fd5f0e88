"""Workarounds for the pinned OpenMMLab releases on current torch / Python.

Applied once when :mod:`mmgroupmamba` is imported.
"""
import os.path as osp

import torch

_PATCHED = False


def load_trusted_local_checkpoint(filename, map_location=None):
    """mmengine's local-file checkpoint loader, with ``weights_only=False``.

    torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``, and mmengine 0.10.7
    (fixed only after that release, mmengine #1670) does not pass the flag, so its own
    checkpoints (numpy scalars, the message hub, the config) fail to load in ``--resume``,
    ``load_from``, ``tools/test.py CKPT`` and ``init_cfg=Pretrained``. Local files named by
    the user are trusted, exactly as mmengine treated them before torch 2.6.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def apply_mmengine_patches():
    """Install the workarounds (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_trusted_local_checkpoint,
                                     force=True)
    _PATCHED = True
