# UperNet + auxiliary FCN on GroupMamba-T, ADE20K, 160k iterations at 512x512 (mmseg 1.x).
#
# The paper's setting, which is Swin-T's UperNet recipe (mmseg's
# swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py, written out here so
# the config needs no `mmseg::` base): total batch 16 = 8 GPUs x 2 images, AdamW lr 6e-5,
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
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)
default_scope = 'mmseg'

# ImageNet-1k GroupMamba-T weights: ours (tools/train.py on the classification config), the
# converter's output (tools/model_converters/official2mm.py), or the authors' released file
# itself (e.g. groupmamba_tiny_ema.pth), which the backbone converts on the fly.
checkpoint_file = 'checkpoints/groupmamba-t_in1k.pth'

crop_size = (512, 512)
num_classes = 150
# SyncBN in the heads, as in mmseg's UperNet configs. Runner reverts SyncBN to BatchNorm when
# it is not distributed (one process, CPU), so the same config also runs there.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    size=crop_size,  # pads training crops of small images up to 512x512
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='GroupMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        final_norm=True,
        drop_path_rate=0.2,
        # The stem's BatchNorms keep their ImageNet statistics: two 512x512 crops per GPU
        # are a small, unsynchronised batch.
        norm_eval=True,
        with_cp=False,
        scan_backend='auto',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(
        type='UPerHead',
        in_channels=[64, 128, 348, 448],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=348,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # Whole-image inference as mmseg's Swin configs: the backbone sees the resized image at
    # its own (arbitrary) H x W; the heads align their maps by interpolation.
    test_cfg=dict(mode='whole'))

# ---------------------------------------------------------------------------------- data
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # Annotations are loaded after Resize: metrics are computed at the original resolution,
    # to which the predictions are resized back.
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# Multi-scale + flip test (`tools/test.py ... --tta`): mmseg 1.x's ADE20K TTA, i.e. scale
# factors of the original image, both flips, softmax averaged by SegTTAModel.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ])
]
tta_model = dict(type='SegTTAModel')

train_dataloader = dict(
    batch_size=2,  # per GPU; 8 GPUs -> 16
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# ---------------------------------------------------------------------------- schedule
optim_wrapper = dict(
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
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# The recipe's lr is for a total batch of 16; --auto-scale-lr rescales it to other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# ----------------------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # a run killed while saving keeps its last checkpoint (mmgroupmamba)
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=16000,
                    save_best='mIoU', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
