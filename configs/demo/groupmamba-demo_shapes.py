# Main demo job: train a small GroupMamba classifier on the built-in shapes set
# (tools/misc/generate_demo_data.py cls -> data/shapes, ImageNet folder layout) on CPU.
#   python tools/train.py configs/demo/groupmamba-demo_shapes.py
# Measured (seed 0, 2 CPU cores, tools/run_demo.sh): val top-1 56.25 / 92.5 / 95.0% after
# 10 / 20 / 30 epochs, the same losses and figures in two runs; chance is 12.5%.
_base_ = [
    '../_base_/datasets/shapes_bs32.py',
    '../_base_/default_runtime_mmpretrain.py',
]

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='GroupMamba',
        # The released block structure at a width that trains in minutes on 2 CPU cores.
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
        distill_type='none',
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, )))

# Inputs scaled to [-1, 1]; the full 64x64 images with flips only, loaded by 2 workers.
data_preprocessor = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    num_workers=2, persistent_workers=True, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=2, persistent_workers=True)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    # As released: no decay on 1-D parameters (norms, D, skip_scale) and biases.
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.),
    clip_grad=dict(max_norm=5.0))
max_epochs = 30
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True,
         begin=1, end=max_epochs),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1, save_best=None))
custom_hooks = []
randomness = dict(seed=0, deterministic=False)
