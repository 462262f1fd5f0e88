"""LayerNorm over the channels of channels-last maps, run by our fused kernel on CUDA."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgroupmamba.execution import ExecutionPolicy
from mmgroupmamba.ops import layer_norm, modulated_layer_norm, residual_layer_norm
from mmgroupmamba.ops.fused_layer_norm import residual_add


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (same parameters and state-dict keys).

    On CUDA it runs :func:`mmgroupmamba.ops.layer_norm` (one Triton kernel, fp32
    statistics), elsewhere ``F.layer_norm``.

    Args:
        amp_output: under autocast, write the autocast dtype (bf16/fp16) instead of the
            float32 that autocast gives a LayerNorm. For a norm whose output only feeds
            matmuls (which cast it to that dtype anyway) and products with their
            outputs; the norms of the residual stream and of stage outputs keep float32.
            The execution policy's ``norm_amp_output=False`` (the released numerics)
            turns it off.

    Reads ``self.execution`` (:class:`~mmgroupmamba.execution.ExecutionPolicy`): the
    Triton kernels (``fused_kernels``) and ``norm_amp_output``.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, amp_output: bool = False,
                 **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        if len(self.normalized_shape) != 1:
            raise ValueError('mmgroupmamba LayerNorm normalises the last dimension only; '
                             f'got normalized_shape={normalized_shape}.')
        self.amp_output = amp_output
        self.execution = ExecutionPolicy()

    def _out_dtype(self, x):
        if torch.is_autocast_enabled(x.device.type):
            amp_output = self.amp_output and self.execution.norm_amp_output
            return torch.get_autocast_dtype(x.device.type) if amp_output else torch.float32
        return None

    def _check(self, x):
        if x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f'LayerNorm over {self.normalized_shape[0]} channels got an input '
                             f'with {x.shape[-1]} in its last dimension ({tuple(x.shape)}).')

    def forward(self, x):
        self._check(x)
        if torch.jit.is_tracing():
            return self._traced(x)
        return layer_norm(x, self.weight, self.bias, self.eps, self._out_dtype(x),
                          fused=self.execution.fused_kernels)

    def modulated(self, y, x, scale):
        """``self(y * x * scale)`` with ``scale`` (B, C) per image, in one pass on CUDA."""
        self._check(x)
        if torch.jit.is_tracing():
            return self._traced(y * x * scale.view(scale.shape[0], *([1] * (x.dim() - 2)),
                                                   scale.shape[-1]))
        return modulated_layer_norm(y, x, scale, self.weight, self.bias, self.eps,
                                    self._out_dtype(x), fused=self.execution.fused_kernels)

    def add_and_norm(self, x, y, factor=None):
        """``(s, self(s))`` with the residual sum ``s = x + y * factor[b]`` (``factor``
        (B,) per image, e.g. :meth:`ResidualDropPath.factor`, or None), in one pass on
        CUDA: the add's output is read back by no second kernel, and the backward adds
        the two gradients of ``s`` in the norm's kernel."""
        self._check(x)
        if torch.jit.is_tracing():
            total = residual_add(x, y, factor)
            return total, self._traced(total)
        return residual_layer_norm(x, y, factor, self.weight, self.bias, self.eps,
                                   self._out_dtype(x), fused=self.execution.fused_kernels)

    def _traced(self, x):
        # The ops' composition takes the normalised shape from x, which a trace records
        # as a value computed from the input; ONNX's LayerNormalization needs it constant.
        out = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dtype = self._out_dtype(x)
        return out if dtype is None else out.to(dtype)

    def extra_repr(self):
        return super().extra_repr() + (', amp_output=True' if self.amp_output else '')
