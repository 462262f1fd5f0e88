"""Where the Triton kernels run, one switch for the layers' fused kernels, and how
their autograd Functions are called.

The switch (on by default): off, :func:`~mmgroupmamba.ops.layer_norm`,
:func:`~mmgroupmamba.ops.modulated_layer_norm`,
:func:`~mmgroupmamba.ops.depthwise_conv3x3_act` and :func:`~mmgroupmamba.ops.linear`
run their PyTorch compositions everywhere: to measure what the kernels buy, or to time
the released execution. (The selective scan has its own choice of backend.)
"""
import contextlib
import os

import torch

_state = {'enabled': True}


def triton_interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def fused_kernel_applies(x: torch.Tensor) -> bool:
    """Whether a layer's fused kernel may take ``x``: the switch is on, ``x`` is on CUDA
    (or the interpreter runs kernels on CPU), and ``torch.jit`` is not tracing (FLOP
    counting wants the PyTorch operators). Each op adds its own conditions (Triton
    importable, supported shapes)."""
    return (fused_kernels_enabled() and (x.is_cuda or triton_interpreting())
            and not torch.jit.is_tracing())


def fused_kernels_enabled() -> bool:
    return _state['enabled']


@contextlib.contextmanager
def fused_kernels(enabled: bool):
    """``with fused_kernels(False): ...`` runs the block on the PyTorch compositions."""
    previous = _state['enabled']
    _state['enabled'] = bool(enabled)
    try:
        yield
    finally:
        _state['enabled'] = previous


class _NoGraphCtx:
    """The ``ctx`` an autograd Function's forward gets from :func:`apply_function` when
    no graph is recorded: no input needs a gradient and nothing is saved."""

    def __init__(self, n_inputs: int):
        self.needs_input_grad = (False, ) * n_inputs

    def save_for_backward(self, *tensors):
        pass


def apply_function(fn, *args):
    """``fn.apply(*args)`` for an autograd Function of a fused kernel; when no autograd
    graph is recorded (inference, or no input requires grad) its forward is called
    directly. ``Function.apply``'s bookkeeping costs more host time than launching the
    kernel, and inference on small maps is bound by host time."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                       for a in args):
        return fn.apply(*args)
    return fn.forward(_NoGraphCtx(len(args)), *args)
