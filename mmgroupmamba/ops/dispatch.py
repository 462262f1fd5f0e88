"""One switch for the fused CUDA kernels of the layers (LayerNorm, depthwise conv + act).

On by default. Off, :func:`~mmgroupmamba.ops.layer_norm`,
:func:`~mmgroupmamba.ops.modulated_layer_norm` and
:func:`~mmgroupmamba.ops.depthwise_conv3x3_act` run their PyTorch compositions
everywhere: to measure what the kernels buy, or to time the released execution. (The
selective scan has its own choice of backend.)
"""
import contextlib

_state = {'enabled': True}


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
