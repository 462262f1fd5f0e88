# Teacher of the distillation demo: a width-reduced ResNet-18 (16 base channels, 0.7M
# parameters) trained on the built-in shapes set with the project's own tools, so the demo
# needs no download. CPU, 1 thread, ~3 minutes:
#   python tools/misc/generate_demo_data.py cls
#   python tools/train.py configs/demo/groupmamba-demo_distill-teacher_shapes.py \
#       --work-dir work_dirs/demo_distill/teacher
# tools/misc/run_distill_demo.sh runs this and both students.
_base_ = [
    '../_base_/datasets/shapes_bs32.py',
    '../_base_/default_runtime_mmpretrain.py',
]

# The students' config repeats this dict as its `teacher` (configs cannot import).
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=18, stem_channels=16, base_channels=16,
                  out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes={{_base_.num_classes}},
        in_channels=128,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, )),
    # Trained with the students' Mixup/CutMix, as DeiT's RegNetY teacher was: its argmax
    # on a mixed image is then a meaningful target (a teacher trained on clean images
    # names a class outside the mix for ~10% of mixed images, and hurt the student).
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]))

max_epochs = 100
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 2, eta_min=1e-5, by_epoch=True,
         begin=2, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(interval=15),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1, save_best=None))
custom_hooks = []
randomness = dict(seed=0, deterministic=True)
