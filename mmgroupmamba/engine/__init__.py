from .checkpoint_hook import AtomicCheckpointHook
from .step_seed_hook import StepSeedHook

__all__ = ['AtomicCheckpointHook', 'StepSeedHook']
