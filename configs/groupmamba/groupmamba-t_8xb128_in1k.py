# GroupMamba-T on ImageNet-1K with the released recipe (8 GPUs x 128 images, 300 epochs,
# AdamW 1e-3, EMA 0.9999, AMP) and hard distillation from RegNetY-16GF (DeiT's teacher).
#
# Train:  IMAGENET_ROOT=/path/imagenet tools/dist_train.sh \
#             configs/groupmamba/groupmamba-t_8xb128_in1k.py 8 \
#             --cfg-options model.teacher_checkpoint=/path/regnety_160-a5fe301d.pth
#         (other batch sizes: add --auto-scale-lr; without a teacher:
#          --cfg-options model.head.distill_type=none)
# Test:   python tools/model_converters/official2mm.py groupmamba_tiny_ema.pth gm-t.pth
#         IMAGENET_ROOT=/path/imagenet python tools/test.py \
#             configs/groupmamba/groupmamba-t_8xb128_in1k.py gm-t.pth
#         (evaluation never builds or runs the teacher, and does not need its file)
_base_ = [
    '../_base_/datasets/imagenet_bs128_groupmamba.py',
    '../_base_/schedules/imagenet_bs1024_adamw_groupmamba.py',
    '../_base_/default_runtime_mmpretrain.py',
]
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)
default_scope = 'mmpretrain'

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
        cuda_graph=True),
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
