"""FLOPs and parameters of GroupMamba models, the selective scan included.

FLOPs follow fvcore's convention (one multiply-add = 1, norms counted, elementwise ops
not), as mmengine's ``FlopAnalyzer`` implements it. A jit trace does not see inside the
selective scan (and would count an einsum of some backends partially), so while
counting, every scan call is routed through an opaque autograd function and counted as
``9 B L D N + B D L`` (VMamba's convention: discretisation, state update and output per
state element, plus the D skip).
"""
from contextlib import contextmanager

import torch
import torch.nn as nn

from mmgroupmamba.models.layers import vsss as vsss_module


def scan_flops(batch: int, dim: int, length: int, d_state: int, with_d: bool = True):
    return 9 * batch * length * dim * d_state + (batch * dim * length if with_d else 0)


class _OpaqueSelectiveScan(torch.autograd.Function):
    """Wraps a scan so that the jit trace shows one ``prim::PythonOp`` for it."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias):
        from mmgroupmamba.ops import selective_scan_chunked
        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, True)


def _opaque_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                 backend='auto'):
    return _OpaqueSelectiveScan.apply(u, delta, A, B, C, D, delta_bias)


def _scan_handle(inputs, outputs):
    from mmengine.analysis.jit_handles import get_shape
    batch, dim, length = get_shape(inputs[0])
    d_state = get_shape(inputs[2])[1]
    return scan_flops(batch, dim, length, d_state)


@contextmanager
def _opaque_scans():
    original = vsss_module.selective_scan
    vsss_module.selective_scan = _opaque_scan
    try:
        yield
    finally:
        vsss_module.selective_scan = original


def count_flops(model: nn.Module, inputs: torch.Tensor, return_analyzer=False):
    """fvcore-convention FLOPs of ``model(inputs)``, selective scans included."""
    from mmengine.analysis import FlopAnalyzer
    model.eval()
    with _opaque_scans(), torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.set_op_handle('prim::PythonOp._OpaqueSelectiveScan', _scan_handle)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        total = analyzer.total()
    return (total, analyzer) if return_analyzer else total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
