"""Where the Triton kernels run and how their autograd Functions are called: in eager
mode the Function itself, under ``torch.compile`` the same computation as a
``torch.library`` custom operator (:func:`call_fused`, :func:`register_fused_op`).

:func:`~mmgroupmamba.ops.layer_norm`, :func:`~mmgroupmamba.ops.modulated_layer_norm`,
:func:`~mmgroupmamba.ops.depthwise_conv3x3_act` and :func:`~mmgroupmamba.ops.linear`
take ``fused=False`` to run their PyTorch compositions (the layers pass their execution
policy's ``fused_kernels``, :class:`mmgroupmamba.execution.ExecutionPolicy`). The
selective scan has its own choice of backend.
"""
import os
from typing import Callable, Optional, Sequence

import torch


def triton_interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def tensor_args(name, t, strides, axes, stride_name=None):
    """A kernel's keyword arguments for tensor ``t``: ``{name}_ptr`` and its strides
    ``s_{stride_name or name}_{axis}`` (``axes``: one letter per stride), as the strided
    kernels (scan, depthwise conv) name them."""
    stride_name = stride_name or name
    return {f'{name}_ptr': t, **{f's_{stride_name}_{a}': st for a, st in zip(axes, strides)}}


def fused_kernel_applies(x: torch.Tensor, fused: bool = True) -> bool:
    """Whether a fused kernel may take ``x``: the caller asks for it (``fused``), ``x``
    is on CUDA (or the interpreter runs kernels on CPU), and ``torch.jit`` is not
    tracing (FLOP counting wants the PyTorch operators). Each op adds its own
    conditions (Triton importable, supported shapes)."""
    return (fused and (x.is_cuda or triton_interpreting())
            and not torch.jit.is_tracing())


class _NoGraphCtx:
    """The ``ctx`` an autograd Function's forward gets from :func:`apply_function` when
    no graph is recorded: no input needs a gradient and nothing is saved."""

    def __init__(self, n_inputs: int):
        self.needs_input_grad = (False, ) * n_inputs

    def save_for_backward(self, *tensors):
        pass


def records_grad(*args) -> bool:
    """Whether autograd records an op on ``args``: grad mode is on and a tensor among
    them requires grad (non-tensors and None are skipped)."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for a in args)


def apply_function(fn, *args):
    """``fn.apply(*args)`` for an autograd Function of a fused kernel; when no autograd
    graph is recorded (inference, or no input requires grad) its forward is called
    directly. ``Function.apply``'s bookkeeping costs more host time than launching the
    kernel, and inference on small maps is bound by host time."""
    if records_grad(*args):
        return fn.apply(*args)
    return fn.forward(_NoGraphCtx(len(args)), *args)


def call_fused(function, op: Callable, *args):
    """Run a fused kernel: ``op(*args)`` (its custom operator) while ``torch.compile``
    traces, so that the whole model is one graph (Dynamo records the operator as one
    node, with its fake-tensor and autograd registrations, and Inductor fuses the work
    around it); in eager mode ``function`` (its autograd Function, through
    :func:`apply_function`): a custom operator costs 10-20 us more host time per call
    than a Function, and eager steps of this model are bound by host time."""
    if torch.compiler.is_compiling():
        return op(*args)
    return apply_function(function, *args)


def register_fused_op(name: str, fn: Callable, fake: Callable,
                      backward: Optional[Callable] = None,
                      setup_context: Optional[Callable] = None):
    """``fn`` as the custom operator ``mmgroupmamba::name`` (schema from its type
    annotations), with its fake-tensor function (output shapes and dtypes, for tracing
    with symbolic sizes) and, if given, its autograd formula. Returns the operator."""
    op = torch.library.custom_op(f'mmgroupmamba::{name}', mutates_args=())(fn)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return op


def distinct(tensors: Sequence[torch.Tensor]) -> tuple:
    """``tensors`` with every one that shares memory with an earlier one copied: a
    custom operator's outputs must not alias each other (the kernels' launchers return
    views of one buffer where that saves a reduction)."""
    seen, out = set(), []
    for t in tensors:
        key = t.untyped_storage().data_ptr() if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        seen.add(key)
        out.append(t)
    return tuple(out)
