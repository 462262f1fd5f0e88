from .autocast_optim_wrapper import AutocastOptimWrapper
from .checkpoint_hook import AtomicCheckpointHook
from .step_seed_hook import StepSeedHook

__all__ = ['AtomicCheckpointHook', 'AutocastOptimWrapper', 'StepSeedHook']
