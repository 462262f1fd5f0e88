"""A module's forward through ``torch.compile``, one compilation for every image size.

Detection trains on images of varying size (keep-ratio resize, padding to 32). Compiled,
the backbone's forward and backward run as Inductor's fused kernels around our Triton
operators (registered as ``torch.library`` custom operators, see
:func:`mmgroupmamba.ops.dispatch.call_fused`), traced as one graph whose image sides are
symbolic. With Inductor's CUDA graphs (``reduce-overhead``, what ``compile=True`` asks
for) each new size is recorded once from that one compilation and replayed from then on,
so a step no longer pays the host time of its ~3,000 launches.
"""
from typing import Callable, Iterable, Optional

import torch
from torch._utils import _flatten_dense_tensors as _flatten
from torch._utils import _unflatten_dense_tensors as _unflatten

# Sides of at least this many pixels share one compilation (stride 32 at the last stage:
# maps of at least 2 x 2); smaller ones are compiled for their size.
MIN_DYNAMIC_SIZE = 64
MAX_DYNAMIC_SIZE = 1 << 15
# The backbone's total stride: sides that are multiples of it (detection pads images to
# 32, segmentation crops 512) are traced as ``ALIGN * k``.
ALIGN = 32


class CompiledForward:
    """``forward(x)`` compiled by ``torch.compile(forward, **options)``.

    The input's height and width (dims 2 and 3 of an NCHW batch, when at least
    :data:`MIN_DYNAMIC_SIZE`) are dynamic, so the first compilation already covers
    other sizes instead of compiling once more for the second size seen (``options``
    with ``dynamic=False`` keeps every size static; ``dynamic=True`` makes the batch
    dynamic too).

    Sides that are multiples of :data:`ALIGN` reach the compiled function as a
    ``(B, C, H / 32, 32, W / 32, 32)`` view, flattened back inside it: the symbolic
    side is then ``32 * k``, every stage's size an exact multiple (``8 k`` at stride 4)
    rather than a chain of floor divisions (``(H - 1) // 4 + 1``), which Inductor's
    tiling of torch 2.11 fails to split ("CantSplit ... not divisible").

    Args:
        forward: the eager forward, one tensor in.
        options: keyword arguments of ``torch.compile`` (``mode``, ``backend``,
            ``fullgraph``, ``dynamic``, ``options``). For Inductor a ``mode`` joins the
            ``options`` as the settings it stands for (``torch.compile`` refuses both).
            Modes that record CUDA graphs (``reduce-overhead``, ``max-autotune``)
            record one per image size (Inductor's CUDA graph trees, all in one memory
            pool); the outputs of a call are overwritten by the next replay, so what
            is kept across calls must be cloned (Inductor says so when it is read).
        parameters: the module's parameters (a callable, e.g. ``module.parameters``).
            Where CUDA graphs are recorded, the gradients a training step leaves in
            their ``.grad`` are moved out of the graphs' memory at the end of its
            backward (see :func:`_move_gradients_out_after_backward`).
    """

    def __init__(self, forward: Callable, options: dict,
                 parameters: Optional[Callable[[], Iterable[torch.Tensor]]] = None):
        self.options = dict(options)
        self.parameters = parameters
        kwargs = dict(self.options)
        if kwargs.get('backend', 'inductor') == 'inductor':
            # ``torch.compile`` takes a ``mode`` or ``options``, not both: the mode's
            # settings (e.g. reduce-overhead's CUDA graphs) join the options instead
            mode = kwargs.pop('mode', None)
            kwargs['options'] = {**_mode_options(mode),
                                 **_inductor_workarounds(kwargs.get('dynamic') is not False),
                                 **kwargs.get('options', {})}
        self.records_graphs = bool(kwargs.get('options', {}).get('triton.cudagraphs'))
        self._compiled = torch.compile(forward, **kwargs)
        self._compiled_aligned = torch.compile(
            lambda x: forward(x.flatten(4, 5).flatten(2, 3)), **kwargs)
        # Dynamo's graph run as it is (``backend='eager'``, for debugging) inside a DDP
        # module: DDPOptimizer would split it per gradient bucket and run the pieces on
        # fake tensors outside AOTAutograd, which on torch 2.11 turns the dynamic sides
        # into constants ("ConstraintViolationError: ... specialized it to be a
        # constant"). Unsplit, DDP's hooks still fire per parameter as in eager mode.
        self._dynamo_config = ({'optimize_ddp': False} if kwargs.get('backend') == 'eager'
                               else None)

    def __call__(self, x: torch.Tensor):
        fresh = None
        if (self.records_graphs and self.parameters is not None and x.is_cuda
                and torch.is_grad_enabled()):
            # parameters whose gradient this step's backward will create (not add to);
            # Inductor records graphs for CUDA tensors only
            fresh = [p for p in self.parameters() if p.requires_grad and p.grad is None]
        if self._dynamo_config is None:
            out = self._call(x)
        else:
            with torch._dynamo.config.patch(**self._dynamo_config):
                out = self._call(x)
        return _move_gradients_out_after_backward(out, fresh) if fresh else out

    def _call(self, x: torch.Tensor):
        if self.options.get('dynamic') is False:
            return self._compiled(x)
        H, W = x.shape[2:]
        if H % ALIGN == 0 and W % ALIGN == 0 and min(H, W) >= MIN_DYNAMIC_SIZE:
            blocks = x.unflatten(3, (W // ALIGN, ALIGN)).unflatten(2, (H // ALIGN, ALIGN))
            for dim in (2, 4):
                torch._dynamo.mark_dynamic(blocks, dim, min=MIN_DYNAMIC_SIZE // ALIGN,
                                           max=MAX_DYNAMIC_SIZE // ALIGN)
            return self._compiled_aligned(blocks)
        for dim in (2, 3):
            if x.shape[dim] >= MIN_DYNAMIC_SIZE:
                # the lower bound keeps every stage's map wider than one pixel, so the
                # compiler can order the strides of the channels-last views
                torch._dynamo.mark_dynamic(x, dim, min=MIN_DYNAMIC_SIZE, max=MAX_DYNAMIC_SIZE)
        return self._compiled(x)


def _move_gradients_out_after_backward(out, fresh):
    """Have the gradients of the ``fresh`` parameters moved out of the CUDA graphs'
    memory when the backward through ``out`` (the compiled forward's outputs) ends.

    A replayed backward graph returns the parameters' gradients in the graphs' memory
    pool, and autograd keeps a gradient as ``.grad`` without copying it when ``.grad``
    was None: the next replay would write into that ``.grad``, so gradient accumulation
    (or ``zero_grad(set_to_none=False)``) would add to a buffer already overwritten
    (torch raises "accessing tensor output of CUDAGraphs that has been overwritten";
    older releases summed wrongly). A hook on the outputs (it runs before the graphs'
    backward) queues an autograd engine callback that runs when the backward ends and
    calls :func:`move_gradients_out`; gradients added to an existing ``.grad`` already
    land in that ``.grad``'s memory.
    """
    tensors = out if isinstance(out, (tuple, list)) else (out, )
    queued = []

    def hook(grad):
        if not queued:
            queued.append(True)
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: move_gradients_out(fresh))

    for t in tensors:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            t.register_hook(hook)
    return out


def move_gradients_out(params: Iterable[torch.Tensor]):
    """Give the parameters' ``.grad`` new memory: one buffer per (device, dtype), one
    concatenation each, the gradients as views of it."""
    groups = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    for members in groups.values():
        grads = [p.grad for p in members]
        for p, view in zip(members, _unflatten(_flatten(grads), grads)):
            p.grad = view


def _mode_options(mode) -> dict:
    """Inductor's settings for a ``torch.compile`` ``mode`` (none for the default)."""
    if mode in (None, 'default'):
        return {}
    from torch._inductor import list_mode_options
    if mode not in list_mode_options():
        raise ValueError(f'Unknown torch.compile mode {mode!r}; choose one of '
                         f'{sorted(list_mode_options())}.')
    return dict(list_mode_options(mode))


def _inductor_workarounds(dynamic_sides: bool) -> dict:
    """Inductor settings that symbolic image sizes need, where the installed torch has
    them:

    * ``shape_padding`` off (dynamic sides only): its test of whether a matmul is worth
      padding compares the symbolic sizes with thresholds and keeps the outcome as
      guards bounding the sides by the first size's (``8*s0*s1 < 696``), which the
      sides' declared range refuses: with CUDA graphs on, the first call failed that
      way (H100, torch 2.11, 2 x 800x1344 training, ``ConstraintViolationError``) and
      compiled without it;
    * ``strict_output_strides``: activations saved for the backward include
      channels-last views whose strides are symbolic (``k * W``); torch 2.14's Inductor
      fails to order them ("cannot determine truth value of Relational"), exact
      strides need no order;
    * ``triton.coalesce_tiling_analysis`` off: on torch 2.11 it failed an assertion on
      a symbolic-size pointwise node of the backward (``tiling_utils.get_pw_red_splits``;
      Inductor's own notes say the analysis does not apply to dynamic shapes yet).
    """
    import torch._inductor.config as config
    options = {'shape_padding': False} if dynamic_sides else {}
    if hasattr(config, 'strict_output_strides'):
        options['strict_output_strides'] = True
    if hasattr(config.triton, 'coalesce_tiling_analysis'):
        options['triton.coalesce_tiling_analysis'] = False
    return options
