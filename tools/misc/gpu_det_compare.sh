#!/usr/bin/env bash
# Mask R-CNN 1x training iterations of GroupMamba-T (configs/maskrcnn_groupmamba_t_1x.py,
# whose backbone replays CUDA graphs of its training steps, one per batch size; and the
# same config with the backbone eager) and of mmdet's own Swin-T config
# (swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py, from the installed mmdet) in one run, on
# the same generated COCO-format data (image heights and widths drawn from 480-640, so
# the 1333x800 keep-ratio pipeline makes ~17 batch sizes in 150 batches, as COCO makes
# a few dozen), batch 2 per GPU: prints s/iter and peak memory of each (random backbones:
# nothing can be downloaded). Needs mmcv built with its CUDA ops
# (tools/misc/build_cuda_wheels.sh) and mmdet.
#
#   bash tools/misc/gpu_det_compare.sh            # ITERS=150, --amp
#   ITERS=300 AMP= RUNS="groupmamba swin" bash tools/misc/gpu_det_compare.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON=${PYTHON:-python}
RUNS=${RUNS:-groupmamba groupmamba-eager swin}
export ITERS=${ITERS:-150} EVAL= PYTHON
SWIN=$("$PYTHON" -c "import os, mmdet; print(os.path.join(os.path.dirname(mmdet.__file__),
    '.mim', 'configs', 'swin', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'))")
mkdir -p work_dirs
for name in $RUNS; do
    config=configs/maskrcnn_groupmamba_t_1x.py extra=
    case $name in
        swin) config=$SWIN ;;
        groupmamba-eager) extra=model.backbone.execution.cuda_graph=False ;;
    esac
    CONFIG=$config WORK=work_dirs/det_compare_$name EXTRA=$extra \
        bash tools/misc/gpu_det_smoke.sh > "work_dirs/det_compare_$name.log" 2>&1 ||
        { echo "$name failed:"; tail -20 "work_dirs/det_compare_$name.log"; }
done
echo "Mask R-CNN 1x, batch 2 per GPU, ${ITERS} iterations, ${AMP---amp}:"
for name in $RUNS; do
    echo "  $name: $(grep 'time/iter' work_dirs/det_compare_$name.log)"
done
