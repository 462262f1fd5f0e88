"""Classification head of the released GroupMamba: class-token block and two linear heads."""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS
from mmpretrain.models.heads import ClsHead

from mmgroupmamba.execution import ExecutionPolicy, share_execution
from ..layers import VSSS, ClassBlock, LayerNorm, Linear


@MODELS.register_module()
class GroupMambaClsHead(ClsHead):
    """Class token from the mean of the last stage, one class block, the released stage-4
    norm, then ``fc`` (class head) and ``dist_fc`` (distillation head).

    In training mode ``forward`` returns both logits; in eval mode their mean, which is
    what the released model predicts with.

    Without a teacher both heads learn the labels; with one (see
    :class:`~mmgroupmamba.models.classifiers.DistillImageClassifier`) the distillation
    head learns the teacher's output (DeiT): ``(1 - alpha) CE(fc, y) + alpha L_dist``.

    Args:
        num_classes (int): number of classes.
        in_channels (int): width of the last stage.
        mlp_ratio (float): FFN ratio of the class block (the last stage's in the release).
        distill_type (str): ``'hard'`` (CE against the teacher's argmax), ``'soft'``
            (KL at temperature ``distill_tau``) or ``'none'``.
        distill_alpha (float): weight of the distillation term.
        distill_tau (float): temperature of ``'soft'`` distillation.
        d_state (int): as in the backbone.
        execution (dict, optional): the class block's execution settings, as the
            backbone's (:class:`~mmgroupmamba.execution.ExecutionPolicy`).
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 mlp_ratio: float = 4,
                 distill_type: str = 'none',
                 distill_alpha: float = 0.5,
                 distill_tau: float = 1.0,
                 d_state: int = 1,
                 execution: Optional[dict] = None,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        super().__init__(loss=loss, init_cfg=init_cfg, **kwargs)
        if num_classes <= 0:
            raise ValueError(f'num_classes={num_classes} must be a positive integer.')
        if distill_type not in ('none', 'hard', 'soft'):
            raise ValueError(f"distill_type must be 'none', 'hard' or 'soft', "
                             f'got {distill_type!r}.')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.distill_type = distill_type
        self.distill_alpha = distill_alpha
        self.distill_tau = distill_tau
        self.class_block = ClassBlock(in_channels, mlp_ratio, d_state=d_state)
        self.norm = LayerNorm(in_channels, eps=1e-6)
        self.fc = Linear(in_channels, num_classes)
        self.dist_fc = Linear(in_channels, num_classes)
        self.execution = share_execution(self, ExecutionPolicy.from_config(execution))

    def init_weights(self):
        super().init_weights()
        if self.init_cfg is not None:
            return
        # Linears first, then the SSM parameters: modules() visits a VSSS before its own
        # dt_proj, whose Mamba initialisation must not be overwritten.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, VSSS):
                m.reset_ssm_parameters()

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects the last stage as '
                             f'(B, {self.in_channels}, H, W), got {tuple(x.shape)}.')
        cls_token = self.class_block(x.mean(dim=(2, 3)))
        return self.norm(cls_token)

    def forward_both(self, feats) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits of the class head and of the distillation head."""
        x = self.pre_logits(feats)
        return self.fc(x), self.dist_fc(x)

    def forward(self, feats):
        cls_score, dist_score = self.forward_both(feats)
        if self.training:
            return cls_score, dist_score
        return (cls_score + dist_score) / 2

    def predict(self, feats, data_samples=None):
        cls_score, dist_score = self.forward_both(feats)
        return self._get_predictions((cls_score + dist_score) / 2, data_samples)

    def loss(self, feats, data_samples: List, teacher_logits: torch.Tensor = None,
             **kwargs) -> dict:
        cls_score, dist_score = self.forward_both(feats)
        if 'gt_score' in data_samples[0]:
            target = torch.stack([i.gt_score for i in data_samples])
        else:
            target = torch.cat([i.gt_label for i in data_samples])
        n = cls_score.size(0)
        loss_cls = self.loss_module(cls_score, target, avg_factor=n, **kwargs)

        if self.distill_type == 'none' or teacher_logits is None:
            if self.distill_type != 'none':
                raise ValueError(f"distill_type={self.distill_type!r} needs teacher "
                                 'logits; use DistillImageClassifier with a teacher.')
            # No teacher: both heads learn the labels, so their mean stays meaningful.
            loss_dist = self.loss_module(dist_score, target, avg_factor=n, **kwargs)
        elif self.distill_type == 'hard':
            loss_dist = F.cross_entropy(dist_score.float(),
                                        teacher_logits.argmax(dim=1))
        else:
            tau = self.distill_tau
            loss_dist = F.kl_div(
                F.log_softmax(dist_score.float() / tau, dim=1),
                F.log_softmax(teacher_logits.float() / tau, dim=1),
                reduction='sum', log_target=True) * (tau * tau) / dist_score.numel()
        alpha = self.distill_alpha
        return dict(loss_cls=(1 - alpha) * loss_cls, loss_dist=alpha * loss_dist)
