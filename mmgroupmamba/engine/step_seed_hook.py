"""Make ``--resume`` replay random augmentation exactly."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class StepSeedHook(Hook):
    """Reseed Python, NumPy and torch from (seed, epoch) and (seed, iteration).

    MMEngine 0.10.7 does not store random-number states in checkpoints, so a resumed run
    draws different crops, flips and Mixup/CutMix parameters than the uninterrupted run
    would have. With every random stream a function of the run's seed and position, a
    run resumed at an epoch boundary continues bit for bit like the original (the
    sampler's order already depends only on seed and epoch). The dataloader workers get
    their seeds from the epoch reseed, which happens before the epoch's iterator exists.
    """

    priority = 'HIGHEST'

    @staticmethod
    def _reseed(value: int):
        value %= 2**32
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)

    @staticmethod
    def _base_seed(runner):
        return runner.seed if runner.seed is not None else 0

    def before_train_epoch(self, runner):
        self._reseed(self._base_seed(runner) * 1000003 + 7919 * (runner.epoch + 1))

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._reseed(self._base_seed(runner) * 1000003 + 104729 * (runner.iter + 1) + 1)
