"""A module's training forward and backward as CUDA graphs, per input signature.

An eager training step of GroupMamba-T launches ~3300 kernels and records as many
autograd nodes; its host time (200-400 ms at batch 128) is two to four times its GPU
time. :func:`torch.cuda.make_graphed_callables` captures the forward and the backward
once and replays them as two launches; the optimizer, loss and the rest of the model
stay eager and untouched.
"""
import weakref
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from .graphed_inference import _without_autocast_cache


class _Forward(nn.Module):
    """``forward(x)`` of ``module`` as a module whose parameters are ``module``'s (what
    ``make_graphed_callables`` needs to return their gradients)."""

    def __init__(self, module: nn.Module, forward: Callable):
        super().__init__()
        self.module = module
        self._fn = forward

    def forward(self, x):
        return self._fn(x)


class GraphedTraining:
    """Runs ``forward(x)`` of ``module`` in training as a replayed CUDA graph (forward)
    whose backward is another replayed graph, one pair per input signature (shape,
    strides, dtype, autocast setting, which parameters train, ``extra_key()``).

    Captured on the first call with a new signature after three warm-up forward and
    backward passes of that input (``make_graphed_callables``; the buffers, e.g.
    BatchNorm running statistics, are restored afterwards). The
    graphs read and write the parameters, their gradients and the random state in
    place, so optimizer steps, gradient scaling, gradient accumulation, DDP's gradient
    hooks and stochastic depth work as in eager mode. Outputs and activations live in the
    graphs' memory: while a replay's autograd graph is alive and its backward has not
    run, further calls run eagerly (another replay would overwrite them).

    Args:
        forward: the eager forward of ``module``, one tensor in, tensors out.
        module: owns the parameters ``forward`` uses.
        max_graphs: signatures beyond this many run eagerly (each pair of graphs holds
            the memory of one training step's activations).
        extra_key: returns hashable settings that select the forward's kernels.
    """

    def __init__(self, forward: Callable, module: nn.Module, max_graphs: int = 1,
                 extra_key: Optional[Callable[[], tuple]] = None):
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be at least 1, got {max_graphs}.')
        self.forward = forward
        self.module = module
        self.max_graphs = max_graphs
        self.extra_key = extra_key
        self._graphed: Dict[tuple, Callable] = {}
        self._awaiting_backward = None

    @staticmethod
    def applies(x: torch.Tensor) -> bool:
        return (x.is_cuda and torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and not torch.cuda.is_current_stream_capturing())

    @property
    def num_graphs(self) -> int:
        return len(self._graphed)

    def reset(self):
        self._graphed.clear()
        self._awaiting_backward = None

    def _signature(self, x):
        device = x.device.type
        autocast = (torch.get_autocast_dtype(device)
                    if torch.is_autocast_enabled(device) else None)
        extra = self.extra_key() if self.extra_key is not None else ()
        trainable = tuple(p.requires_grad for p in self.module.parameters())
        return (tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad, autocast,
                trainable, extra)

    def __call__(self, x: torch.Tensor):
        # A replay overwrites the activations the previous replay's backward needs: while
        # the autograd graph of that replay is alive and its backward has not run (two
        # forwards, then one backward), this call runs eagerly.
        if self._awaiting_backward is not None and self._awaiting_backward() is not None:
            return self.forward(x)
        key = self._signature(x)
        graphed = self._graphed.get(key)
        if graphed is None:
            if len(self._graphed) >= self.max_graphs:
                return self.forward(x)
            graphed = self._graphed[key] = self._capture(x)
        outs = graphed(x)
        first = outs[0] if isinstance(outs, (tuple, list)) else outs
        if first.grad_fn is not None:
            first.grad_fn.register_hook(self._after_backward)
            self._awaiting_backward = weakref.ref(first.grad_fn)
        return outs

    def _after_backward(self, grad_inputs, grad_outputs):
        """The backward graph leaves the gradients in its memory pool, which the next
        replay (forward or backward) reuses. Autograd would hand those buffers on as the
        parameters' ``.grad`` without a copy, and a later replay would overwrite them
        (e.g. under gradient accumulation): the parameters get copies instead, made by a
        few multi-tensor kernels."""
        self._awaiting_backward = None
        index = [i for i, g in enumerate(grad_inputs) if g is not None]
        copies = torch._foreach_mul([grad_inputs[i] for i in index], 1.0)
        grads = list(grad_inputs)
        for i, g in zip(index, copies):
            grads[i] = g
        return tuple(grads)

    def _capture(self, x):
        wrapper = _Forward(self.module, self.forward)
        sample = x.detach().clone().requires_grad_(x.requires_grad)
        # the warm-up passes would update BatchNorm running statistics three more times
        buffers = list(self.module.buffers())
        saved = [b.clone() for b in buffers]
        with _without_autocast_cache(x.device.type):
            graphed = torch.cuda.make_graphed_callables(wrapper, (sample, ),
                                                        allow_unused_input=True)
        with torch.no_grad():
            for b, value in zip(buffers, saved):
                b.copy_(value)
        return graphed
