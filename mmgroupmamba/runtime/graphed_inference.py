"""Replay CUDA graphs of a module's inference forward instead of launching every kernel.

An eager inference step of GroupMamba-T launches about 500 kernels, each from Python
through a few layers of module and dispatch code. On a slow host CPU that takes longer
than the GPU takes to run them (measured: 40 ms of host time for 21 ms of GPU work at
batch 128 under AMP), so eager inference is bound by the host. A CUDA graph of the
forward launches all of them with one call.
"""
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from .graph_capture import (capture, capture_possible, capture_resources, input_signature,
                            without_autocast_cache)


class _Graph(NamedTuple):
    graph: 'torch.cuda.CUDAGraph'
    static_input: torch.Tensor
    static_outputs: Tuple[torch.Tensor, ...]
    tuple_output: bool
    keep_alive: list


class GraphedInference:
    """Runs ``forward(x)`` as the replay of a CUDA graph, one graph per input signature.

    A graph is captured on the first call with a new signature -- shape, strides, dtype
    and device of ``x``, the autocast state, inference mode and whatever ``extra_key()``
    returns (settings that change which kernels run) -- after two eager warm-up calls
    (Triton compiles and autotunes, inference caches fill). Later calls copy ``x`` into
    the graph's input, replay it and return copies of its outputs, so results of earlier
    calls are never overwritten.

    A graph reads the parameters' memory when replayed, so in-place updates would be
    seen -- but not by the values derived from them and cached between calls (cast
    weights, packed parameters). Every call therefore checks the tensors' data pointers
    and versions and drops all graphs when any changed.

    Only for inference: ``applies`` is False while autograd records, under
    ``torch.compile``/tracing, during another capture and off CUDA.

    Args:
        forward: the eager forward, one tensor in, a tensor or a tuple of tensors out.
        tensors: returns the tensors the forward reads besides ``x`` (parameters and
            buffers), to detect changes.
        max_graphs: at most this many signatures get a graph; further signatures run
            eagerly. The graphs share one memory pool: every replay's outputs are
            copied out at once, so what a graph allocates is a temporary of its replay.
        extra_key: returns hashable settings that select the forward's kernels.
        caches: returns the values held by inference caches, kept alive as long as a
            graph that reads them exists (a cache may replace its value later).
    """

    warmup_calls = 2

    def __init__(self, forward: Callable, tensors: Callable[[], Sequence[torch.Tensor]],
                 max_graphs: int = 4, extra_key: Optional[Callable[[], tuple]] = None,
                 caches: Optional[Callable[[], list]] = None):
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be at least 1, got {max_graphs}.')
        self.forward = forward
        self.tensors = tensors
        self.max_graphs = max_graphs
        self.extra_key = extra_key
        self.caches = caches
        self._graphs: Dict[tuple, _Graph] = {}
        self._pools: Dict[torch.device, tuple] = {}
        self._state = None

    @staticmethod
    def applies(x: torch.Tensor) -> bool:
        return capture_possible(x) and not torch.is_grad_enabled()

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def reset(self):
        """Drop every graph (and the memory it holds)."""
        self._graphs.clear()
        self._pools.clear()
        self._state = None

    def _signature(self, x):
        extra = self.extra_key() if self.extra_key is not None else ()
        return input_signature(x, (torch.is_inference_mode_enabled(), extra))

    def __call__(self, x: torch.Tensor):
        state = tuple((t.data_ptr(), t._version) for t in self.tensors())
        if state != self._state:
            self.reset()
            self._state = state
        key = self._signature(x)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.forward(x)
            entry = self._graphs[key] = self._capture(x)
        entry.static_input.copy_(x)
        entry.graph.replay()
        outs = tuple(o.clone() for o in entry.static_outputs)
        return outs if entry.tuple_output else outs[0]

    def _capture(self, x):
        static_input = x.clone()
        # warm-up on a side stream, as capture requires: compiles, autotunes, fills caches
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), without_autocast_cache(x.device.type):
            for _ in range(self.warmup_calls):
                self.forward(static_input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if x.device not in self._pools:
            self._pools[x.device] = capture_resources(x.device)
        pool, stream = self._pools[x.device]
        graph = torch.cuda.CUDAGraph()
        with capture(graph, pool, stream), without_autocast_cache(x.device.type):
            out = self.forward(static_input)
        tuple_output = isinstance(out, (tuple, list))
        outs = tuple(out) if tuple_output else (out, )
        keep_alive = list(self.caches()) if self.caches is not None else []
        return _Graph(graph, static_input, outs, tuple_output, keep_alive)
