from .step_seed_hook import StepSeedHook

__all__ = ['StepSeedHook']
