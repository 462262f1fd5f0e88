"""``nn.Linear`` with GroupMamba's two inference shortcuts."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgroupmamba.ops import linear


def autocast_dtype(device_type: str):
    """The autocast dtype for ``device_type``, or None outside autocast."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class InferenceCache:
    """A value derived from some tensors, kept between inference calls while they are
    unchanged: rebuilt when a tensor is replaced or modified in place (its data pointer
    or ``_version``) or the ``tag`` (e.g. the autocast dtype) changes.

    Autocast casts every weight again in each ``with autocast()`` block, i.e. every
    inference step: one extra kernel launch per weight and bias, which is a large part
    of the host time of an inference step on small maps. Cached casts (and the grouped
    layer's packed parameters) avoid that.
    """

    def __init__(self):
        self._key = None
        self._value = None

    def get(self, tensors, tag, build):
        """The cached value for ``tensors`` and ``tag``, or ``build()`` if stale."""
        key = (tag, tuple((t.data_ptr(), t._version) for t in tensors))
        if key != self._key:
            self._value = build()
            self._key = key
        return self._value

    @property
    def value(self):
        """The value built last (None before the first ``get``)."""
        return self._value


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) with two inference shortcuts,
    taken only when no autograd graph is recorded (training is unchanged):

    * under autocast, the weight and bias come from an :class:`InferenceCache`
      instead of being cast again on every call;
    * in float32 on CUDA, large inputs go through :func:`mmgroupmamba.ops.linear`
      (3xTF32 on tensor cores, float32 accuracy).
    """

    def forward(self, x):
        dtype = autocast_dtype(x.device.type)
        if dtype is None:
            return linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)
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
