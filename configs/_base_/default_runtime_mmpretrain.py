# Runtime settings of the GroupMamba classification configs (mmpretrain).
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)
default_scope = 'mmpretrain'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # The EMAHook below makes checkpoints (and `save_best`) hold the EMA weights.
    # AtomicCheckpointHook (mmgroupmamba): a run killed while saving keeps its last
    # checkpoint (mmengine's CheckpointHook deletes the oldest one first).
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)

# EMA of the weights (and buffers) with decay 0.9999 per iteration, as released;
# validation, test and the saved `state_dict` use the EMA weights.
# StepSeedHook (mmgroupmamba) makes `--resume` replay the random augmentation exactly.
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL', update_buffers=True),
    dict(type='StepSeedHook'),
]

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
randomness = dict(seed=None, deterministic=False)
