"""A module's training forward and backward as CUDA graphs, per input signature.

An eager training step of GroupMamba-T launches ~3300 kernels and records as many
autograd nodes; its host time (200-400 ms at batch 128) is two to four times its GPU
time. Here the forward and the backward are captured once and replayed as two launches
inside one autograd Function; the loss, the rest of the model and the optimizer stay
eager and untouched.
"""
import weakref
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch.func import functional_call

from .graph_capture import capture_possible, input_signature, without_autocast_cache


class _Forward(nn.Module):
    """``forward(x)`` of ``module`` as a module, for :func:`torch.func.functional_call`
    (which runs it with the parameters replaced by other tensors)."""

    def __init__(self, module: nn.Module, forward: Callable):
        super().__init__()
        self.module = module
        self._fn = forward

    def forward(self, x):
        return self._fn(x)


class _StepGraphs:
    """The captured forward and backward of one input signature.

    Captured with every trainable parameter replaced by a view of itself: the backward
    graph then computes the gradients at those views and never touches the parameters'
    gradient accumulators, which belong to the step's real autograd graph (and may be
    held by DDP on another stream, which a capture cannot depend on).
    """

    warmup_calls = 3

    def __init__(self, forward: Callable, module: nn.Module, x: torch.Tensor):
        wrapper = _Forward(module, forward)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.static_input = x.detach().clone()

        def run():
            views = {f'module.{n}': p.view_as(p) for n, p in named}
            outs = functional_call(wrapper, views, (self.static_input, ))
            return list(views.values()), outs

        # the warm-up would update BatchNorm running statistics: they are restored after
        buffers = list(module.buffers())
        saved = [b.clone() for b in buffers]
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream), without_autocast_cache(x.device.type):
            for _ in range(self.warmup_calls):  # compiles, autotunes, cuDNN benchmarks
                views, outs = run()
                flat = self._flatten(outs)
                torch.autograd.grad(flat, views, [torch.empty_like(o) for o in flat],
                                    allow_unused=True)
            del views, outs, flat
            pool = torch.cuda.graph_pool_handle()
            self.fwd_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.fwd_graph, pool=pool, stream=stream):
                views, outs = run()
            self.tuple_output = isinstance(outs, (tuple, list))
            self.static_outputs = self._flatten(outs)
            self.static_grad_outputs = [torch.empty_like(o) for o in self.static_outputs]
            self.bwd_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.bwd_graph, pool=pool, stream=stream):
                self.static_grads = torch.autograd.grad(
                    self.static_outputs, views, self.static_grad_outputs,
                    allow_unused=True)
            # The captured autograd graph holds the parameters' gradient accumulators,
            # created on the capture stream: kept alive, every later backward would
            # synchronise the streams once per parameter (an event record, wait and
            # query each: ~6 ms for GroupMamba-T's 1192 parameters).
            self.static_outputs = [o.detach() for o in self.static_outputs]
            del views, outs
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.grad_index = [i for i, g in enumerate(self.static_grads) if g is not None]
        with torch.no_grad():
            for b, value in zip(buffers, saved):
                b.copy_(value)

    @staticmethod
    def _flatten(outs) -> List[torch.Tensor]:
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        if not all(isinstance(o, torch.Tensor) and o.requires_grad for o in outs):
            raise TypeError('A graphed training forward must return tensors that '
                            'require grad.')
        return outs


class _ReplayStep(torch.autograd.Function):
    """Forward: the forward graph; backward: the backward graph. The parameters are
    inputs, so their gradients reach ``.grad`` (and DDP's hooks) as in eager mode."""

    @staticmethod
    def forward(ctx, step: _StepGraphs, x, *params):
        ctx.step = step
        step.static_input.copy_(x)
        step.fwd_graph.replay()
        return tuple(o.detach() for o in step.static_outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        step = ctx.step
        for static, grad in zip(step.static_grad_outputs, grads):
            if grad is None:
                static.zero_()
            else:
                static.copy_(grad)
        step.bwd_graph.replay()
        # the gradients lie in the graphs' memory pool, which the next replay reuses:
        # the parameters get copies, never those buffers
        copies = _copies([step.static_grads[i] for i in step.grad_index])
        param_grads = [None] * len(step.static_grads)
        for i, g in zip(step.grad_index, copies):
            param_grads[i] = g
        return (None, None, *param_grads)


def _copies(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """Copies of ``tensors`` as views of one new buffer, filled by one concatenation
    where they share a dtype and device: one allocation and a few launches instead of
    one of each per parameter (autograd then keeps the views as the parameters'
    ``.grad`` without copying them again). ``torch._foreach_copy_`` into such views
    took its slow path on CUDA, one ``cudaMemcpyAsync`` per tensor: 1171 copies, 24-40
    ms of host time per GroupMamba-T step."""
    if not tensors:
        return []
    if len({(t.dtype, t.device) for t in tensors}) != 1:
        return torch._foreach_mul(tensors, 1.0)
    flat = torch._utils._flatten_dense_tensors(tensors)
    return list(torch._utils._unflatten_dense_tensors(flat, tensors))


class GraphedTraining:
    """Runs ``forward(x)`` of ``module`` in training as a replayed CUDA graph whose
    backward is another replayed graph, one pair per input signature (shape, strides,
    dtype, autocast setting, which parameters train, ``extra_key()``).

    Captured on the first call with a new signature after three warm-up forward and
    backward passes of that input (the buffers, e.g. BatchNorm running statistics, are
    restored afterwards). The graphs read and write the parameters, the buffers and the
    random state in place, so optimizer steps, gradient scaling, gradient accumulation,
    DDP's gradient hooks and stochastic depth work as in eager mode. Outputs and
    activations live in the graphs' memory: while a replay's autograd graph is alive and
    its backward has not run, further calls run eagerly (another replay would overwrite
    them). Inputs that require grad run eagerly.

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
        self._steps: Dict[tuple, _StepGraphs] = {}
        self._awaiting_backward = None
        # listed once (walking the module tree for 1192 parameters took ~3 ms per call)
        self._params = list(module.parameters())

    @staticmethod
    def applies(x: torch.Tensor) -> bool:
        return capture_possible(x) and torch.is_grad_enabled() and not x.requires_grad

    @property
    def num_graphs(self) -> int:
        return len(self._steps)

    def reset(self):
        self._steps.clear()
        self._awaiting_backward = None
        self._params = list(self.module.parameters())

    def _signature(self, x):
        extra = self.extra_key() if self.extra_key is not None else ()
        trainable = tuple(p.requires_grad for p in self._params)
        return input_signature(x, (trainable, extra))

    def __call__(self, x: torch.Tensor):
        # A replay overwrites the activations the previous replay's backward needs: while
        # the autograd graph of that replay is alive and its backward has not run (two
        # forwards, then one backward), this call runs eagerly.
        if self._awaiting_backward is not None and self._awaiting_backward() is not None:
            return self.forward(x)
        key = self._signature(x)
        step = self._steps.get(key)
        if step is None:
            if len(self._steps) >= self.max_graphs:
                return self.forward(x)
            step = self._steps[key] = _StepGraphs(self.forward, self.module, x)
        outs = _ReplayStep.apply(step, x, *step.params)
        outs[0].grad_fn.register_prehook(self._before_backward)
        self._awaiting_backward = weakref.ref(outs[0].grad_fn)
        return outs if step.tuple_output else outs[0]

    def _before_backward(self, grad_outputs):
        self._awaiting_backward = None
