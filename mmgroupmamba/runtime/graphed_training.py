"""A module's training forward and backward as CUDA graphs, per input signature.

An eager training step of GroupMamba-T launches ~3300 kernels and records as many
autograd nodes; its host time (200-400 ms at batch 128) is two to four times its GPU
time. Here the forward and the backward are captured once and replayed as two launches
inside one autograd Function; the loss, the rest of the model and the optimizer stay
eager and untouched.
"""
import weakref
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.func import functional_call

from .graph_capture import (capture, capture_possible, capture_resources, input_signature,
                            without_autocast_cache)


class _Forward(nn.Module):
    """``forward(x)`` of ``module`` as a module, for :func:`torch.func.functional_call`
    (which runs it with the parameters replaced by other tensors)."""

    def __init__(self, module: nn.Module, forward: Callable):
        super().__init__()
        self.module = module
        self._fn = forward

    def forward(self, x):
        return self._fn(x)


class _SharedMemory:
    """The fixed-address tensors of the step graphs of all signatures of one module:
    inputs, outputs, gradients of the outputs and of the parameters.

    Only one signature's step runs at a time (:class:`GraphedTraining` runs a forward
    eagerly while another replay's backward is pending), so a graph needs these only from
    its forward replay to the end of its backward replay, and one buffer per role serves
    every signature: as large as the largest request so far (a larger one allocates a
    larger buffer; graphs captured before keep the old one alive through their views).
    Without it each signature held its own copies, ~150 MB at 2 x 800x1344.
    """

    def __init__(self):
        self._flat: Dict[tuple, torch.Tensor] = {}

    def take(self, role: str, like: Sequence[torch.Tensor]) -> '_Slots':
        tensors: List[Optional[torch.Tensor]] = [None] * len(like)
        groups = {}
        for i, t in enumerate(like):
            groups.setdefault((t.dtype, t.device), []).append(i)
        flats = []
        for (dtype, device), index in groups.items():
            sizes = [like[i].numel() for i in index]
            key = (role, dtype, device)
            flat = self._flat.get(key)
            if flat is None or flat.numel() < sum(sizes):
                flat = self._flat[key] = torch.empty(sum(sizes), dtype=dtype, device=device)
            flat = flat[:sum(sizes)]
            for i, view in zip(index, flat.split(sizes)):
                tensors[i] = view.view(like[i].shape)
            flats.append((flat, index))
        return _Slots(tensors, flats)


class _Slots(NamedTuple):
    """Tensors that are consecutive views of one flat buffer per dtype."""
    tensors: List[torch.Tensor]
    flats: List[Tuple[torch.Tensor, List[int]]]

    def fill(self, sources: Sequence[torch.Tensor]):
        """Copy ``sources`` in, one concatenation per dtype (inside a capture: one
        kernel instead of a copy per tensor)."""
        for flat, index in self.flats:
            torch.cat([sources[i].reshape(-1) for i in index], out=flat)

    def copy(self) -> List[torch.Tensor]:
        """Copies of the tensors, as views of one new buffer per dtype: one allocation
        and one launch instead of one of each per tensor, and autograd keeps such views
        as the parameters' ``.grad`` without copying them again. (``torch._foreach_copy_``
        into views took its slow path on CUDA, one ``cudaMemcpyAsync`` per tensor: 1171
        copies, 24-40 ms of host time per GroupMamba-T step.)"""
        out: List[Optional[torch.Tensor]] = [None] * len(self.tensors)
        for flat, index in self.flats:
            sizes = [self.tensors[i].numel() for i in index]
            for i, view in zip(index, flat.clone().split(sizes)):
                out[i] = view.view(self.tensors[i].shape)
        return out


