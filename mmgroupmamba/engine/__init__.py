from .autocast_optim_wrapper import AutocastOptimWrapper
from .checkpoint_hook import AtomicCheckpointHook
from .optim_constructor import MergedGroupsOptimWrapperConstructor, merge_param_groups
from .step_seed_hook import StepSeedHook

__all__ = ['AtomicCheckpointHook', 'AutocastOptimWrapper', 'MergedGroupsOptimWrapperConstructor',
           'StepSeedHook', 'merge_param_groups']
