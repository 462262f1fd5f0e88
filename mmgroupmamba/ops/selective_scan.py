"""One entry point for the selective scan, with interchangeable backends.

=============  ======================================================  ===========
backend        what                                                    where
=============  ======================================================  ===========
``reference``  exact sequential loop (:mod:`.selective_scan_ref`)      tests only
``pytorch``    two-level chunked scan (:mod:`.selective_scan_chunked`) CPU and GPU
``mamba_ssm``  mamba-ssm's CUDA ``selective_scan_fn``                  CUDA, if installed
``triton``     our Triton kernel (:mod:`.selective_scan_triton`)       CUDA with Triton
=============  ======================================================  ===========

``auto`` takes the fastest one that can run on the inputs' device (``triton`` only for
state size 1). All backends take the same arguments, compute in fp32 and return ``u``'s
dtype. The scans of a whole GroupMamba layer at once: :mod:`.grouped_scan`.
"""
from typing import Callable, Dict, List

import torch

from .dispatch import triton_interpreting
from .selective_scan_chunked import selective_scan_chunked
from .selective_scan_ref import selective_scan_ref

SCAN_BACKENDS = ('auto', 'reference', 'pytorch', 'mamba_ssm', 'triton')


def _import_mamba_ssm():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built for another torch/CUDA
        return None
    return selective_scan_fn


def _import_triton():
    try:
        from . import selective_scan_triton
    except Exception:  # triton missing or unusable
        return None
    return selective_scan_triton


_IMPORTED: Dict[str, object] = {}


def _module(backend: str):
    """The importable implementation of ``backend`` (``mamba_ssm``: its function,
    ``triton``: our kernel module), or None; imported once."""
    if backend not in _IMPORTED:
        _IMPORTED[backend] = (_import_mamba_ssm if backend == 'mamba_ssm'
                              else _import_triton)()
    return _IMPORTED[backend]


@torch.compiler.assume_constant_result
def _importable_cuda_backends() -> tuple:
    """The CUDA backends that import here, fastest first. A constant to
    ``torch.compile``: Dynamo cannot trace the import attempts (a failed import is a
    graph break), so it calls this once and keeps the answer."""
    return tuple(b for b in ('triton', 'mamba_ssm') if _module(b) is not None)


def _mamba_ssm(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    fn = _module('mamba_ssm')
    # mamba-ssm's kernel reads B and C as (batch, groups, N, L) and wants contiguous fp32
    # parameters; the output comes back in u's dtype.
    return fn(u.contiguous(), delta.contiguous(), A.float().contiguous(),
              B.unsqueeze(1).contiguous(), C.unsqueeze(1).contiguous(),
              None if D is None else D.float(), None,
              None if delta_bias is None else delta_bias.float(), delta_softplus)


def _triton(*args, **kwargs):
    return _module('triton').selective_scan_triton(*args, **kwargs)


_IMPLS: Dict[str, Callable] = {
    'reference': selective_scan_ref,
    'pytorch': selective_scan_chunked,
    'mamba_ssm': _mamba_ssm,
    'triton': _triton,
}


def available_backends(device='cpu') -> List[str]:
    """Backends that can run on ``device``, fastest first (``reference`` last)."""
    cuda = torch.device(device).type == 'cuda'
    return [*(_importable_cuda_backends() if cuda else ()), 'pytorch', 'reference']


def resolve_backend(backend: str, device, d_state: int = 1) -> str:
    """The one place that picks a scan backend: ``auto`` becomes the fastest one that
    runs on ``device`` for state size ``d_state`` (the Triton kernels are specialised
    for state size 1); a named one is checked and returned. ``triton`` on CPU tensors
    runs in Triton's interpreter when ``TRITON_INTERPRET=1`` (the CPU tests)."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f'Unknown selective-scan backend {backend!r}; '
                         f'choose one of {SCAN_BACKENDS}.')
    if backend == 'triton' and triton_interpreting() and _module('triton') is not None:
        usable = ['triton', 'pytorch', 'reference']
    else:
        usable = available_backends(device)
    if d_state != 1 and backend == 'auto':
        usable = [b for b in usable if b != 'triton']
    if backend == 'auto':
        return usable[0]
    if backend not in usable:
        raise RuntimeError(
            f'Selective-scan backend {backend!r} cannot run on {device}: '
            + ('mamba-ssm is not importable (pip install mamba-ssm, built for this torch).'
               if backend == 'mamba_ssm' else 'it needs a CUDA device and Triton.'))
    if backend == 'triton' and d_state != 1:
        raise ValueError(f'The Triton scan is specialised for d_state 1, got {d_state}; '
                         f'use the pytorch or mamba_ssm backend.')
    return backend


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                   backend: str = 'auto'):
    """Selective scan ``y = SSM(A, B, C, D; delta)(u)`` over the last axis.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N). B, C: (batch, N, L). D, delta_bias: (dim,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: one of :data:`SCAN_BACKENDS`.
    """
    name = resolve_backend(backend, u.device, d_state=A.shape[-1])
    return _IMPLS[name](u, delta, A, B, C, D=D, delta_bias=delta_bias,
                        delta_softplus=delta_softplus)
