"""Every Triton kernel (selective scan, depthwise conv, LayerNorm, channel affinity,
tf32x3 linear) compiled for sm_90 (Hopper) without a GPU.

Runs only with ``MMGM_TRITON_COMPILE_CHECK=1`` (needs Triton; about a minute):
    MMGM_TRITON_COMPILE_CHECK=1 python -m pytest tests/ops/test_kernels_compile.py -q
"""
import os

import pytest

from conftest import HAS_TRITON


# ------------------------------------------------------------- offline sm_90 compile
@pytest.mark.skipif(not HAS_TRITON or os.environ.get('MMGM_TRITON_COMPILE_CHECK') != '1',
                    reason='set MMGM_TRITON_COMPILE_CHECK=1 (needs Triton; ~1 minute)')
def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton compiles to PTX and runs its bundled ptxas without a GPU: catches kernels
    that the interpreter accepts but the compiler rejects, and reports register spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mmgroupmamba.ops import dwconv
    from mmgroupmamba.ops import selective_scan_triton as sst
    fp32_ptrs = {'w_ptr', 'bias_ptr', 'A_ptr', 'D_ptr', 'lnw_ptr', 'lnb_ptr', 'hs_ptr',
                 'dA_ptr', 'dD_ptr', 'dbias_ptr', 'dlnw_ptr', 'dlnb_ptr', 'dw_ptr',
                 'ddl_ptr', 'dB_ptr', 'dC_ptr', 'b_ptr', 'part_ptr', 's_ptr',
                 'ds_part_ptr', 'dwb_part_ptr', 'gp_ptr', 'seg_a_ptr', 'seg_h_ptr',
                 'seg_p_ptr', 'seg_s_ptr', 'sum_ptr', 'gs_ptr'}

    def compile_kernel(fn, consts, num_warps, num_stages=3, all_fp32=False, maxnreg=None):
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = 'constexpr'
            elif name.endswith('_ptr'):
                sig[name] = ('*fp32' if name in fp32_ptrs or all_fp32 else
                             '*i32' if name == 'dir_ptr' else
                             '*i64' if name == 'lb_ptr' else '*bf16')
            else:
                sig[name] = 'fp32' if name == 'eps' else 'i32'
        return triton.compile(ASTSource(fn, sig, constexprs=consts),
                              target=GPUTarget('cuda', 90, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages,
                                           maxnreg=maxnreg))

    flags = dict(HAS_DT_PROJ=True, HAS_BIAS=True, SOFTPLUS=True, HAS_D=True, HAS_Z=True,
                 HAS_NORM=True)
    for carry, look_back in ((False, False), (True, False), (False, True)):
        compile_kernel(sst._scan_fwd_kernel, dict(G=4, R=6, BLOCK_L=16, BLOCK_D=128,
                                                  SEG_BLOCK=16, SAVE_STATES=not carry,
                                                  CARRY_PASS=carry, LOOK_BACK=look_back,
                                                  FLOAT_INDEX=True, **flags), 4)
        # the landed stage-3 backward: 8 rows x 128 lanes on 2 warps
        for dt_dot in (True, False):
            compile_kernel(sst._scan_bwd_kernel, dict(G=4, R=6, BLOCK_R=8, BLOCK_L=8,
                                                      BLOCK_D=128, SEG_BLOCK=16,
                                                      CARRY_PASS=carry, LOOK_BACK=look_back,
                                                      DT_DOT=dt_dot, FLOAT_INDEX=dt_dot,
                                                      **flags), 2)
    # the register cap of TUNING['bwd_max_registers'] reaches ptxas
    capped = compile_kernel(sst._scan_bwd_kernel, dict(G=4, R=6, BLOCK_R=8, BLOCK_L=8,
                                                       BLOCK_D=128, SEG_BLOCK=16,
                                                       CARRY_PASS=False, LOOK_BACK=True,
                                                       DT_DOT=True, FLOAT_INDEX=True,
                                                       **flags), 4, maxnreg=128)
    assert '.maxnreg 128' in capped.asm['ptx']
    for fn, consts in ((dwconv._dw_fwd_kernel, dict(ACT=2, HAS_BIAS=True, FLIP=False,
                                                     BLOCK_C=32, PREFETCH=True)),
                       (dwconv._dw_fwd_kernel, dict(ACT=0, HAS_BIAS=False, FLIP=True,
                                                     BLOCK_C=32, PREFETCH=False)),
                       (dwconv._dw_bwd_kernel, dict(ACT=1, HAS_BIAS=True, BLOCK_C=16,
                                                     SLIDE=False, PREFETCH=False)),
                       (dwconv._dw_bwd_kernel, dict(ACT=2, HAS_BIAS=True, BLOCK_C=32,
                                                     SLIDE=True, PREFETCH=False)),
                       (dwconv._dw_bwd_kernel, dict(ACT=1, HAS_BIAS=True, BLOCK_C=32,
                                                     SLIDE=True, PREFETCH=True))):
        compile_kernel(fn, dict(ROWS=16, BLOCK_W=64, **consts), 8)
    from mmgroupmamba.ops import fused_layer_norm as ln
    for fn, block_m in ((ln._ln_fwd_kernel, 8), (ln._ln_bwd_kernel, 4)):
        for mod, res in ((True, False), (False, True)):
            compile_kernel(fn, dict(BLOCK_M=block_m, BLOCK_C=512, MOD=mod, HAS_W=True,
                                    RES=res, FACTOR=res,
                                    **({'HAS_B': True} if fn is ln._ln_fwd_kernel else {})),
                           8)
    from mmgroupmamba.ops import affinity as cam
    compile_kernel(cam._affinity_kernel, dict(BLOCK_C=512, BLOCK_H=32, HAS_SCALE=True), 8)
    from mmgroupmamba.ops import tf32x3 as lin
    for m, n, k, warps, stages in lin.CONFIGS:
        compile_kernel(lin._linear_kernel.fn, dict(N=1392, K=348, HAS_BIAS=True,
                                                   PRECISION='tf32x3', BLOCK_M=m, BLOCK_N=n,
                                                   BLOCK_K=k, GROUP_M=8),
                       warps, stages, all_fp32=True)
