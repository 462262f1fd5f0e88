"""Distillation (GroupMamba §3.4, DeiT): the loss, the frozen teacher and its checkpoint."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope

import mmgroupmamba  # noqa: F401
from conftest import MICRO_ARCH
from mmgroupmamba.models.classifiers import (DistillImageClassifier,
                                             TeacherCheckpointError)
from mmgroupmamba.models.teachers import REGNET_ARCHS, TimmRegNet, regnet_stages

NUM_CLASSES = 6
# A RegNetY small enough for unit tests: widths (16, 24), depths (2, 1), SE.
TINY_REGNET = dict(w0=16, wa=8, wm=1.5, group_size=8, depth=3, se_ratio=0.25)
STUDENT = MICRO_ARCH


def build_model(distill_type='hard', teacher_ckpt=None, alpha=0.5, tau=1.0, augments=None,
                teacher=None):
    from mmpretrain.registry import MODELS
    cfg = dict(
        type='DistillImageClassifier',
        backbone=dict(type='GroupMamba', arch=STUDENT, out_indices=(3, ),
                      final_norm=False, drop_path_rate=0.),
        head=dict(type='GroupMambaClsHead', num_classes=NUM_CLASSES, in_channels=64,
                  mlp_ratio=2, distill_type=distill_type, distill_alpha=alpha,
                  distill_tau=tau,
                  loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                            mode='original')),
        teacher=teacher or dict(type='TimmRegNet', arch=TINY_REGNET,
                                num_classes=NUM_CLASSES),
        teacher_checkpoint=teacher_ckpt,
        data_preprocessor=dict(num_classes=NUM_CLASSES, mean=[127.5] * 3,
                               std=[127.5] * 3, to_rgb=True),
        train_cfg=dict(augments=augments) if augments else None)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


@pytest.fixture
def teacher_ckpt(tmp_path):
    """A tiny random teacher, saved the way DeiT saved regnety_160 ({'model': sd})."""
    teacher = TimmRegNet(TINY_REGNET, num_classes=NUM_CLASSES)
    for m in teacher.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-.5, .5)
            m.running_var.uniform_(.5, 2.)
            m.weight.data.uniform_(.5, 1.5)
    path = tmp_path / 'teacher.pth'
    torch.save({'model': teacher.state_dict()}, path)
    return str(path), teacher.eval()


def make_batch(n=4, size=32, seed=0):
    from mmpretrain.structures import DataSample
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
            for _ in range(n)]
    labels = torch.randint(0, NUM_CLASSES, (n, ), generator=g)
    samples = [DataSample().set_gt_label(int(y)) for y in labels]
    return dict(inputs=imgs, data_samples=samples), labels


def label_smooth_ce(logits, target, eps=0.1):
    """mmpretrain LabelSmoothLoss(mode='original'): CE with (1 - eps) y + eps / K."""
    k = logits.size(1)
    if target.dim() == 1:
        target = F.one_hot(target, k).float()
    target = target * (1 - eps) + eps / k
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


# --------------------------------------------------------------------- the teacher network
def test_regnety_160_stages():
    assert regnet_stages(*REGNET_ARCHS['regnety_160'][:5]) == (
        [224, 448, 1232, 3024], [2, 4, 11, 1], [112] * 4)
    with torch.device('meta'):  # shapes only: no 84M-parameter initialisation
        n = sum(p.numel() for p in TimmRegNet('regnety_160').parameters())
    assert abs(n / 1e6 - 83.59) < 0.01  # timm: regnety_160 has 83.6M parameters


def test_builtin_regnet_is_timm_regnet():
    """Same keys and the same function as timm, so DeiT's checkpoint loads strictly."""
    timm = pytest.importorskip('timm')
    ref = timm.create_model('regnety_002', pretrained=False).eval()
    ours = TimmRegNet('regnety_002').eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    # the 84M-parameter teacher: compare names and shapes only. timm's is built on the
    # CPU (recent timm derives the stage widths with torch ops that have no meta kernel)
    ref160 = timm.create_model('regnety_160', pretrained=False)
    with torch.device('meta'):
        ours160 = TimmRegNet('regnety_160')
    assert {k: v.shape for k, v in ref160.state_dict().items()} == \
        {k: v.shape for k, v in ours160.state_dict().items()}


