"""Autocast helpers shared by the layers and the runtime."""
from typing import Optional

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


class _CastTogether(torch.autograd.Function):
    """Tensors cast to one dtype by one copy into one buffer (``torch.cat`` writing the
    new dtype), their gradients cast back by one more; the outputs, and the gradients,
    are views of that buffer."""

    @staticmethod
    def forward(ctx, dtype, *tensors):
        sizes = [t.numel() for t in tensors]
        flat = tensors[0].new_empty(sum(sizes), dtype=dtype)
        torch.cat([t.reshape(-1) for t in tensors], out=flat)
        ctx.sizes, ctx.shapes = sizes, [t.shape for t in tensors]
        ctx.source_dtype = tensors[0].dtype
        return tuple(v.view(s) for v, s in zip(flat.split(sizes), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads):
        # (autograd passes zeros for outputs that got no gradient: materialized grads)
        flat = grads[0].new_empty(sum(ctx.sizes), dtype=ctx.source_dtype)
        torch.cat([g.reshape(-1) for g in grads], out=flat)
        return (None, *(v.view(s) for v, s in zip(flat.split(ctx.sizes), ctx.shapes)))


def cast_together(tensors, dtype: torch.dtype) -> tuple:
    """``tuple(t.to(dtype) for t in tensors)`` (same values, same gradients) in one
    launch forward and one backward instead of one each per tensor. ``tensors``: one
    source dtype, on one device."""
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError(f'cast_together takes tensors of one dtype, got '
                         f'{sorted({str(t.dtype) for t in tensors})}.')
    return _CastTogether.apply(dtype, *tensors)


def training_casts(x: torch.Tensor, params) -> Optional[tuple]:
    """``params`` cast together (:func:`cast_together`) to the autocast dtype for an
    eager training step on ``x``, or None where autocast would not cast them per call:
    outside autocast, without autograd (inference caches its casts instead), while
    ``torch.compile`` traces (Inductor fuses the casts) or ``torch.jit`` traces.

    Autocast casts every weight and bias again at each use, forward, and casts each
    gradient back, backward: in a GroupMamba-T training step ~540 launches, most of
    them these. A block's layers take their parameters cast this way instead (four
    launches a block where there were ~26).
    """
    dtype = autocast_dtype(x.device.type)
    if (dtype is None or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or any(p.dtype != params[0].dtype for p in params)
            or params[0].dtype == dtype):
        return None
    return cast_together(params, dtype)