class _StepGraphs:
    """The captured forward and backward of one input signature.

    Captured with every trainable parameter replaced by a view of itself: the backward
    graph then computes the gradients at those views and never touches the parameters'
    gradient accumulators, which belong to the step's real autograd graph (and may be
    held by DDP on another stream, which a capture cannot depend on).

    The graphs of all signatures share one memory pool (``pool``) and, for their
    inputs and outputs, the buffers of ``shared``: what a step allocates is a
    temporary of that step, and the activations it keeps between its forward and its
    backward replay are needed only while no other signature's step runs. A new
    signature therefore costs its graphs, not another training step's memory.
    """

    warmup_calls = 3

    def __init__(self, forward: Callable, module: nn.Module, x: torch.Tensor,
                 pool, stream: 'torch.cuda.Stream', shared: _SharedMemory):
        wrapper = _Forward(module, forward)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.static_input = shared.take('input', [x]).tensors[0]
        self.static_input.copy_(x)

        def run():
            views = {f'module.{n}': p.view_as(p) for n, p in named}
            outs = functional_call(wrapper, views, (self.static_input, ))
            return list(views.values()), outs

        # the warm-up would update BatchNorm running statistics: they are restored after
        buffers = list(module.buffers())
        saved = [b.clone() for b in buffers]
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream), without_autocast_cache(x.device.type):
            for _ in range(self.warmup_calls):  # compiles, autotunes, cuDNN benchmarks
                views, outs = run()
                flat = self._flatten(outs)
                grads = torch.autograd.grad(flat, views, [torch.empty_like(o) for o in flat],
                                            allow_unused=True)
            self.tuple_output = isinstance(outs, (tuple, list))
            outputs = shared.take('outputs', flat)
            grad_outputs = shared.take('grad_outputs', flat)
            self.grad_index = [i for i, g in enumerate(grads) if g is not None]
            param_grads = shared.take('param_grads', [grads[i] for i in self.grad_index])
            del views, outs, flat, grads
            self.fwd_graph = torch.cuda.CUDAGraph()
            with capture(self.fwd_graph, pool, stream):
                views, outs = run()
                flat = self._flatten(outs)
                outputs.fill([o.detach() for o in flat])
            self.static_outputs = outputs.tensors
            self.static_grad_outputs = grad_outputs.tensors
            self.bwd_graph = torch.cuda.CUDAGraph()
            with capture(self.bwd_graph, pool, stream):
                grads = torch.autograd.grad(flat, views, self.static_grad_outputs,
                                            allow_unused=True)
                param_grads.fill([grads[i] for i in self.grad_index])
            self.param_grads = param_grads
            # Nothing of the captured autograd graph is kept: it holds the parameters'
            # gradient accumulators, created on the capture stream, and kept alive every
            # later backward would synchronise the streams once per parameter (an event
            # record, wait and query each: ~6 ms for GroupMamba-T's 1192 parameters).
            # The pool memory of the graph's own outputs and gradients is free for the
            # next capture: replays copy them into ``shared``.
            del views, outs, flat, grads
        torch.cuda.current_stream(x.device).wait_stream(stream)
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
        # the gradients lie in buffers that the next replay overwrites: the parameters
        # get copies
        copies = step.param_grads.copy()   # of the parameters in ``grad_index``
        param_grads = [None] * len(step.params)
        for i, g in zip(step.grad_index, copies):
            param_grads[i] = g
        return (None, None, *param_grads)


class GraphedTraining:
    """Runs ``forward(x)`` of ``module`` in training as a replayed CUDA graph whose
    backward is another replayed graph, one pair per input signature (shape, strides,
    dtype, autocast setting, which parameters train, ``extra_key()``).

    Captured on the first call with a new signature after three warm-up forward and
    backward passes of that input (the buffers, e.g. BatchNorm running statistics, are
    restored afterwards). The graphs read and write the parameters, the buffers and the
    random state in place, so optimizer steps, gradient scaling, gradient accumulation,
    DDP's gradient hooks and stochastic depth work as in eager mode. Outputs and
    activations live in the graphs' memory, which the graphs of all signatures share
    (see :class:`_StepGraphs`): while a replay's autograd graph is alive and its
    backward has not run, further calls run eagerly (another replay would overwrite
    them), and the next replay overwrites the outputs of the last. Inputs that require
    grad run eagerly.

    Sharing makes many signatures affordable: a detector's batches (keep-ratio resize,
    padding to 32) come in a few dozen sizes, each captured once when it first occurs.

    Args:
        forward: the eager forward of ``module``, one tensor in, tensors out.
        module: owns the parameters ``forward`` uses.
        max_graphs: signatures beyond this many run eagerly.
        extra_key: returns hashable settings that select the forward's kernels.
    """

    def __init__(self, forward: Callable, module: nn.Module, max_graphs: int = 4,
                 extra_key: Optional[Callable[[], tuple]] = None):
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be at least 1, got {max_graphs}.')
        self.forward = forward
        self.module = module
        self.max_graphs = max_graphs
        self.extra_key = extra_key
        self._steps: Dict[tuple, _StepGraphs] = {}
        self._capture: Dict[torch.device, tuple] = {}  # device -> (pool, stream, shared)
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
        self._capture.clear()
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
            if x.device not in self._capture:
                self._capture[x.device] = (*capture_resources(x.device), _SharedMemory())
            step = self._steps[key] = _StepGraphs(self.forward, self.module, x,
                                                  *self._capture[x.device])
        outs = _ReplayStep.apply(step, x, *step.params)
        outs[0].grad_fn.register_prehook(self._before_backward)
        self._awaiting_backward = weakref.ref(outs[0].grad_fn)
        return outs if step.tuple_output else outs[0]

    def _before_backward(self, grad_outputs):
        self._awaiting_backward = None
