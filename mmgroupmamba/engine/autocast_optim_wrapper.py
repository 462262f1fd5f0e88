"""Mixed-precision training in bfloat16: autocast without a loss scale."""
from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """An :class:`~mmengine.optim.OptimWrapper` whose forward runs under autocast in
    bfloat16, with the loss backpropagated and the optimizer stepped unscaled.

    MMEngine 0.10.7's ``AmpOptimWrapper`` always creates a ``GradScaler``, whatever its
    ``dtype``, and refuses to start without a GPU. Loss scaling exists for float16, whose
    narrow exponent range lets small gradients underflow; bfloat16 has float32's range,
    so a scaler only adds an inf/NaN check of every gradient per step (and with it the
    skipped steps and scale changes of its warm-up). This wrapper has no scaler, and it
    also runs on CPU, whose autocast supports bfloat16 only.

    ``tools/train.py --amp`` selects it for bfloat16 (``--amp-dtype bfloat16`` or the
    config's ``optim_wrapper.dtype``; on a machine without CUDA bfloat16 is the default).

    Args:
        dtype (str | torch.dtype): the autocast dtype; only bfloat16 (float16 needs the
            loss scale of ``AmpOptimWrapper``).
        **kwargs: as :class:`~mmengine.optim.OptimWrapper` (``optimizer``,
            ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype != torch.bfloat16:
            raise ValueError(
                f'AutocastOptimWrapper trains without loss scaling, which is safe in '
                f'bfloat16 only; got dtype={dtype!r}. Use AmpOptimWrapper (a dynamic '
                'loss scale) for float16.')
        super().__init__(**kwargs)
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Autocast in :attr:`cast_dtype` on the model's device type, inside the base
        context (which skips gradient synchronisation while accumulating)."""
        from mmengine.runner.amp import autocast
        with super().optim_context(model), autocast(dtype=self.cast_dtype):
            yield
