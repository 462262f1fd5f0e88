#!/usr/bin/env bash
# Build the compiled dependencies for a CUDA machine, offline, from source archives:
#   mmcv 2.1.0 with CUDA ops (NMS, RoIAlign, ... needed by Mask R-CNN), optionally
#   mamba-ssm (its selective_scan_fn as a scan backend; our Triton backend needs nothing).
#
#   tools/misc/build_cuda_wheels.sh SRC_DIR OUT_DIR [mmcv] [mamba]
#
# SRC_DIR holds mmcv-2.1.0.tar.gz / mamba_ssm-*.tar.gz and a setuptools<81 wheel on the
# path (mmcv's setup.py imports pkg_resources). ARCH (default 9.0 = Hopper) and MAX_JOBS
# are honoured. Each build runs in the background; the script waits for all of them.
set -uo pipefail
SRC=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
WHAT=${*:-mmcv mamba}
ARCH=${ARCH:-9.0}
JOBS=${MAX_JOBS:-$(nproc)}
WORK=$(mktemp -d)
pids=()

if [[ " $WHAT " == *" mmcv "* ]]; then
  (cd "$WORK" && tar xzf "$SRC"/mmcv-2.1.0.tar.gz && cd mmcv-2.1.0 &&
   MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$JOBS \
   python3 -m pip wheel -q --no-build-isolation --no-deps -w "$OUT" . \
   > "$OUT/build_mmcv.log" 2>&1; echo "mmcv build exit $?" >> "$OUT/build_mmcv.log") &
  pids+=($!)
fi
if [[ " $WHAT " == *" mamba "* ]]; then
  (cd "$WORK" && tar xzf "$SRC"/mamba_ssm-*.tar.gz && cd mamba_ssm-* &&
   # mamba-ssm hard-codes nine GPU architectures; build only the one we run on.
   python3 - <<'PY' &&
import re
s = open('setup.py').read()
s = s.replace('    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI',
              '    cc_flag = ["-gencode", "arch=compute_90,code=sm_90"]\n'
              '    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI', 1)
open('setup.py', 'w').write(s)
PY
   MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=FALSE MAX_JOBS=$JOBS \
   python3 -m pip wheel -q --no-build-isolation --no-deps -w "$OUT" . \
   > "$OUT/build_mamba.log" 2>&1; echo "mamba build exit $?" >> "$OUT/build_mamba.log") &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
ls -la "$OUT"
