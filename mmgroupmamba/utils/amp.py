"""Autocast helpers shared by the layers and the runtime."""
import torch


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
