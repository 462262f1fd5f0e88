# The released GroupMamba schedule: AdamW, lr 5e-4 per 512 images (1e-3 at the total
# batch of 1024 = 8 GPUs x 128), weight decay 0.05 except on 1-D parameters and biases,
# gradient clipping at 5.0, 300 epochs: 20 epochs of linear warm-up from 5e-7, then
# cosine to 5e-6, both stepped per iteration; mixed precision (fp16, dynamic loss scale).
#
# `tools/train.py --auto-scale-lr` rescales the lr linearly to the actual total batch
# (base 1024); the warm-up start and the final lr stay as written.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.05, eps=1e-8,
        betas=(0.9, 0.999)),
    # As released: no decay on norms, biases and every other 1-D parameter (the SSM's D,
    # the scalar skip_scale). The released code decays A_logs, a 2-D (d, N) tensor;
    # flat_decay_mult reproduces exactly that split.
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    # the same settings with one parameter group per setting instead of per parameter
    # (1192 groups of the backbone alone: AdamW launches its kernels once per group)
    constructor='MergedGroupsOptimWrapperConstructor',
    clip_grad=dict(max_norm=5.0),
)

warmup_epochs = 20
max_epochs = 300
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=5e-7 / 1e-3,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - warmup_epochs,
        eta_min=5e-6,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

auto_scale_lr = dict(base_batch_size=1024)
