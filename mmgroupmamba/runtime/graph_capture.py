"""What the inference and training graph runners share: when a capture is possible, the
signature an input is graphed under, the capture itself, and autocast without its weight
cache."""
import contextlib
import gc

import torch

from mmgroupmamba.utils.amp import autocast_dtype


def capture_possible(x: torch.Tensor) -> bool:
    """``x`` is on CUDA and nothing prevents a capture: not under ``torch.compile`` or
    ``torch.jit`` tracing, and not inside another capture."""
    return (x.is_cuda and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch.cuda.is_current_stream_capturing())


def input_signature(x: torch.Tensor, extra: tuple = ()) -> tuple:
    """What a graph of ``forward(x)`` is specific to: the input's shape, strides, dtype
    and device, the autocast setting and ``extra`` (settings that select kernels)."""
    return (tuple(x.shape), x.stride(), x.dtype, x.device, autocast_dtype(x.device.type),
            extra)


def without_autocast_cache(device_type: str):
    """Autocast as it is, but without its cache of cast weights: a graph must not read
    a cast that autocast made outside it and frees when the caller's autocast block
    ends. (The layers' own inference caches are kept alive by the graph instead.)"""
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)


def capture_resources(device: torch.device) -> tuple:
    """``(pool, stream)``: the memory pool that all graphs of one runner on ``device``
    share, and the one stream they are captured on (the allocator reuses a freed block
    of a pool only for allocations on the stream it was freed on)."""
    return torch.cuda.graph_pool_handle(), torch.cuda.Stream(device)


@contextlib.contextmanager
def capture(graph: 'torch.cuda.CUDAGraph', pool, stream: 'torch.cuda.Stream'):
    """``torch.cuda.graph(graph, pool=pool, stream=stream)`` with Python's cyclic garbage
    collector run before and held off during the capture: a CUDA graph in an unreachable
    cycle (the runtime of a model no longer used) destroyed mid-capture invalidates the
    capture, and PyTorch (2.9+) no longer collects before capturing."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            yield
    finally:
        if enabled:
            gc.enable()
