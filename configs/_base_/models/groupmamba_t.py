# GroupMamba-T ImageNet-1k classifier as released: class-token head with hard distillation
# from RegNetY-16GF (DeiT's teacher), Mixup/CutMix in the data preprocessor, label
# smoothing 0.1. configs/groupmamba/groupmamba-{t,s,b}_8xb128_in1k.py use it; S and B
# override the arch and the head's input width.
model = dict(
    type='DistillImageClassifier',
    backbone=dict(
        type='GroupMamba',
        arch='tiny',
        out_indices=(3, ),
        # the class-token head applies the released final norm after its class block
        final_norm=False,
        # the released models were all trained with 0.05 (hard-coded in their code)
        drop_path_rate=0.05,
        # fixed 224x224 batches: the backbone's forward and backward replay CUDA graphs
        # (2.4x the eager training step on an H200, same results; README "Speed")
        execution=dict(cuda_graph=True)),
    neck=None,
    head=dict(
        type='GroupMambaClsHead',
        num_classes=1000,
        in_channels=448,
        mlp_ratio=4,  # the class block uses the last stage's FFN ratio
        # L = (1 - a) CE(fc, mixed smoothed labels) + a CE(dist_fc, argmax teacher)
        distill_type='hard',
        distill_alpha=0.5,
        distill_tau=1.0,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)),
    # RegNetY-16GF: timm's regnety_160 (the built-in copy of the same network and keys
    # when timm is not importable). It sees the student's inputs after Mixup/CutMix.
    teacher=dict(type='TimmTeacher', model_name='regnety_160', num_classes=1000),
    teacher_checkpoint='checkpoints/regnety_160-a5fe301d.pth',
    # Mixup 0.8 / CutMix 1.0, one of the two per batch (switch prob 0.5); run in the data
    # preprocessor, i.e. before both the student's loss and the teacher.
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)
