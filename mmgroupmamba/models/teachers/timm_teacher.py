"""``dict(type='TimmTeacher', model_name='regnety_160')``: a timm classifier as a teacher."""
from mmengine.logging import print_log
from mmengine.registry import MODELS

from .regnet import REGNET_ARCHS, TimmRegNet


def _import_timm():
    try:
        import timm
    except Exception as e:  # ImportError, or torchvision failing to load beside torch
        return None, e
    return timm, None


@MODELS.register_module(name='TimmTeacher')
def build_timm_teacher(model_name: str = 'regnety_160',
                       num_classes: int = 1000,
                       backend: str = 'auto',
                       **kwargs):
    """Build ``timm.create_model(model_name, pretrained=False, num_classes=...)``.

    Weights come from the distillation classifier's ``teacher_checkpoint`` (timm keys,
    e.g. DeiT's ``regnety_160-a5fe301d.pth``), never from a download.

    Args:
        model_name (str): a timm model name.
        num_classes (int): classifier outputs.
        backend (str): ``'timm'``; ``'builtin'`` for :class:`TimmRegNet` (same network
            and state-dict keys as timm's RegNets, without the timm/torchvision
            dependency); ``'auto'`` uses timm when it imports, else the built-in RegNet.
        **kwargs: passed to ``timm.create_model``.
    """
    if backend not in ('auto', 'timm', 'builtin'):
        raise ValueError(f"backend must be 'auto', 'timm' or 'builtin', got {backend!r}.")
    timm = None
    if backend != 'builtin':
        timm, error = _import_timm()
        if timm is None and (backend == 'timm' or model_name not in REGNET_ARCHS):
            raise ImportError(f'The teacher {model_name!r} needs timm, which failed to '
                              f'import: {error!r}') from error
    if timm is not None:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                 **kwargs)
    if model_name not in REGNET_ARCHS:
        raise KeyError(f'The built-in teacher backend has only timm RegNets '
                       f'{sorted(REGNET_ARCHS)}, not {model_name!r}.')
    if kwargs:
        raise TypeError(f'The built-in RegNet takes no timm arguments, got {sorted(kwargs)}.')
    if backend == 'auto':
        print_log(f'timm is unavailable; building {model_name} with the built-in RegNet '
                  '(same network and keys).', logger='current')
    return TimmRegNet(model_name, num_classes=num_classes)
