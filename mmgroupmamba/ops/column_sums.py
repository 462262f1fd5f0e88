"""Sums over the tokens of a (tokens, channels) map as matrix-vector products.

Two reductions of a GroupMamba training step read a whole feature map to produce one
value per channel: the bias gradient of every linear (``grad.sum(0)`` over all tokens:
the FFN's ``fc1`` reads its eight-times-wider output gradient) and the channel-affinity
mean of every mixer (``x.mean((1, 2))``). PyTorch runs both as column reductions, which
reach about a third of the memory bandwidth at detection shapes; a GEMV against a vector
of ones (cuBLAS, fp32 accumulation) reads the map faster. H100, bf16, 2 x 800x1344, per
training step of GroupMamba-T: bias gradients 1.76 -> 0.97 ms. The first stage's channel
mean took 66 us with ``x.mean`` and 15 us as a one-pass Triton column sum (a prototype,
not kept); its batched-GEMV form here was not timed on its own.

* :func:`column_sum` -- ``x.sum(0)`` of a 2-D tensor, as ``x.T @ ones``;
* :func:`linear` -- ``F.linear`` whose backward takes the bias gradient that way;
* :func:`token_mean` -- ``x.mean((1, 2))`` of a channels-last (B, H, W, C) map, as a
  batched GEMV in half precision (its backward: the usual broadcast).

The references are the PyTorch expressions named above; the callers choose (the layers
pass their execution policy's ``fused_kernels``).
"""
import torch
import torch.nn.functional as F

from mmgroupmamba.utils.amp import autocast_dtype

__all__ = ['column_sum', 'linear', 'token_mean']

# Vectors of ones per (device, dtype), the last one the longest. None is ever freed: a
# captured CUDA graph keeps the address of the one it read, not a reference.
_ONES = {}


def _ones(n: int, like: torch.Tensor) -> torch.Tensor:
    made = _ONES.setdefault((like.device, like.dtype), [])
    if made and made[-1].numel() >= n:
        return made[-1][:n]
    ones = torch.ones(1 << max(10, (n - 1).bit_length()), device=like.device,
                      dtype=like.dtype)
    # one made while a CUDA graph is captured is only filled when the graph replays:
    # that graph's memory pool keeps it, it is not kept for other calls
    if not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
        made.append(ones)
    return ones[:n]


def column_sum(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(0)`` of a 2-D tensor (in ``x``'s dtype, accumulated in fp32) as one GEMV."""
    if x.dim() != 2:
        raise ValueError(f'column_sum takes a 2-D tensor, got shape {tuple(x.shape)}.')
    return torch.mv(x.t(), _ones(x.shape[0], x))


class _LinearFn(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with the inputs already in the matmul dtype; the
    backward is F.linear's (two matmuls) except the bias gradient, a :func:`column_sum`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (g @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = g.t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2]:
            db = column_sum(g)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.linear`` with a bias, for training: under autocast the operands are cast to
    its dtype first (as ``F.linear`` would), so the gradients match ``F.linear``'s but
    for the summation order of the bias gradient."""
    dtype = autocast_dtype(x.device.type)
    if dtype is not None:
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    elif not (x.dtype == weight.dtype == bias.dtype):
        raise ValueError(f'linear needs one dtype outside autocast, got input {x.dtype}, '
                         f'weight {weight.dtype}, bias {bias.dtype}.')
    return _LinearFn.apply(x, weight, bias)


class _TokenMeanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):
        B, H, W, C = x.shape
        ctx.shape = x.shape
        tokens = x.reshape(B, H * W, C)
        ones = _ones(H * W, x).view(1, 1, H * W).expand(B, 1, H * W)
        # the sum in the GEMM's fp32 accumulator, scaled there (alpha), one rounding to
        # x's dtype; beta = 0: the input term is ignored, so it need not be filled
        unused = x.new_empty(1, 1, 1).expand(B, 1, C)
        return torch.baddbmm(unused, ones, tokens, beta=0, alpha=1. / (H * W)).view(B, C)

    @staticmethod
    def backward(ctx, grad):
        B, H, W, C = ctx.shape
        return (grad / (H * W)).view(B, 1, 1, C).expand(B, H, W, C)


def token_mean(x: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """``x.mean((1, 2))`` of a (B, H, W, C) map; a batched GEMV for fp16 / bf16 CUDA maps
    (float32 keeps PyTorch's mean: cuBLAS may use TF32 there; so do ``fused=False``,
    ``torch.compile`` and ``torch.jit`` tracing)."""
    if x.dim() != 4:
        raise ValueError(f'token_mean takes a (B, H, W, C) map, got shape {tuple(x.shape)}.')
    if (not fused or not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16)
            or torch.compiler.is_compiling() or torch.jit.is_tracing()):
        return x.mean(dim=(1, 2))
    return _TokenMeanFn.apply(x)
