"""``nn.Linear`` with GroupMamba's two inference shortcuts."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgroupmamba.execution import ExecutionPolicy
from mmgroupmamba.ops import linear
from mmgroupmamba.utils.amp import InferenceCache, autocast_dtype


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) through
    :func:`mmgroupmamba.ops.linear` (in training on CUDA: the bias gradient as a GEMV),
    with two inference shortcuts, taken only when no autograd graph is recorded:

    * under autocast, the weight and bias come from an :class:`InferenceCache`
      instead of being cast again on every call;
    * in float32 on CUDA, large inputs go through :func:`mmgroupmamba.ops.linear`
      (3xTF32 on tensor cores, float32 accuracy) unless the execution policy
      (``self.execution``) turns the fused kernels off.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.execution = ExecutionPolicy()

    def forward(self, x, cast=None):
        """``cast``: ``(weight, bias)`` as the caller cast them for this training step
        (:func:`~mmgroupmamba.utils.amp.training_casts`), used instead of the own."""
        if cast is not None:
            return linear(x, *cast, fused=self.execution.fused_kernels)
        dtype = autocast_dtype(x.device.type)
        if dtype is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return linear(x, self.weight, self.bias, fused=self.execution.fused_kernels)
        cache = self.__dict__.get('_cast_cache')
        if cache is None:
            cache = self.__dict__['_cast_cache'] = InferenceCache()
        params = (self.weight, ) if self.bias is None else (self.weight, self.bias)
        return F.linear(x, *cache.get(params, dtype,
                                      lambda: tuple(t.to(dtype) for t in params)))

    def __getstate__(self):
        # copies and pickles (EMA models, torch.save(model)) leave the cache out
        state = super().__getstate__()
        state.pop('_cast_cache', None)
        return state
