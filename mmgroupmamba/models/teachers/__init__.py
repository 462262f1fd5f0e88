"""Teacher networks for distillation (``nn.Module`` classifiers returning logits)."""
from .regnet import REGNET_ARCHS, TimmRegNet, regnet_stages
from .timm_teacher import build_timm_teacher

__all__ = ['REGNET_ARCHS', 'TimmRegNet', 'regnet_stages', 'build_timm_teacher']
