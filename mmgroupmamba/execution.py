"""How a GroupMamba model executes, in one object: :class:`ExecutionPolicy`.

None of these settings changes the function a model computes (all paths reproduce the
released checkpoints); they choose kernels, memory-for-compute trades and the runtime.
A backbone owns one policy, shared by every layer under it (they read
``self.execution``), and a config sets it as one dict::

    backbone=dict(type='GroupMamba', arch='tiny',
                  execution=dict(cuda_graph=True, scan_backend='triton'))

Tests and benchmarks change it for a block of code with :meth:`ExecutionPolicy.override`.
The CUDA-graph runtime keys its graphs on :meth:`ExecutionPolicy.signature`, so a graph
captured under one policy is never replayed under another.
"""
import contextlib
import dataclasses
from typing import Union

import torch.nn as nn

MIXERS = ('auto', 'grouped', 'reference')
LINEAR_MODES = ('auto', 'blockdiag', 'bmm')
CUDA_GRAPH_MODES = (False, True, 'infer', 'train')
# ``compile=True``: Inductor with its CUDA graphs. Compiled alone, a detection-size
# training step stays bound by the host time of Inductor's ~3,000 launches (H100,
# 2 x 800x1344: 121 ms against eager's 127); replayed, 33 ms.
COMPILE_DEFAULTS = {'mode': 'reduce-overhead'}


@dataclasses.dataclass
class ExecutionPolicy:
    """The execution settings of one model.

    Attributes:
        mixer: ``'grouped'`` runs the four groups of a GroupMamba layer at once (fused
            kernels on CUDA); ``'reference'`` runs them as released, one VSSS per group;
            ``'auto'``: grouped, except under ``torch.jit`` tracing (ONNX export).
        scan_backend: selective-scan backend (``auto``, ``triton``, ``mamba_ssm``,
            ``pytorch``, ``reference``), see :func:`mmgroupmamba.ops.resolve_backend`.
        fused_kernels: the Triton LayerNorm, depthwise-conv and 3xTF32 linear kernels
            on CUDA; off, their PyTorch compositions run everywhere (to measure what the
            kernels buy, to export, or to time the released execution).
        linear_mode: how the grouped layer multiplies its four groups' projections:
            one block-diagonal GEMM, batched matmuls, or ``auto`` by shape.
        norm_amp_output: under autocast, norms that only feed matmuls write the autocast
            dtype (the released code writes float32 everywhere: ``False``).
        with_cp: activation checkpointing of every block.
        ffn_cp: recompute each FFN's depthwise conv + GELU in the backward instead of
            keeping its output (the widest activation of a block).
        mixer_cp: checkpoint each GroupMamba layer.
        cuda_graph: replay CUDA graphs of the backbone's forward (``'infer'``), of its
            training forward and backward (``'train'``), or both (``True``); see
            :mod:`mmgroupmamba.runtime`.
        max_cuda_graphs: input signatures (shape, dtype, autocast) that get a graph,
            for inference and for training each; others run eagerly. The graphs of one
            kind share their memory, so a new signature costs its capture (a few warm-up
            steps, once), not another step's activations: raise it where batches come in
            many sizes (a detector's keep-ratio resize and padding to 32: a few dozen).
        compile: ``torch.compile`` the backbone's forward, dynamic in H and W: ``True``
            is Inductor's ``reduce-overhead`` (one compilation for every size, a CUDA
            graph recorded per size), or a dict of ``torch.compile`` arguments
            (``dict(mode='default')``: Inductor's kernels without CUDA graphs). Not
            together with ``cuda_graph``.
    """
    mixer: str = 'auto'
    scan_backend: str = 'auto'
    fused_kernels: bool = True
    linear_mode: str = 'auto'
    norm_amp_output: bool = True
    with_cp: bool = False
    ffn_cp: bool = False
    mixer_cp: bool = False
    cuda_graph: Union[bool, str] = False
    max_cuda_graphs: int = 4
    compile: Union[bool, dict] = False

    def __setattr__(self, name, value):
        _check(name, value)
        super().__setattr__(name, value)

    def __post_init__(self):
        self.check()

    def check(self):
        """Settings that exclude each other (checked at construction and by the runtime
        before a call, not on every assignment, so that overrides may pass through)."""
        if self.cuda_graph and self.compile is not False:
            raise ValueError('compile and cuda_graph are two ways of running the forward; '
                             'set one of them.')

    @classmethod
    def from_config(cls, cfg: Union[None, dict, 'ExecutionPolicy']) -> 'ExecutionPolicy':
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'execution must be a dict or an ExecutionPolicy, got '
                            f'{type(cfg).__name__}.')
        unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise KeyError(f'Unknown execution settings {unknown}; known: '
                           f'{[f.name for f in dataclasses.fields(cls)]}.')
        return cls(**cfg)

    @property
    def compile_options(self):
        """The ``torch.compile`` arguments, or None when the forward is not compiled."""
        if self.compile is False:
            return None
        return dict(COMPILE_DEFAULTS) if self.compile is True else dict(self.compile)

    def update(self, **changes) -> 'ExecutionPolicy':
        for name, value in changes.items():
            setattr(self, name, value)
        return self

    @contextlib.contextmanager
    def override(self, **changes):
        """``with model.execution.override(scan_backend='pytorch'): ...``"""
        saved = {name: getattr(self, name) for name in changes}
        try:
            yield self.update(**changes)
        finally:
            self.update(**saved)

    def signature(self) -> tuple:
        """Everything that selects the kernels of a forward, hashable."""
        return tuple((f.name, _freeze(getattr(self, f.name)))
                     for f in dataclasses.fields(self))


