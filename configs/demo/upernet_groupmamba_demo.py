# Segmentation demo: UperNet + auxiliary FCN on a small GroupMamba, trained from scratch on
# the built-in ADE20K-layout scenes (5 classes: wall, floor, painting, box, ball), on CPU.
#
#   python tools/misc/generate_demo_data.py seg            # -> data/shapes_ade (a few s)
#   python tools/train.py configs/demo/upernet_groupmamba_demo.py --work-dir work_dirs/seg_demo
#   python tools/test.py configs/demo/upernet_groupmamba_demo.py \
#       work_dirs/seg_demo/iter_1000.pth [--tta]                  # single-scale / MS + flip
#
# Reference run (seed 0, 2 CPU cores shared with another job): mIoU 84.56 single-scale,
# 88.22 multi-scale + flip; ~9 minutes for training and both tests.
#
# Inherits configs/upernet_groupmamba_t_160k_ade20k.py (pipeline, optimizer rules, schedule
# shape, TTA) and scales it down: crops of 128 instead of 512,
# resize scales / 4, 1000 iterations of batch 8, a higher lr for training from scratch.
_base_ = ['../upernet_groupmamba_t_160k_ade20k.py']

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

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        # The released block structure at a width that trains in minutes on 2 CPU cores.
        # (GroupMamba.arch_zoo['demo']; embed_dims above are its widths)
        arch='demo',
        drop_path_rate=0.0,
        # Trained from scratch: the stem BNs learn their statistics.
        norm_eval=False,
        init_cfg=None),
    decode_head=dict(
        in_channels=embed_dims, channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=embed_dims[2], channels=32, num_classes=num_classes,
        norm_cfg=norm_cfg))

# ---------------------------------------------------------------------------------- data
# The 1x pipelines with every scale / 4 (the generated scenes are 128-192 px).
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
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

# ---------------------------------------------------------------------------- schedule
max_iters = 1000
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # from scratch: a higher lr
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
auto_scale_lr = dict(base_batch_size=8)

# ----------------------------------------------------------------------------- runtime
default_hooks = dict(
    checkpoint=dict(_delete_=True, type='AtomicCheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0, deterministic=False)