def test_timm_teacher_backends():
    from mmengine.registry import MODELS
    builtin = MODELS.build(dict(type='TimmTeacher', model_name='regnety_002',
                                num_classes=5, backend='builtin'))
    assert isinstance(builtin, TimmRegNet) and builtin.head.fc.out_features == 5
    with pytest.raises(KeyError, match='only timm RegNets'):
        MODELS.build(dict(type='TimmTeacher', model_name='resnet18', backend='builtin'))
    pytest.importorskip('timm')
    from_timm = MODELS.build(dict(type='TimmTeacher', model_name='regnety_002',
                                  num_classes=5))
    assert set(from_timm.state_dict()) == set(builtin.state_dict())


# --------------------------------------------------------------------- the loss
@pytest.mark.parametrize('distill_type', ['hard', 'soft', 'none'])
def test_loss_equals_formula(distill_type, teacher_ckpt):
    """L = (1 - a) CE(Z_s, y) + a L_dist, recomputed by hand from the logits, with the
    teacher run on the same Mixup/CutMix inputs as the student."""
    alpha, tau = 0.3, 2.0
    model = build_model(distill_type, teacher_ckpt[0], alpha=alpha, tau=tau,
                        augments=[dict(type='Mixup', alpha=0.8),
                                  dict(type='CutMix', alpha=1.0)])
    model.init_weights()
    model.train()
    data, labels = make_batch()
    data = model.data_preprocessor(data, True)
    inputs, samples = data['inputs'], data['data_samples']
    assert 'gt_score' in samples[0]  # mixed soft targets

    seen = {}
    model.backbone.register_forward_pre_hook(lambda m, a: seen.__setitem__('s', a[0]))
    if model.teacher is not None:
        model.teacher.register_forward_pre_hook(
            lambda m, a: seen.__setitem__('t', a[0]))
    losses = model.loss(inputs, samples)
    if distill_type != 'none':
        assert torch.equal(seen['t'], seen['s'])  # the teacher sees the mixed images

    with torch.no_grad():
        cls, dist = model.head.forward_both(model.extract_feat(inputs))
        target = torch.stack([s.gt_score for s in samples])
        expected_cls = (1 - alpha) * label_smooth_ce(cls, target)
        if distill_type == 'none':
            expected_dist = alpha * label_smooth_ce(dist, target)
        else:
            t = teacher_ckpt[1](inputs)  # the saved teacher, in eval mode
            if distill_type == 'hard':
                expected_dist = alpha * F.cross_entropy(dist, t.argmax(1))
            else:  # DeiT: KL(p_t || p_s) at temperature tau, * tau^2, / numel
                p_t = F.softmax(t / tau, 1)
                kl = (p_t * (F.log_softmax(t / tau, 1) - F.log_softmax(dist / tau, 1)))
                expected_dist = alpha * kl.sum() * tau**2 / dist.numel()
    torch.testing.assert_close(losses['loss_cls'], expected_cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses['loss_dist'], expected_dist, rtol=1e-5, atol=1e-6)


def test_teacher_runs_under_the_training_autocast(teacher_ckpt):
    model = build_model('hard', teacher_ckpt[0])
    model.init_weights()
    data, _ = make_batch()
    data = model.data_preprocessor(data, True)
    dtypes = []
    model.teacher.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(data['inputs'], data['data_samples'])
    assert dtypes == [torch.bfloat16]
    assert torch.isfinite(sum(losses.values()))


# --------------------------------------------------------------------- teacher handling
def test_teacher_is_frozen_and_outside_state_dict_optimizer_and_ema(teacher_ckpt):
    from mmengine.model import ExponentialMovingAverage
    from mmengine.optim import build_optim_wrapper
    model = build_model('hard', teacher_ckpt[0])
    n_student = sum(p.numel() for p in model.parameters())
    model.init_weights()
    teacher = model.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    # the checkpoint was loaded (BN statistics are not the defaults)
    ref = teacher_ckpt[1].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in teacher.state_dict().items())

    assert sum(p.numel() for p in model.parameters()) == n_student
    assert not any(k.startswith('teacher') or '_teacher' in k for k in model.state_dict())
    optim = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3)))
    optimised = {id(p) for g in optim.optimizer.param_groups for p in g['params']}
    assert not optimised & {id(p) for p in teacher.parameters()}
    ema = ExponentialMovingAverage(model)
    assert ema.module.teacher is teacher  # shared, not a second copy
    assert set(ema.avg_parameters) == set(dict(model.named_parameters()))

    model.train()
    assert model.backbone.training and not teacher.training
    data, _ = make_batch()
    data = model.data_preprocessor(data, True)
    before = copy.deepcopy(teacher.state_dict())
    losses = model.loss(data['inputs'], data['data_samples'])
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # BN running stats untouched
        assert torch.equal(v, before[k]), k

    model.to(torch.float64)  # .to()/.cuda() reach the unregistered teacher
    assert next(teacher.parameters()).dtype == torch.float64


