from .autocast_optim_wrapper import AutocastOptimWrapper
from .step_seed_hook import StepSeedHook

__all__ = ['AutocastOptimWrapper', 'StepSeedHook']
