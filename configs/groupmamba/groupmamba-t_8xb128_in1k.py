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
#
# The model (backbone, head, teacher, Mixup/CutMix) is configs/_base_/models/groupmamba_t.py;
# custom_imports and default_scope come from the runtime base.
_base_ = [
    '../_base_/models/groupmamba_t.py',
    '../_base_/datasets/imagenet_bs128_groupmamba.py',
    '../_base_/schedules/imagenet_bs1024_adamw_groupmamba.py',
    '../_base_/default_runtime_mmpretrain.py',
]
