# Distillation demo: a small GroupMamba learns the built-in shapes set from the labels and,
# through its distillation head, from a frozen teacher (hard distillation, alpha 0.5), with
# the structure of the ImageNet recipe (label smoothing, AdamW + warm-up + cosine, grad
# clip, EMA) scaled to 64x64 images and a few CPU minutes.
#
#   tools/misc/run_distill_demo.sh    # teacher, this student, the student without teacher
#
# or by hand, after training the teacher (groupmamba-demo_distill-teacher_shapes.py):
#   python tools/train.py configs/demo/groupmamba-demo_distill_shapes.py \
#       --work-dir work_dirs/demo_distill/student_distill \
#       --cfg-options model.teacher_checkpoint=work_dirs/demo_distill/teacher/epoch_100.pth
_base_ = [
    '../_base_/datasets/shapes_bs32.py',
    '../_base_/default_runtime_mmpretrain.py',
]

model = dict(
    type='DistillImageClassifier',
    backbone=dict(
        type='GroupMamba',
        # The released block structure at a width that trains in minutes on a CPU core.
        # (GroupMamba.arch_zoo['demo']: stem 16, widths 32/64/96/128, depths 1/1/2/1)
        arch='demo',
        out_indices=(3, ),
        final_norm=False,
        drop_path_rate=0.0),
    neck=None,
    head=dict(
        type='GroupMambaClsHead',
        num_classes={{_base_.num_classes}},
        in_channels=128,
        mlp_ratio=2,
        distill_type='hard',
        distill_alpha=0.5,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, )),
    # Must equal the `model` of groupmamba-demo_distill-teacher_shapes.py.
    teacher=dict(
        type='ImageClassifier',
        backbone=dict(type='ResNet', depth=18, stem_channels=16, base_channels=16,
                      out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes={{_base_.num_classes}}, in_channels=128)),
    teacher_checkpoint='work_dirs/demo_distill/teacher/epoch_100.pth',
    # No Mixup/CutMix for the students (the teacher is trained with them): in 40 epochs
    # they keep this small student far from convergence (~87% with or without a
    # teacher), which would compare two under-trained models. The ImageNet configs mix;
    # the mixed path (teacher on the mixed images) is covered by tests/tasks/test_distillation.
    train_cfg=None,
)

max_epochs = 40
warmup_epochs = 2
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, eps=1e-8,
                   betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(interval=15),
    checkpoint=dict(interval=10, max_keep_ckpts=1, save_best=None))
# EMA as in the recipe, with a decay suited to ~600 iterations (0.99 instead of 0.9999).
custom_hooks = [
    dict(type='EMAHook', momentum=1e-2, priority='ABOVE_NORMAL', update_buffers=True),
]
randomness = dict(seed=0, deterministic=True)
