"""The four groups' parameters of a GroupMamba layer, packed for the grouped execution.

The grouped execution wants the per-group parameters stacked, concatenated and arranged
into block-diagonal matrices. Built with ``torch.stack`` / ``cat`` / ``block_diag`` on
every training step that is ~45 small kernels forward and as many backward per layer
(and as many autograd nodes), most of the host time of a training step. Here all of it
is one gather: the parameters are flattened into one vector and every packed tensor
element names the element it copies (or zero). The backward is one gather too, since
every parameter element lands in exactly one place.

The index is found by running the arrangement itself (:func:`arrange`) on tensors of
element indices instead of parameters, so the packing cannot drift from it.
"""
from typing import Dict, Optional, Sequence

import torch
from torch._utils import _flatten_dense_tensors as _flatten
from torch._utils import _unflatten_dense_tensors as _unflatten

# per group: (name in the result of ``arrange``'s input, attribute path in a VSSS)
SOURCES = (('in_proj', ('in_proj', 'weight')), ('x_proj', ('x_proj', 'weight')),
           ('conv_w', ('conv', 'weight')), ('conv_b', ('conv', 'bias')),
           ('dt_w', ('dt_proj', 'weight')), ('dt_b', ('dt_proj', 'bias')),
           ('A_log', ('A_log', )), ('D', ('D', )), ('ln_w', ('out_norm', 'weight')),
           ('ln_b', ('out_norm', 'bias')), ('out_proj', ('out_proj', 'weight')))


def arrange(src: Dict[str, Sequence[torch.Tensor]], d: int, R: int, N: int,
            blockdiag: bool) -> Dict[str, torch.Tensor]:
    """The grouped layout from per-group tensors (``src[name][g]``, names of ``SOURCES``).

    Returns ``w_x``, ``w_z``, ``w_out`` (G, d, d) stacked (or, with ``blockdiag``,
    ``w_in_blockdiag`` (2Gd, Gd) whose outputs are ``[x of every group | z of every
    group]`` and ``w_out_blockdiag`` (Gd, Gd)); ``w_xdbl``: x_proj of every group as one
    block-diagonal linear with outputs ``[dt_r | B | C]``, each group-major; ``conv_w``,
    ``conv_b``, ``dt_bias``, ``D``, ``ln_weight``, ``ln_bias``, ``A_log`` concatenated;
    ``dt_weight`` (G, d, R) stacked.
    """
    w_in = torch.stack(src['in_proj'])                                  # (G, 2d, d)
    xp = torch.stack(src['x_proj'])                                     # (G, R+2N, d)
    out = dict(
        w_xdbl=torch.cat([torch.block_diag(*xp[:, s].unbind(0)) for s in
                          (slice(0, R), slice(R, R + N), slice(R + N, R + 2 * N))]),
        conv_w=torch.cat(src['conv_w']), conv_b=torch.cat(src['conv_b']),
        dt_weight=torch.stack(src['dt_w']), dt_bias=torch.cat(src['dt_b']),
        A_log=torch.cat(src['A_log']), D=torch.cat(src['D']),
        ln_weight=torch.cat(src['ln_w']), ln_bias=torch.cat(src['ln_b']))
    if blockdiag:
        out['w_in_blockdiag'] = torch.cat([torch.block_diag(*w_in[:, :d].unbind(0)),
                                           torch.block_diag(*w_in[:, d:].unbind(0))])
        out['w_out_blockdiag'] = torch.block_diag(*src['out_proj'])
    else:
        out.update(w_x=w_in[:, :d], w_z=w_in[:, d:], w_out=torch.stack(src['out_proj']))
    return out


class PackLayout:
    """Where every packed element comes from, for one set of parameter shapes and mode.

    ``gather``: index into ``[0, flat parameters...]`` of each packed element (0 = zero);
    ``scatter``: packed position of each parameter element; ``shapes``: packed tensors.
    """

    def __init__(self, shapes: Sequence[Sequence[torch.Size]], d, R, N, blockdiag, device):
        src, offset = {}, 1
        for (name, _), group_shapes in zip(SOURCES, shapes):
            src[name] = []
            for shape in group_shapes:
                n = shape.numel()
                src[name].append(torch.arange(offset, offset + n).view(shape))
                offset += n
        packed = arrange(src, d, R, N, blockdiag)
        self.names = list(packed)
        self.shapes = [packed[k].shape for k in self.names]
        self.sizes = [shape.numel() for shape in self.shapes]
        gather = torch.cat([packed[k].reshape(-1) for k in self.names])
        n_params = offset - 1
        used = gather[gather > 0]
        if used.numel() != n_params or torch.bincount(used, minlength=offset)[1:].ne(1).any():
            raise AssertionError('the grouped layout must use every parameter element once')
        scatter = torch.empty(n_params, dtype=torch.long)
        scatter[used - 1] = torch.nonzero(gather > 0).squeeze(1)
        self.gather = gather.to(device)
        self.scatter = scatter.to(device)


class _PackParams(torch.autograd.Function):
    """The gather and its backward, each with one call per list of tensors where there
    was one per tensor (``torch._utils``' flatten / unflatten loop in C++): in an eager
    step this node ran ~130 small tensor ops per layer on the host, ~0.8 ms."""

    @staticmethod
    def forward(ctx, layout, *params):
        flat = _flatten([params[0].new_zeros(1), *params])
        packed = flat[layout.gather]
        ctx.layout = layout
        ctx.params = params
        return tuple(t.view(shape) for t, shape in
                     zip(packed.split(layout.sizes), layout.shapes))

    @staticmethod
    def backward(ctx, *grads):
        # (autograd passes zeros for outputs that got no gradient: materialized grads)
        flat = _flatten(grads)[ctx.layout.scatter]
        # views of one buffer: autograd keeps them as the parameters' ``.grad`` as they are
        out = _unflatten(flat, ctx.params)
        return (None, *(g if g.dtype == p.dtype else g.to(p.dtype)
                        for g, p in zip(out, ctx.params)))


def source_params(ops) -> list:
    """The parameters :func:`pack_group_params` packs, in ``SOURCES`` order, group-minor."""
    params = []
    for _, path in SOURCES:
        for op in ops:
            module = op
            for attr in path[:-1]:
                module = getattr(module, attr)
            params.append(module._parameters[path[-1]])
    return params


def pack_group_params(params: list, ops, blockdiag: bool,
                      layouts: Optional[dict]) -> Dict[str, torch.Tensor]:
    """The VSSS operators ``ops``' parameters ``params`` (:func:`source_params`) in the
    grouped layout (see :func:`arrange`), differentiable w.r.t. them. ``layouts`` caches
    the :class:`PackLayout` (one gather, one autograd node) per shapes; without it (under
    ``torch.compile``) the arrangement is traced as it is and the compiler fuses it."""
    G = len(ops)
    d, R, N = ops[0].dim, ops[0].dt_rank, ops[0].d_state
    by_name = [params[i:i + G] for i in range(0, len(params), G)]
    if layouts is None:
        return arrange({name: ps for (name, _), ps in zip(SOURCES, by_name)}, d, R, N,
                       blockdiag)
    shapes = tuple(tuple(p.shape for p in ps) for ps in by_name)
    device = params[0].device
    key = (shapes, blockdiag, device)
    layout = layouts.get(key)
    if layout is None:
        layout = layouts[key] = PackLayout(shapes, d, R, N, blockdiag, device)
    return dict(zip(layout.names, _PackParams.apply(layout, *params)))
