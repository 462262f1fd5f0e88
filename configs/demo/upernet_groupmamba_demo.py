# Segmentation demo: UperNet + auxiliary FCN on a small GroupMamba, trained from scratch on
# the built-in ADE20K-layout scenes (5 classes: wall, floor, painting, box, ball), on CPU.
#
#   python tools/misc/generate_demo_data.py seg            # -> data/shapes_ade (a few s)
#   python tools/train.py configs/demo/upernet_groupmamba_demo.py --work-dir work_dirs/seg_demo
#   python tools/test.py configs/demo/upernet_groupmamba_demo.py \
#       work_dirs/seg_demo/iter_1000.pth [--tta]                  # single-scale / MS + flip
#
# The same pipeline, optimizer rules, schedule shape and TTA as
# configs/upernet_groupmamba_t_160k_ade20k.py, scaled down: crops of 128 instead of 512,
# resize scales / 4, 1000 iterations of batch 8, a higher lr for training from scratch.
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)
default_scope = 'mmseg'

data_root = 'data/shapes_ade'
# The generated set stores ADE20K label ids; these (ADE20K) class names select its five
# classes and map them to 0..4 (mmgroupmamba.datasets.synthetic_ade.SEG_CLASSES/SEG_PALETTE).
metainfo = dict(
    classes=('wall', 'floor', 'painting', 'box', 'ball'),
    palette=[[120, 120, 120], [80, 50, 50], [255, 6, 51], [0, 255, 20], [255, 0, 163]])
num_classes = 5
crop_size = (128, 128)
embed_dims = [32, 64, 96, 128]
# Plain BN: the demo runs in one process (Runner would also revert SyncBN there).
norm_cfg = dict(type='BN', requires_grad=True)

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    size=crop_size,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='GroupMamba',
        # The released block structure at a width that trains in minutes on 2 CPU cores.
        arch=dict(
            stem_channels=16,
            embed_dims=embed_dims,
            depths=[1, 1, 2, 1],
            mlp_ratios=[2, 2, 2, 2]),
        out_indices=(0, 1, 2, 3),
        final_norm=True,
        drop_path_rate=0.0,
        init_cfg=None),
    decode_head=dict(
        type='UPerHead',
        in_channels=embed_dims,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=64,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=embed_dims[2],
        in_index=2,
        channels=32,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# ---------------------------------------------------------------------------------- data
dataset_type = 'ADE20KDataset'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
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
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# ---------------------------------------------------------------------------- schedule
max_iters = 1000
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
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
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# ----------------------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
