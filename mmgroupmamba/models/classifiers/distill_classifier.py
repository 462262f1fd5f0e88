"""Image classifier trained with a frozen teacher (DeiT-style distillation, GroupMamba §3.4).

``L = (1 - alpha) * CE(Z_s, y) + alpha * CE(Z_s_dist, argmax Z_t)`` ('hard'), or the
temperature-scaled KL on the distillation head ('soft'); see
:meth:`GroupMambaClsHead.loss <mmgroupmamba.models.heads.GroupMambaClsHead.loss>`.
"""
import os.path as osp
from typing import List, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ...utils.official_checkpoint import unwrap_state_dict

DEIT_TEACHER_URL = 'https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth'
_NO_CHECKPOINT = (
    'Distillation needs the teacher weights: set `model.teacher_checkpoint` (e.g. the '
    f'DeiT teacher {DEIT_TEACHER_URL} saved locally), or train without a teacher with '
    "`model.head.distill_type='none'`.")


class TeacherCheckpointError(ValueError):
    """The teacher checkpoint is missing or does not fit the teacher architecture."""


class _TeacherHolder:
    """Keeps the teacher out of ``nn.Module``'s registries.

    A teacher registered as a submodule would end up in ``state_dict()`` (and in every
    student checkpoint), in ``parameters()`` (the optimizer, DDP's gradient buckets, the
    grad-norm clip) and in the EMA copy. Held here it is invisible to all of them;
    :meth:`DistillImageClassifier._apply` moves it with the student, so ``.to(device)``,
    ``.cuda()`` and the Runner's device placement still apply to it.

    ``deepcopy`` shares the frozen teacher instead of copying it: MMEngine's EMA model is a
    deep copy of the student and must not hold a second RegNetY-16GF.
    """

    def __init__(self, module: Optional[nn.Module] = None):
        self.module = module

    def __deepcopy__(self, memo):
        return self


def load_teacher_checkpoint(teacher: nn.Module, filename: str) -> None:
    """Load ``filename`` into ``teacher``; any missing, unexpected or mis-shaped tensor is
    an error (a teacher with random layers would silently spoil the student).

    Accepts a flat state dict and the usual wrappers: ``state_dict`` (MMEngine; EMA
    weights when EMAHook ran), ``model_ema`` and ``model`` (DeiT's
    ``regnety_160-a5fe301d.pth``); a ``module.`` prefix (DDP) is removed.
    """
    if not filename:
        raise TeacherCheckpointError(_NO_CHECKPOINT)
    if '://' not in filename and not osp.isfile(osp.expanduser(filename)):
        raise TeacherCheckpointError(
            f'Teacher checkpoint {filename!r} not found (current directory '
            f'{osp.abspath(".")}). For the GroupMamba recipe download the DeiT teacher '
            f'{DEIT_TEACHER_URL} and pass its path as `model.teacher_checkpoint`, e.g. '
            '`--cfg-options model.teacher_checkpoint=/path/regnety_160-a5fe301d.pth`.')
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    try:
        state = unwrap_state_dict(checkpoint)
    except ValueError as e:
        raise TeacherCheckpointError(f'Teacher checkpoint {filename!r}: {e}') from e
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}

    # Compare against what the teacher's own load_state_dict will see (hooks such as
    # mmpretrain TimmClassifier's prefix handling run inside load_state_dict), so load
    # non-strictly and judge the result ourselves.
    own = teacher.state_dict()
    try:
        result = teacher.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise TeacherCheckpointError(
            f'Teacher checkpoint {filename!r} does not fit the teacher '
            f'{type(teacher).__name__} (wrong architecture or num_classes?):\n{e}') from e
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise TeacherCheckpointError(
            f'Teacher checkpoint {filename!r} does not match the teacher '
            f'{type(teacher).__name__} ({len(own)} tensors): {len(missing)} missing '
            f'(e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]}). '
            'Check model.teacher against the checkpoint.')
    print_log(f'Loaded the distillation teacher {type(teacher).__name__} '
              f'({len(own)} tensors) from {filename}.', logger='current')