def _freeze(value):
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


def _check(name, value):
    choices = dict(mixer=MIXERS, linear_mode=LINEAR_MODES, cuda_graph=CUDA_GRAPH_MODES)
    if name in choices and value not in choices[name]:
        raise ValueError(f'Unknown execution {name} {value!r}; choose one of '
                         f'{choices[name]}.')
    if name == 'scan_backend':
        from mmgroupmamba.ops import SCAN_BACKENDS
        if value not in SCAN_BACKENDS:
            raise ValueError(f'Unknown selective-scan backend {value!r}; choose one of '
                             f'{SCAN_BACKENDS}.')
    if name == 'compile' and not isinstance(value, (bool, dict)):
        raise TypeError(f'compile must be True, False or a dict of torch.compile '
                        f'arguments, got {value!r}.')
    if name == 'max_cuda_graphs' and not (isinstance(value, int) and value >= 1):
        raise ValueError(f'max_cuda_graphs must be at least 1, got {value!r}.')


def eager_backbone_config(backbone_cfg: dict) -> dict:
    """A copy of a backbone config dict that runs eagerly (no CUDA graphs, not
    compiled), whichever way the config asked for them: for tools that trace the
    model or look at single calls (ONNX export, receptive fields)."""
    cfg = dict(backbone_cfg)
    cfg.pop('cuda_graph', None)
    cfg.pop('compile', None)
    cfg['execution'] = dict(cfg.get('execution') or {}, cuda_graph=False, compile=False)
    return cfg


def share_execution(root: nn.Module, policy: ExecutionPolicy) -> ExecutionPolicy:
    """Make ``policy`` the one policy of ``root`` and of every module under it that
    reads one (holds an ``execution`` attribute)."""
    for m in root.modules():
        if isinstance(vars(m).get('execution'), ExecutionPolicy):
            m.execution = policy
    return policy


def configure_execution(model: nn.Module, **changes) -> None:
    """Change ``changes`` in every execution policy found in ``model`` (a classifier
    has one for its backbone and one for its head)."""
    seen = {}
    for m in model.modules():
        policy = vars(m).get('execution')
        if isinstance(policy, ExecutionPolicy):
            seen[id(policy)] = policy
    for policy in seen.values():
        policy.update(**changes)


@contextlib.contextmanager
def execution_override(model: nn.Module, **changes):
    """:func:`configure_execution` for the duration of a ``with`` block."""
    policies = {id(p): p for m in model.modules()
                for p in [vars(m).get('execution')] if isinstance(p, ExecutionPolicy)}
    with contextlib.ExitStack() as stack:
        for policy in policies.values():
            stack.enter_context(policy.override(**changes))
        yield
