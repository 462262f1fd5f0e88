"""Workarounds for the pinned OpenMMLab releases on current torch / Python.

Applied once when :mod:`mmgroupmamba` is imported.
"""
import functools
import sys

import torch
from mmengine.fileio.backends import LocalBackend, register_backend

from .checkpoint_io import atomic_write, checkpoint_safe_globals, load_checkpoint_file

_PATCHED = False


def load_from_local(filename, map_location=None):
    """mmengine's local-file checkpoint loader, under our loading policy.

    torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``, and mmengine 0.10.7
    (fixed only after that release, mmengine #1670) neither passes the flag nor allows
    the types it saves, so its own checkpoints (numpy values, the message hub) fail in
    ``--resume``, ``load_from``, ``tools/test.py CKPT`` and ``init_cfg=Pretrained``.
    :func:`~mmgroupmamba.utils.checkpoint_io.load_checkpoint_file` loads them without
    unpickling anything but an explicit allow-list.
    """
    return load_checkpoint_file(filename, map_location)


def _with_checkpoint_allow_list(loader):
    """An mmengine loader of downloaded checkpoints with our allow-list: it calls
    ``torch.load`` itself (weights-only by default on torch >= 2.6), which then accepts
    mmengine's checkpoints too."""

    @functools.wraps(loader)
    def load(filename, map_location=None):
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return loader(filename, map_location)
    return load


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, with writes that replace files atomically.

    mmengine 0.10.7 writes checkpoints (``save_checkpoint`` -> ``put``) straight into
    the final file, so a run killed while saving leaves a truncated checkpoint under the
    name ``--resume`` looks for. Every ``put``/``put_text`` here goes through
    :func:`~mmgroupmamba.utils.checkpoint_io.atomic_write` instead.
    """

    def put(self, obj, filepath):
        with atomic_write(filepath, 'wb') as f:
            f.write(obj)

    def put_text(self, obj, filepath, encoding='utf-8'):
        with atomic_write(filepath, 'w', encoding=encoding) as f:
            f.write(obj)


def setup_cpu_distributed(cfg):
    """Let ``--launcher pytorch`` run without CUDA (DDP over gloo on CPU processes).

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and wraps the
    model with ``device_ids=[LOCAL_RANK]``, both of which fail without a GPU. On such a
    machine the process group is started here with gloo (the Runner then does not start
    its own) and the model is wrapped without device ids. Does nothing with CUDA or
    without a launcher.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return cfg
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper
    return cfg


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
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_http
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=_with_checkpoint_allow_list(load_from_http),
                                     force=True)
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    _PATCHED = True
