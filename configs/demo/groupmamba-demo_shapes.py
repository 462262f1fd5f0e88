# Main demo job: train a small GroupMamba classifier on the built-in shapes set
# (tools/misc/generate_demo_data.py cls -> data/shapes, ImageNet folder layout) on CPU.
#   python tools/train.py configs/demo/groupmamba-demo_shapes.py
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)
default_scope = 'mmpretrain'

data_root = 'data/shapes'
num_classes = 8
classes = ['circle', 'square', 'triangle', 'cross', 'ring', 'h_stripes', 'v_stripes',
           'checker']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='GroupMamba',
        # The released block structure at a width that trains in minutes on 2 CPU cores.
        arch=dict(
            stem_channels=16,
            embed_dims=[32, 64, 96, 128],
            depths=[1, 1, 2, 1],
            mlp_ratios=[2, 2, 2, 2]),
        out_indices=(3, ),
        final_norm=False,
        drop_path_rate=0.0),
    neck=None,
    head=dict(
        type='GroupMambaClsHead',
        num_classes=num_classes,
        in_channels=128,
        mlp_ratio=2,
        distill_type='none',
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, )))

data_preprocessor = dict(
    num_classes=num_classes,
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        ann_file='meta/train.txt',
        classes=classes,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        ann_file='meta/val.txt',
        classes=classes,
        pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    # As released: no decay on 1-D parameters (norms, D, skip_scale) and biases.
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.),
    clip_grad=dict(max_norm=5.0))
max_epochs = 12
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True,
         begin=1, end=max_epochs),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=4)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=5),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
