"""A module's forward through ``torch.compile``, one compilation for every image size.

Detection trains on images of varying size (keep-ratio resize, padding to 32), so the
backbone cannot replay CUDA graphs there; compiled, its forward and backward run as
Inductor's fused kernels around our Triton operators (registered as ``torch.library``
custom operators, see :func:`mmgroupmamba.ops.dispatch.call_fused`), traced as one graph.
"""
from typing import Callable

import torch

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
            ``options`` as the settings it stands for (``torch.compile`` refuses both);
            modes that record CUDA graphs (``reduce-overhead``, ``max-autotune``) need
            ``dynamic=False``.
    """

    def __init__(self, forward: Callable, options: dict):
        self.options = dict(options)
        kwargs = dict(self.options)
        if kwargs.get('backend', 'inductor') == 'inductor':
            # ``torch.compile`` takes a ``mode`` or ``options``, not both: the mode's
            # settings (e.g. reduce-overhead's CUDA graphs) join the options instead
            mode = kwargs.pop('mode', None)
            kwargs['options'] = {**_mode_options(mode), **_inductor_workarounds(),
                                 **kwargs.get('options', {})}
            # CUDA graphs (reduce-overhead, max-autotune) with dynamic sides failed on the
            # GPU (torch 2.11, 2 x 800x1344 training): at the first call, a guard bounding
            # each side by the first size (ConstraintViolationError); with the sides left
            # to Dynamo's automatic dynamism, at the second size (a stride assertion)
            if kwargs['options'].get('triton.cudagraphs') and kwargs.get('dynamic') is not False:
                raise ValueError(
                    f'compile={self.options!r} records CUDA graphs, which need static image '
                    f'sizes: add dynamic=False (one compilation and graph per size), or use '
                    f'execution=dict(cuda_graph=...) instead of compile.')
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
        if self._dynamo_config is None:
            return self._call(x)
        with torch._dynamo.config.patch(**self._dynamo_config):
            return self._call(x)

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


def _mode_options(mode) -> dict:
    """Inductor's settings for a ``torch.compile`` ``mode`` (none for the default)."""
    if mode in (None, 'default'):
        return {}
    from torch._inductor import list_mode_options
    if mode not in list_mode_options():
        raise ValueError(f'Unknown torch.compile mode {mode!r}; choose one of '
                         f'{sorted(list_mode_options())}.')
    return dict(list_mode_options(mode))


def _inductor_workarounds() -> dict:
    """Inductor settings that symbolic image sizes need, where the installed torch has
    them:

    * ``strict_output_strides``: activations saved for the backward include
      channels-last views whose strides are symbolic (``k * W``); torch 2.14's Inductor
      fails to order them ("cannot determine truth value of Relational"), exact
      strides need no order;
    * ``triton.coalesce_tiling_analysis`` off: on torch 2.11 it failed an assertion on
      a symbolic-size pointwise node of the backward (``tiling_utils.get_pw_red_splits``;
      Inductor's own notes say the analysis does not apply to dynamic shapes yet).
    """
    import torch._inductor.config as config
    options = {}
    if hasattr(config, 'strict_output_strides'):
        options['strict_output_strides'] = True
    if hasattr(config.triton, 'coalesce_tiling_analysis'):
        options['triton.coalesce_tiling_analysis'] = False
    return options
