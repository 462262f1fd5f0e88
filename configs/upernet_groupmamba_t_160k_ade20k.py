# UperNet + auxiliary FCN on GroupMamba-T, ADE20K, 160k iterations at 512x512 (mmseg 1.x).
#
# The paper's setting, which is Swin-T's UperNet recipe (mmseg's
# swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py, on the same
# `mmseg::` bases): total batch 16 = 8 GPUs x 2 images, AdamW lr 6e-5,
# wd 0.01 (none on norms, biases, 1-D parameters and the SSM's A_log / D / skip_scale),
# linear warm-up for 1500 iterations then poly decay (power 1) to 160k, drop path 0.2 as in
# VMamba-T's UperNet config, whole-image inference, mIoU.
#
#   train:  bash tools/dist_train.sh configs/upernet_groupmamba_t_160k_ade20k.py 8
#   test:   bash tools/dist_test.sh configs/upernet_groupmamba_t_160k_ade20k.py CKPT 8
#   MS+flip test: bash tools/dist_test.sh configs/upernet_groupmamba_t_160k_ade20k.py CKPT 8 --tta
#
# With another GPU count keep the total batch at 16 (e.g. 4 GPUs x
# `--cfg-options train_dataloader.batch_size=4`), or pass --auto-scale-lr.
# Model: 50.60M parameters in total (backbone 20.46M, UPerHead 29.30M, auxiliary FCN head
# 0.84M; 49.76M without the auxiliary head, which inference does not use); the paper
# reports 49M. (The same count gives 59.9M for mmseg's Swin-T UperNet, reported as 60M.)
#
# Model, data, schedule and runtime are mmseg's UperNet / ADE20K / 160k bases (below); this
# file sets what differs: the backbone, the heads' input widths and classes, padding to the
# crop size, the TTA annotations, AdamW with warm-up, 2 images per GPU and the checkpoint
# hook.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

# ImageNet-1k GroupMamba-T weights: ours (tools/train.py on the classification config), the
# converter's output (tools/model_converters/official2mm.py), or the authors' released file
# itself (e.g. groupmamba_tiny_ema.pth), which the backbone converts on the fly.
checkpoint_file = 'checkpoints/groupmamba-t_in1k.pth'

crop_size = (512, 512)
num_classes = 150
# The heads keep the base's norm_cfg, SyncBN as in mmseg's UperNet configs. Runner reverts
# SyncBN to BatchNorm when it is not distributed (one process, CPU), so the same config
# also runs there.
# pads training crops of small images up to 512x512
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,  # in place of the base's Swin Transformer
        type='GroupMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        final_norm=True,
        drop_path_rate=0.2,
        # The stem's BatchNorms keep their ImageNet statistics: two 512x512 crops per GPU
        # are a small, unsynchronised batch.
        norm_eval=True,
        # how it runs (mmgroupmamba.execution.ExecutionPolicy): training steps replay
        # CUDA graphs of the backbone's forward and backward (512x512 crops: one
        # size); whole-image testing, where every image has its own size, runs eagerly
        execution=dict(scan_backend='auto', with_cp=False, cuda_graph='train'),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 348, 448], num_classes=num_classes),
    auxiliary_head=dict(in_channels=348, num_classes=num_classes))

# ---------------------------------------------------------------------------------- data
# Multi-scale + flip test (`tools/test.py ... --tta`): mmseg 1.x's ADE20K TTA, i.e. scale
# factors of the original image, both flips, softmax averaged by SegTTAModel; unlike the
# base's, its annotations are loaded with reduce_zero_label=True as in the test pipeline.
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale_factor=r, keep_ratio=True)
                for r in _base_.img_ratios
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(batch_size=2)  # per GPU; 8 GPUs -> 16

# ---------------------------------------------------------------------------- schedule
# (schedule_160k.py also names SGD as a top-level ``optimizer``, which nothing reads; the
# optimizer is optim_wrapper's)
optimizer = None
optim_wrapper = dict(
    _delete_=True,  # the base's SGD
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        flat_decay_mult=0.,
        custom_keys={
            '.A_log': dict(decay_mult=0.),
            '.D': dict(decay_mult=0.),
            'skip_scale': dict(decay_mult=0.),
        }),
    # the same settings with one parameter group per setting instead of per parameter
    # (1192 groups in the backbone alone, for each of which AdamW launches its kernels)
    constructor='MergedGroupsOptimWrapperConstructor')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# The recipe's lr is for a total batch of 16; --auto-scale-lr rescales it to other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# ----------------------------------------------------------------------------- runtime
default_hooks = dict(
    # a run killed while saving keeps its last checkpoint (mmgroupmamba)
    checkpoint=dict(type='AtomicCheckpointHook', save_best='mIoU', rule='greater'))
