"""Modulated Group Mamba layer: four VSSS operators on channel groups, modulated by CAM.

Two executions of the same parameters:

* ``reference``: as released, each group's :class:`VSSS` runs on its own (four of every
  projection, conv, norm and scan; flipped/transposed copies of the map per direction).
* ``grouped``: the four groups as a few batched kernels -- the groups' projections as one
  block-diagonal (or batched) matmul, the depthwise convs (+ bias + SiLU) as one
  depthwise conv over all channels (on CUDA one fused Triton kernel), and the scans, the
  per-group ``out_norm`` and the ``SiLU(z)`` gate as one
  :func:`mmgroupmamba.ops.grouped_selective_scan` (on CUDA one fused Triton kernel that
  reads each group in its direction straight from the channels-last map). Matmuls follow
  autocast (bf16/fp16), in float32 inference the large ones run as 3xTF32
  (:func:`mmgroupmamba.ops.linear`); the scan and the norms' statistics are computed in
  fp32.

Both use the per-group modules' parameters (state-dict keys are unchanged, so every
checkpoint loads into either) and compute the same function.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from mmgroupmamba.execution import LINEAR_MODES, ExecutionPolicy, share_execution
from mmgroupmamba.ops import (channel_affinity, depthwise_conv3x3_act, grouped_selective_scan,
                              linear, token_mean)
from mmgroupmamba.ops.directions import SCAN_DIRECTIONS
from mmgroupmamba.utils.amp import InferenceCache, autocast_dtype, training_casts
from .grouped_params import pack_group_params, source_params
from .linear import Linear
from .norm import LayerNorm
from .vsss import VSSS


class ChannelAffinity(nn.Module):
    """Channel Affinity Modulation weights: sigmoid(fc2(relu(fc1(mean over tokens)))).

    Input (B, H, W, C); output (B, C) in (0, 1), times ``scale`` if given. The mean over
    tokens is :func:`~mmgroupmamba.ops.token_mean` (a GEMV in half precision), the rest
    :func:`~mmgroupmamba.ops.channel_affinity` (one kernel in inference on CUDA), unless
    the execution policy (``self.execution``) turns the fused kernels off.
    """

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.fc1 = Linear(dim, hidden)   # then ReLU
        self.fc2 = Linear(hidden, dim)   # then sigmoid
        self.execution = share_execution(self, ExecutionPolicy())

    def forward(self, x, scale=None, params=None):
        """``params``: ``(fc1.weight, fc1.bias, fc2.weight, fc2.bias)`` as the caller has
        cast them (:func:`~mmgroupmamba.utils.amp.training_casts`), or None for these."""
        fused = self.execution.fused_kernels
        if params is None:
            params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return channel_affinity(token_mean(x, fused=fused), *params, scale, fused=fused)


# ------------------------------------------------------------------- grouped linears
class _BatchedGroupLinear(torch.autograd.Function):
    """``y[:, g] = x[:, g] @ W_g^T`` for every group g, as one strided batched matmul.

    The groups are read from and written to the channels-last (N, G*d) layout through
    strides (cuBLAS's leading dimensions), so nothing is transposed or copied; under
    autocast the matmuls run in the autocast dtype like ``F.linear``.
    """

    @staticmethod
    def forward(ctx, x, weight):
        G, dout, din = weight.shape
        n = x.shape[0]
        dtype = autocast_dtype(x.device.type) or torch.promote_types(x.dtype, weight.dtype)
        x, w = x.to(dtype), weight.to(dtype)
        out = x.new_empty(n, G * dout)
        torch.bmm(x.view(n, G, din).transpose(0, 1), w.transpose(1, 2),
                  out=out.view(n, G, dout).transpose(0, 1))
        ctx.save_for_backward(x, w)
        ctx.weight_dtype = weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        G, dout, din = w.shape
        n = x.shape[0]
        grad = grad.to(w.dtype).contiguous()
        gg = grad.view(n, G, dout).transpose(0, 1)                     # (G, n, dout)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = grad.new_empty(n, G * din)
            torch.bmm(gg, w, out=dx.view(n, G, din).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            dw = torch.bmm(gg.transpose(1, 2), x.view(n, G, din).transpose(0, 1))
            dw = dw.to(ctx.weight_dtype)
        return dx, dw


def resolve_linear_mode(mode: str, x: torch.Tensor, width: int, dout: int) -> str:
    """``auto`` -> ``blockdiag`` under autocast / in half precision, for narrow layers
    (``width`` = G * din < 256 or ``dout`` < 8) and under ``torch.compile``; else ``bmm``."""
    if mode not in LINEAR_MODES:
        raise ValueError(f'Unknown grouped linear mode {mode!r}; choose from {LINEAR_MODES}.')
    if mode != 'auto':
        return mode
    low = (autocast_dtype(x.device.type) is not None
           or x.dtype in (torch.float16, torch.bfloat16))
    return 'blockdiag' if (low or width < 256 or dout < 8
                           or torch.compiler.is_compiling()) else 'bmm'


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, mode: str = 'auto'):
    """Each channel group's own bias-free linear: (..., G*din) -> (..., G*dout).

    Args:
        weight: (G, dout, din), the groups' ``nn.Linear`` weights stacked.
        mode: ``blockdiag`` -- one ``F.linear`` with the block-diagonal weight (one GEMM
            of G times the FLOPs; best where the matmul is memory-bound anyway: low
            precision, narrow layers); ``bmm`` -- a strided batched matmul with the exact
            FLOPs; ``auto`` picks by precision and width.
    """
    G, dout, din = weight.shape
    mode = resolve_linear_mode(mode, x, G * din, dout)
    if mode == 'blockdiag':
        return F.linear(x, torch.block_diag(*weight.unbind(0)))
    lead = x.shape[:-1]
    x2 = x.reshape(-1, G * din)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return _BatchedGroupLinear.apply(x2, weight).view(*lead, G * dout)


# the grouped layout's matmul weights (:func:`~.grouped_params.arrange`), blockdiag or bmm
MATMUL_WEIGHTS = ('w_in_blockdiag', 'w_x', 'w_z', 'w_xdbl', 'w_out_blockdiag', 'w_out')


class ModulatedGroupMamba(nn.Module):
    """The token mixer of a GroupMamba block (channels-last maps in and out).

    As released: ``x = LN(x)``; the channels are split into four groups, group k scanned
    by its own :class:`VSSS` in direction k; the concatenation is multiplied by the
    normalised input and a learned scalar (``skip_scale``), then by the channel affinity
    of the normalised input, normalised again *by the same LayerNorm* and projected.

    Args:
        dim: channels C; must be divisible by 4 (the groups).
        d_state: SSM state size per group.
        execution (ExecutionPolicy, optional): shared with the layers inside; this layer
            reads ``mixer`` (``grouped``: all groups in a few batched kernels;
            ``reference``: one VSSS after the other, as released; ``auto``: grouped,
            except while ``torch.jit`` traces the model, e.g. to count FLOPs per
            released operator), ``scan_backend``, ``linear_mode`` (see
            :func:`grouped_linear`), ``fused_kernels`` and ``mixer_cp`` (recompute this
            layer in the backward instead of keeping its activations: it holds many
            activations for little compute, unlike the FFN).
    """

    num_groups = len(SCAN_DIRECTIONS)

    def __init__(self, dim: int, d_state: int = 1,
                 execution: Optional[ExecutionPolicy] = None):
        super().__init__()
        if dim % self.num_groups != 0:
            raise ValueError(f'GroupMamba needs a width divisible by {self.num_groups} '
                             f'(one group per scan direction), got {dim}.')
        self.dim = dim
        self.d_state = d_state
        # its output feeds the projections and the products with their outputs: under
        # autocast it is written in the autocast dtype
        self.norm = LayerNorm(dim, eps=1e-5, amp_output=True)
        self.affinity = ChannelAffinity(dim)
        self.groups = nn.ModuleList(
            VSSS(dim // self.num_groups, direction, d_state=d_state)
            for direction in SCAN_DIRECTIONS)
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = Linear(dim, dim)
        self.execution = share_execution(self, execution or ExecutionPolicy())

    def __getstate__(self):
        # copies and pickles (EMA models, torch.save(model)) leave the inference cache out
        state = super().__getstate__()
        state.pop('_param_cache', None)
        state.pop('_pack_layouts', None)
        return state

    def forward(self, x):
        return self.forward_normalized(self.norm(x))

    def forward_normalized(self, x):
        """The layer after its input norm: ``x`` is ``self.norm(input)`` (a block computes
        it together with the residual add in front of it, see
        :meth:`LayerNorm.add_and_norm`)."""
        mixer = self.execution.mixer
        if mixer == 'reference' or (mixer == 'auto' and torch.jit.is_tracing()):
            fn = self._reference_body
        else:
            fn = self._grouped_body
        if self.execution.mixer_cp and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return cp.checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def _modulate(self, y, x, affinity):
        """``LN(y * skip_scale * x * affinity)`` projected: the released ending."""
        y = y * self.skip_scale * x
        y = y * affinity[:, None, None, :]
        return self.proj(self.norm(y))

    def forward_reference(self, x):
        """The released execution: one VSSS per group, one after the other."""
        return self._reference_body(self.norm(x))

    def _reference_body(self, x):
        affinity = self.affinity(x)
        parts = x.chunk(self.num_groups, dim=-1)
        y = torch.cat([op(part) for op, part in zip(self.groups, parts)], dim=-1)
        return self._modulate(y, x, affinity)

    def _grouped_params(self, linear_mode: str):
        """The four groups' parameters in the grouped layout (:func:`arrange`, with ``A``
        instead of ``A_log``), packed by one gather (:func:`pack_group_params`).

        Differentiable views of the per-group parameters while autograd records; without
        grad they are cached (:class:`InferenceCache`) -- the matmul weights already in
        the autocast dtype -- until a parameter changes or the autocast dtype does.
        """
        blockdiag = linear_mode == 'blockdiag'
        params = source_params(self.groups)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._pack_params(params, blockdiag)
        amp_dtype = autocast_dtype(params[0].device.type)
        cache = self.__dict__.setdefault('_param_cache', InferenceCache())
        return cache.get(params, (amp_dtype, blockdiag),
                         lambda: self._pack_params(params, blockdiag, amp_dtype))

    def _pack_params(self, params, blockdiag: bool, matmul_dtype=None):
        # compiled, the arrangement is traced (no cache: Dynamo of torch 2.11 breaks the
        # graph at ``__dict__.setdefault``, and the compiler fuses the gather anyway)
        layouts = (None if torch.compiler.is_compiling()
                   else self.__dict__.setdefault('_pack_layouts', {}))
        out = pack_group_params(params, self.groups, blockdiag, layouts)
        out['A'] = -torch.exp(out.pop('A_log').float())
        if matmul_dtype is not None:
            for name in ('w_in_blockdiag', 'w_out_blockdiag', 'w_xdbl'):
                if name in out:
                    out[name] = out[name].to(matmul_dtype)
        return out

    def forward_grouped(self, x):
        """All four groups at once, with the per-group modules' parameters."""
        return self._grouped_body(self.norm(x))

    def _grouped_body(self, x):
        ops = self.groups
        G = self.num_groups
        width = self.dim
        fused = self.execution.fused_kernels
        mode = resolve_linear_mode(self.execution.linear_mode, x, width, ops[0].dim)
        prm = self._grouped_params(mode)
        # an eager autocast training step: the layer's matmul operands cast in one launch
        # (and their gradients back in one), not by autocast at every use
        matmul = [k for k in MATMUL_WEIGHTS if k in prm]
        # (proj, affinity fc1, affinity fc2) x (weight, bias)
        linears = [getattr(m, k) for m in (self.proj, self.affinity.fc1, self.affinity.fc2)
                   for k in ('weight', 'bias')]
        cast = training_casts(x, [prm[k] for k in matmul] + linears)
        if cast is not None:
            prm = {**prm, **dict(zip(matmul, cast))}
            linears = cast[len(matmul):]
        scale = self.affinity(x, self.skip_scale, linears[2:])     # skip_scale * affinity

        # in_proj of every group: one GEMM (x and z halves as views of its output), or
        # the x halves and the z halves as two batched matmuls
        if mode == 'blockdiag':
            xs, z = linear(x, prm['w_in_blockdiag'], fused=fused).split(width, dim=-1)
        else:
            xs = grouped_linear(x, prm['w_x'], mode)
            z = grouped_linear(x, prm['w_z'], mode)

        # the four depthwise convs are one depthwise conv over all G*d channels (one
        # Triton kernel on CUDA)
        u = depthwise_conv3x3_act(xs, prm['conv_w'], prm['conv_b'], 'silu', fused=fused)
        xdbl = linear(u, prm['w_xdbl'], fused=fused)                   # (B, H, W, G(R+2N))

        y = grouped_selective_scan(
            u, xdbl, z, dt_weight=prm['dt_weight'], dt_bias=prm['dt_bias'], A=prm['A'],
            D=prm['D'], ln_weight=prm['ln_weight'], ln_bias=prm['ln_bias'],
            eps=ops[0].out_norm.eps, directions=tuple(op.direction for op in ops[:G]),
            backend=self.execution.scan_backend)
        if mode == 'blockdiag':
            y = linear(y, prm['w_out_blockdiag'], fused=fused)
        else:
            y = grouped_linear(y, prm['w_out'], mode)
        # the released ``LN(y * skip_scale * x * affinity)`` with the two per-image factors
        # merged first, in one pass (one kernel on CUDA)
        y = self.norm.modulated(y, x, scale)
        return self.proj(y, cast=None if cast is None else linears[:2])
