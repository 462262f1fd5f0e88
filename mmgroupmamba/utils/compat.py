"""Workarounds for the pinned OpenMMLab releases on current torch / Python.

Applied once when :mod:`mmgroupmamba` is imported.
"""
import os.path as osp
import sys

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


def _transformers_major():
    try:
        from importlib.metadata import version
        return int(version('transformers').split('.')[0])
    except Exception:  # not installed or unparsable
        return None


def import_mmpretrain_without_multimodal():
    """Import mmpretrain with its multi-modal models off where they cannot import.

    mmpretrain 1.2.0 imports its multi-modal models whenever pycocotools and
    transformers >= 4.28 are installed, and those import names that transformers 5
    removed, so ``import mmpretrain`` fails on such machines (e.g. the GPU image). We hide
    transformers from mmpretrain's dependency probe for the duration of the import; it
    then registers its usual "please install" placeholders for those models instead.
    """
    if 'mmpretrain' in sys.modules or (_transformers_major() or 0) < 5:
        return
    try:
        import importlib_metadata
    except ImportError:
        return
    original = importlib_metadata.distribution

    def distribution(name):
        if name == 'transformers':
            raise importlib_metadata.PackageNotFoundError(name)
        return original(name)

    importlib_metadata.distribution = distribution
    try:
        import mmpretrain  # noqa: F401
    finally:
        importlib_metadata.distribution = original
        from mmpretrain.utils import dependency
        dependency.distribution = original


def apply_compat_patches():
    """Install the workarounds (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    try:
        import_mmpretrain_without_multimodal()
    except ImportError:  # mmpretrain not installed: detection/segmentation-only use
        pass
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_trusted_local_checkpoint,
                                     force=True)
    _PATCHED = True
