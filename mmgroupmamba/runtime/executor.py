"""Runs a module's forward as its execution policy says: eagerly, as replayed CUDA
graphs, or compiled.

The model computes; this decides how the computation is launched. A module that
delegates to :func:`execute` keeps one forward (its eager computation) and an
``execution`` attribute (:class:`~mmgroupmamba.execution.ExecutionPolicy`); the graphs
and the compiled function live in a :class:`Runners` object in the module's
``__dict__``, which copies and pickles of the module (EMA models, ``torch.save``) get
empty: graphs and compiled code belong to the original's memory.
"""
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn

from mmgroupmamba.utils.amp import InferenceCache
from .compiled_forward import CompiledForward
from .graphed_inference import GraphedInference
from .graphed_training import GraphedTraining


class Runners:
    """The runtime state of one module: its inference graphs, its training graphs and
    its compiled forward, each built on first use."""

    def __init__(self):
        self.inference: Optional[GraphedInference] = None
        self.training: Optional[GraphedTraining] = None
        self.compiled: Optional[CompiledForward] = None
        self.compiled_options = None
        self.training_blocker: Optional[str] = None
        self.module_modes = None

    # copies and pickles start without graphs or compiled code
    def __deepcopy__(self, memo):
        return Runners()

    def __reduce__(self):
        return (Runners, ())


def runners(module: nn.Module) -> Runners:
    state = module.__dict__.get('_runners')
    if state is None:
        state = module.__dict__['_runners'] = Runners()
    return state


def execute(module: nn.Module, forward: Callable, x: torch.Tensor):
    """``forward(x)`` (``module``'s eager computation, one tensor in) run as
    ``module.execution`` says: compiled, as replayed CUDA graphs (inference in eval
    mode without autograd; forward and backward in training), or eagerly."""
    policy = module.execution
    if policy.compile is False and not policy.cuda_graph:
        return forward(x)
    policy.check()
    state = runners(module)
    if policy.compile is not False:
        options = policy.compile_options
        if state.compiled is None or state.compiled_options != options:
            state.compiled = CompiledForward(forward, options, module.parameters)
            state.compiled_options = options
        return state.compiled(x)

    modes = tuple(m.training for m in module.modules())
    if modes != state.module_modes:
        # free the graphs' memory: inference graphs before the weights change, training
        # graphs whenever a module's mode (BatchNorm, dropout) changed
        if module.training and state.inference is not None:
            state.inference.reset()
        if state.training is not None:
            state.training.reset()
        state.module_modes, state.training_blocker = modes, None

    if policy.cuda_graph in (True, 'infer') and not module.training \
            and GraphedInference.applies(x):
        if state.inference is None or state.inference.max_graphs != policy.max_cuda_graphs:
            state.inference = GraphedInference(
                forward, lambda: [*module.parameters(), *module.buffers()],
                max_graphs=policy.max_cuda_graphs, extra_key=lambda: signature(module),
                caches=lambda: _inference_cache_values(module))
        return state.inference(x)
    if policy.cuda_graph in (True, 'train') and module.training \
            and GraphedTraining.applies(x):
        if state.training_blocker is None:
            state.training_blocker = training_graph_blocker(module)
            if state.training_blocker:
                warnings.warn(f'{type(module).__name__}(cuda_graph='
                              f'{policy.cuda_graph!r}): the training step runs eagerly: '
                              f'{state.training_blocker}.')
        if not state.training_blocker:
            if state.training is None or state.training.max_graphs != policy.max_cuda_graphs:
                state.training = GraphedTraining(forward, module,
                                                 max_graphs=policy.max_cuda_graphs,
                                                 extra_key=lambda: signature(module))
            return state.training(x)
    return forward(x)


def signature(module: nn.Module) -> tuple:
    """What selects the kernels of a forward besides the input: the execution policy
    and the backend switches of PyTorch that the kernels read."""
    return (module.execution.signature(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32, torch.backends.cudnn.enabled)


def _inference_cache_values(module: nn.Module) -> list:
    return [v.value for m in module.modules() for v in vars(m).values()
            if isinstance(v, InferenceCache)]


def training_graph_blocker(module: nn.Module) -> str:
    """Why the training forward of ``module`` cannot be captured, or ``''`` (checked
    once per change of the modules' modes)."""
    reason = ''
    for name, m in module.named_modules():
        # e.g. after mmengine's ``sync_bn='torch'`` converted BatchNorms
        if m.training and (isinstance(m, nn.SyncBatchNorm)
                           or type(m).__name__ == 'SyncBatchNorm'):
            reason = (f'{name} is a SyncBatchNorm in training mode, whose all-reduce '
                      'cannot run inside a captured graph (norm_eval=True freezes it)')
            break
    # the captured backward starts from every output: each needs a trainable parameter
    # before it (a module tells which of its outputs have none, e.g. frozen stages)
    frozen = module.untrainable_outputs() if hasattr(module, 'untrainable_outputs') else []
    if not reason and frozen:
        reason = f'outputs {frozen} depend on frozen parameters only and carry no gradient'
    return reason
