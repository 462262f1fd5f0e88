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
import functools
from typing import Callable, Dict, List

import torch

from .selective_scan_chunked import selective_scan_chunked
from .selective_scan_ref import selective_scan_ref

SCAN_BACKENDS = ('auto', 'reference', 'pytorch', 'mamba_ssm', 'triton')


@functools.lru_cache(None)
def _mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built for another torch/CUDA
        return None
    return selective_scan_fn


@functools.lru_cache(None)
def _triton_fn():
    try:
        from .selective_scan_triton import selective_scan_triton
    except Exception:  # triton missing or unusable
        return None
    return selective_scan_triton


@functools.lru_cache(None)
def _triton_grouped_fn():
    try:
        from .selective_scan_triton import grouped_selective_scan_triton
    except Exception:  # triton missing or unusable
        return None
    return grouped_selective_scan_triton


def _mamba_ssm(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    fn = _mamba_ssm_fn()
    # mamba-ssm's kernel reads B and C as (batch, groups, N, L) and wants contiguous fp32
    # parameters; the output comes back in u's dtype.
    return fn(u.contiguous(), delta.contiguous(), A.float().contiguous(),
              B.unsqueeze(1).contiguous(), C.unsqueeze(1).contiguous(),
              None if D is None else D.float(), None,
              None if delta_bias is None else delta_bias.float(), delta_softplus)


def _triton(*args, **kwargs):
    return _triton_fn()(*args, **kwargs)


_IMPLS: Dict[str, Callable] = {
    'reference': selective_scan_ref,
    'pytorch': selective_scan_chunked,
    'mamba_ssm': _mamba_ssm,
    'triton': _triton,
}


def available_backends(device='cpu') -> List[str]:
    """Backends that can run on ``device``, fastest first (``reference`` last)."""
    device = torch.device(device)
    names = []
    if device.type == 'cuda':
        if _triton_fn() is not None:
            names.append('triton')
        if _mamba_ssm_fn() is not None:
            names.append('mamba_ssm')
    return names + ['pytorch', 'reference']


def resolve_backend(backend: str, device) -> str:
    """Turn ``auto`` into a concrete backend and check that a named one can run."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f'Unknown selective-scan backend {backend!r}; '
                         f'choose one of {SCAN_BACKENDS}.')
    usable = available_backends(device)
    if backend == 'auto':
        return usable[0]
    if backend not in usable:
        raise RuntimeError(
            f'Selective-scan backend {backend!r} cannot run on {device}: '
            + ('mamba-ssm is not importable (pip install mamba-ssm, built for this torch).'
               if backend == 'mamba_ssm' else 'it needs a CUDA device and Triton.'))
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
    name = resolve_backend(backend, u.device)
    if name == 'triton' and backend == 'auto' and A.shape[-1] != 1:
        # the Triton kernel is specialised for state size 1
        name = available_backends(u.device)[1]
    return _IMPLS[name](u, delta, A, B, C, D=D, delta_bias=delta_bias,
                        delta_softplus=delta_softplus)
