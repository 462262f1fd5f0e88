# ImageNet-1K, 128 images per GPU, the released GroupMamba / DeiT augmentation:
# RandomResizedCrop 224 (bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, random erasing
# 0.25 (Mixup 0.8 / CutMix 1.0 and label smoothing 0.1 are in the model config); test:
# resize the short edge to 256 (bicubic) and center-crop 224 (crop ratio 0.875).
#
# Standard folder layout (what torchvision's ImageFolder reads):
#   <data_root>/train/<wnid>/*.JPEG, <data_root>/val/<wnid>/*.JPEG
# optionally with <data_root>/meta/{train,val}.txt ("<wnid>/<file> <label>" lines), which
# mmpretrain uses instead of scanning the folders when present.
# Choose the root with the IMAGENET_ROOT environment variable, e.g.
#   IMAGENET_ROOT=/datasets/imagenet tools/dist_train.sh CONFIG 8
# or per loader with --cfg-options train_dataloader.dataset.data_root=...
# val_dataloader.dataset.data_root=... test_dataloader.dataset.data_root=...
dataset_type = 'ImageNet'
data_root = '{{$IMAGENET_ROOT:data/imagenet}}'

data_preprocessor = dict(
    num_classes=1000,
    # ImageNet statistics, RGB (the released models and the DeiT teacher use RGB input)
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)

# Images are BGR before the data preprocessor: fill values in BGR order.
bgr_mean = data_preprocessor['mean'][::-1]
bgr_std = data_preprocessor['std'][::-1]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    # timm rand-m9-mstd0.5-inc1: 2 ops, magnitude 9 of 10, std 0.5, increasing policies
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    # timm RandomErasing(0.25, mode='pixel'): per-pixel normal noise in normalised space
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