@ROOT_MODELS.register_module()
class DistillImageClassifier(ImageClassifier):
    """An :class:`~mmpretrain.models.ImageClassifier` whose head learns from a frozen
    teacher as well as from the labels (DeiT hard/soft distillation).

    The head must accept ``teacher_logits`` in ``loss`` and expose ``distill_type``
    (:class:`~mmgroupmamba.models.heads.GroupMambaClsHead`).

    The teacher
      * is built from ``teacher`` and loaded from ``teacher_checkpoint`` when training
        starts (:meth:`init_weights`, which the Runner calls before the first iteration
        and never in ``tools/test.py``): a missing or mismatched file stops training
        at start-up, while evaluation neither needs the file nor pays for the teacher;
      * is frozen, always in eval mode, runs without gradients, under the autocast of the
        training step (AMP), on the same preprocessed inputs as the student, i.e. after
        Mixup/CutMix (which run in the data preprocessor);
      * is not part of ``state_dict()``, ``parameters()``, the optimizer or the EMA model,
        and is never run by ``predict``/``forward(mode='tensor')``;
      * sees the student's normalised images: it must expect the same normalisation
        (ImageNet mean/std, RGB for the DeiT RegNetY teacher).

    Args:
        backbone, neck, head, pretrained, train_cfg, data_preprocessor, init_cfg: as in
            :class:`~mmpretrain.models.ImageClassifier`.
        teacher (dict, optional): config of a module mapping ``(B, 3, H, W)`` images to
            ``(B, num_classes)`` logits, e.g. ``dict(type='TimmTeacher',
            model_name='regnety_160')``, ``dict(type='TimmRegNet', arch='regnety_160')``
            or any mmpretrain classifier (called with ``mode='tensor'``). Required unless
            ``head.distill_type == 'none'`` (then it is ignored and never built).
        teacher_checkpoint (str, optional): weights of the teacher (required with a
            teacher).
    """

    def __init__(self,
                 backbone: dict,
                 neck: Optional[dict] = None,
                 head: Optional[dict] = None,
                 teacher: Optional[dict] = None,
                 teacher_checkpoint: Optional[str] = None,
                 pretrained: Optional[str] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(backbone=backbone, neck=neck, head=head, pretrained=pretrained,
                         train_cfg=train_cfg, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        if not hasattr(self.head, 'distill_type'):
            raise TypeError(f'{type(self).__name__} needs a head with distillation '
                            f'(e.g. GroupMambaClsHead), got {type(self.head).__name__}.')
        self.distill_type = self.head.distill_type
        if self.distill_type != 'none':
            if teacher is None:
                raise ValueError(f"head.distill_type={self.distill_type!r} needs a "
                                 '`teacher` config (and `teacher_checkpoint`).')
            if not teacher_checkpoint:
                # The path is checked here; the file itself is read when training
                # starts, so that evaluation does not need it.
                raise TeacherCheckpointError(_NO_CHECKPOINT)
        self.teacher_cfg = teacher
        self.teacher_checkpoint = teacher_checkpoint
        self._teacher = _TeacherHolder()

    # ------------------------------------------------------------------ the teacher
    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen teacher (``None`` until built, and always without distillation)."""
        return self._teacher.module

    @property
    def with_teacher(self) -> bool:
        return self.distill_type != 'none'

    def build_teacher(self) -> Optional[nn.Module]:
        """Build the teacher and load its checkpoint (once); raises
        :class:`TeacherCheckpointError` for a missing or mismatched file."""
        if not self.with_teacher or self.teacher is not None:
            return self.teacher
        teacher = MODELS.build(self.teacher_cfg)
        if not isinstance(teacher, nn.Module):
            raise TypeError(f'model.teacher must build an nn.Module, got {type(teacher)}.')
        load_teacher_checkpoint(teacher, self.teacher_checkpoint)
        teacher.requires_grad_(False)
        teacher.eval()
        param = next(self.parameters(), None)
        if param is not None:
            teacher.to(param.device)
        self._teacher.module = teacher
        return teacher

    def init_weights(self):
        """Initialise the student, then build and load the teacher.

        The Runner calls this when training starts (not in ``tools/test.py``), so a bad
        teacher checkpoint is reported before the first iteration.
        """
        super().init_weights()
        self.build_teacher()

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() go through _apply: move the unregistered teacher too.
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN statistics / dropout of the teacher never change
        return self

    @torch.no_grad()
    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher logits of the (preprocessed, possibly mixed) ``inputs``; runs under
        whatever autocast context the caller is in."""
        teacher = self.build_teacher()
        if teacher.training:
            teacher.eval()
        if isinstance(teacher, BaseModel):
            logits = teacher(inputs, mode='tensor')
        else:
            logits = teacher(inputs)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f'The teacher must return a logits tensor, got {type(logits)}.')
        num_classes = getattr(self.head, 'num_classes', None)
        if logits.dim() != 2 or logits.size(0) != inputs.size(0) or (
                num_classes is not None and logits.size(1) != num_classes):
            raise ValueError(
                f'The teacher returned logits of shape {tuple(logits.shape)} for '
                f'{inputs.size(0)} images; the student has {num_classes} classes. The '
                'teacher must classify the same label set.')
        return logits.detach()

    # ------------------------------------------------------------------ forward
    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample]) -> dict:
        teacher_logits = self.teacher_logits(inputs) if self.with_teacher else None
        feats = self.extract_feat(inputs)
        return self.head.loss(feats, data_samples, teacher_logits=teacher_logits)