def test_predict_and_test_never_build_or_run_the_teacher(tmp_path):
    # No teacher file at all: evaluation must still work (tools/test.py never calls
    # init_weights), and the teacher is never built.
    model = build_model('hard', str(tmp_path / 'absent.pth'))
    model.eval()
    data, _ = make_batch()
    data = model.data_preprocessor(data, False)
    preds = model.predict(data['inputs'], data['data_samples'])
    assert len(preds) == 4 and preds[0].pred_score.shape == (NUM_CLASSES, )
    assert model(data['inputs'], mode='tensor').shape == (4, NUM_CLASSES)
    assert model.teacher is None


def test_missing_or_mismatched_teacher_checkpoint_is_a_clear_error(tmp_path, teacher_ckpt):
    with pytest.raises(TeacherCheckpointError, match='teacher_checkpoint'):
        build_model('hard', None)
    with pytest.raises(ValueError, match='needs a `teacher`'):
        from mmpretrain.registry import MODELS
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            MODELS.build(dict(
                type='DistillImageClassifier',
                backbone=dict(type='GroupMamba', arch=STUDENT, out_indices=(3, ),
                              final_norm=False),
                head=dict(type='GroupMambaClsHead', num_classes=NUM_CLASSES,
                          in_channels=64, distill_type='hard'),
                teacher_checkpoint=teacher_ckpt[0]))

    missing = build_model('hard', str(tmp_path / 'absent.pth'))
    with pytest.raises(TeacherCheckpointError, match='absent.pth.*not found'):
        missing.init_weights()  # what the Runner calls before the first iteration

    wrong_classes = TimmRegNet(TINY_REGNET, num_classes=NUM_CLASSES + 1)
    torch.save({'model': wrong_classes.state_dict()}, tmp_path / 'classes.pth')
    with pytest.raises(TeacherCheckpointError, match='does not fit'):
        build_model('hard', str(tmp_path / 'classes.pth')).init_weights()

    other_arch = TimmRegNet('regnetx_002', num_classes=NUM_CLASSES)
    torch.save(other_arch.state_dict(), tmp_path / 'arch.pth')
    with pytest.raises(TeacherCheckpointError, match='does not'):
        build_model('hard', str(tmp_path / 'arch.pth')).init_weights()

    # The teacher must classify the student's label set (checked on the logits too,
    # for teachers whose class count is not visible in a checkpoint mismatch).
    model = build_model('hard', teacher_ckpt[0])
    model.init_weights()
    model.head.num_classes = NUM_CLASSES + 2
    data, _ = make_batch()
    data = model.data_preprocessor(data, True)
    with pytest.raises(ValueError, match='same label set'):
        model.teacher_logits(data['inputs'])


def test_no_teacher_without_distillation(tmp_path):
    model = build_model('none', str(tmp_path / 'absent.pth'))
    model.init_weights()
    assert model.teacher is None
    data, labels = make_batch()
    data = model.data_preprocessor(data, True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert set(losses) == {'loss_cls', 'loss_dist'}


def test_checkpoint_wrappers_and_mmpretrain_teacher(tmp_path):
    """An mmpretrain classifier trained by tools/train.py is a valid teacher: its
    checkpoint's ``state_dict`` (EMA weights when EMAHook ran) loads, ``module.`` and
    all."""
    teacher_cfg = dict(
        type='ImageClassifier',
        backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=64))
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        trained = MODELS.build(teacher_cfg).eval()
    sd = {'module.' + k: v for k, v in trained.state_dict().items()}
    torch.save({'meta': {}, 'state_dict': sd}, tmp_path / 'epoch_1.pth')
    model = build_model('hard', str(tmp_path / 'epoch_1.pth'), teacher=teacher_cfg)
    model.init_weights()
    data, _ = make_batch()
    data = model.data_preprocessor(data, True)
    with torch.no_grad():
        expected = trained(data['inputs'], mode='tensor')
    torch.testing.assert_close(model.teacher_logits(data['inputs']), expected)
    assert isinstance(model, DistillImageClassifier)
