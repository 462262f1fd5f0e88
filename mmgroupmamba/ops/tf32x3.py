"""float32 linear layers on tensor cores, at float32 accuracy (3xTF32).

cuBLAS runs a float32 matmul on the CUDA cores unless TF32 is allowed, and TF32 keeps 10
mantissa bits: 1e-3 relative errors that the 1e-4 match to the released checkpoints
does not tolerate. 3xTF32 splits each operand into a TF32 part and a TF32 remainder and
sums three tensor-core products (``a_hi b_hi + a_hi b_lo + a_lo b_hi``), accumulated in
float32: errors of the order of a float32 matmul's, at several times the float32
throughput of the CUDA cores. GroupMamba's float32 inference spends about half its time
in the linears of its FFNs, so they use it (:class:`mmgroupmamba.models.layers.Linear`,
inference only; training keeps cuBLAS, and ``fused=False`` turns it off).
"""
import torch
import torch.nn.functional as F

from . import column_sums
from .dispatch import fused_kernel_applies, records_grad, triton_interpreting

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - no (usable) Triton: F.linear is used
    triton = None

MIN_ROWS = 4096  # below this the launch, not the matmul, costs the time

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); tried once per (N, K) on the GPU (the first
# float32 inference of a model compiles them all: about a minute for GroupMamba-T; Triton
# keeps the binaries on disk)
CONFIGS = ((128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (64, 128, 32, 4, 4),
           (128, 64, 64, 4, 3), (128, 128, 64, 8, 3), (256, 64, 32, 8, 3))

if triton is not None:

    def _configs():
        if triton_interpreting():
            return [triton.Config(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16), num_warps=1)]
        return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k), num_warps=w,
                              num_stages=s) for m, n, k, w, s in CONFIGS]

    def _prune_configs(configs, named_args, **kwargs):
        """Tiles wider than N (beyond 64) would only compute masked-out columns: not
        worth their compile and trial. Triton's autotuner passes the positional
        arguments as ``named_args`` and the keyword ones as ``kwargs``."""
        n = kwargs['N'] if 'N' in kwargs else named_args['N']
        width = max(64, triton.next_power_of_2(n))
        return [c for c in configs if c.kwargs['BLOCK_N'] <= width] or configs

    @triton.autotune(configs=_configs(), key=['N', 'K'],
                     prune_configs_by={'early_config_prune': _prune_configs})
    @triton.jit
    def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N: tl.constexpr, K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr = 8):
        """y (M, N) = x (M, K) @ w (N, K)^T + b, all contiguous. N and K are compile-time
        constants: the row strides then show the compiler which loads are 16-byte
        aligned (K = 348 is not a multiple of 16 elements, but its rows are)."""
        # consecutive programs share column blocks of W and rows of x in L2
        pid = tl.program_id(0)
        n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * n_n
        first_m = (pid // per_group) * GROUP_M
        rows_in_group = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % rows_in_group
        pid_n = (pid % per_group) // rows_in_group

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        mask_m, mask_n = rm < M, rn < N
        x_tile = x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
        w_tile = w_ptr + rn[None, :] * K + rk[:, None]               # W^T tile (K, N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            mask_k = (k + rk) < K
            a = tl.load(x_tile + k, mask=mask_m[:, None] & mask_k[None, :], other=0.)
            b = tl.load(w_tile + k, mask=mask_k[:, None] & mask_n[None, :], other=0.)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=mask_n, other=0.)[None, :]
        tl.store(y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc,
                 mask=mask_m[:, None] & mask_n[None, :])


def linear_tf32x3(x: torch.Tensor, weight: torch.Tensor, bias=None,
                  precision: str = 'tf32x3') -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for float32 CUDA tensors, by one Triton matmul with
    3xTF32 products (``precision``: ``tf32x3``; ``ieee`` and ``tf32`` for comparisons).
    No autograd: for inference."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise ValueError(f'linear_tf32x3 computes float32 linears, got {x.dtype} input and '
                         f'{weight.dtype} weight.')
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f'Linear of {K} input features got an input with {x.shape[-1]} '
                         f'in its last dimension ({tuple(x.shape)}).')
    x2 = x.reshape(-1, K).contiguous()
    weight = weight.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(M, meta['BLOCK_M']) * triton.cdiv(N, meta['BLOCK_N']), )  # noqa: E731,E501
    _linear_kernel[grid](x_ptr=x2, w_ptr=weight,
                         b_ptr=bias if bias is not None else weight, y_ptr=y, M=M, N=N, K=K,
                         HAS_BIAS=bias is not None, PRECISION=precision)
    return y.view(*x.shape[:-1], N)


def tf32x3_applies(x: torch.Tensor, weight: torch.Tensor, fused: bool = True) -> bool:
    """Whether a float32 inference linear of ``x`` runs as :func:`linear_tf32x3`: not
    where TF32 matmuls are allowed (cuBLAS's single TF32 product is faster, and its
    precision was asked for)."""
    return (triton is not None and fused_kernel_applies(x, fused) and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.numel() >= MIN_ROWS * x.shape[-1]
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.backends.cuda.matmul.allow_tf32)


def linear(x: torch.Tensor, weight: torch.Tensor, bias=None,
           fused: bool = True) -> torch.Tensor:
    """``F.linear`` (autocast as for ``F.linear``): as :func:`linear_tf32x3` where
    :func:`tf32x3_applies`; with a bias and autograd recording on CUDA, as
    :func:`mmgroupmamba.ops.column_sums.linear` (its bias gradient a GEMV). ``fused=False``,
    ``torch.compile`` and ``torch.jit`` tracing: always ``F.linear``."""
    if tf32x3_applies(x, weight, fused):
        return linear_tf32x3(x, weight, bias)
    if (bias is not None and fused_kernel_applies(x, fused) and x.is_cuda
            and records_grad(x, weight, bias) and not torch.compiler.is_compiling()):
        return column_sums.linear(x, weight, bias)
    return F.linear(x, weight, bias)
