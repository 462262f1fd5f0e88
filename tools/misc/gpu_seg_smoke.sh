#!/usr/bin/env bash
# GPU smoke run of the UperNet 160k recipe (configs/upernet_groupmamba_t_160k_ade20k.py) on
# generated ADE20K-layout data at ADE-like sizes: a few hundred iterations of 512x512 crops
# with AMP on one GPU, then single-scale and multi-scale + flip (--tta) testing.
#
#   bash tools/misc/gpu_seg_smoke.sh
#   ITERS=300 BATCH=2 CKPT=checkpoints/groupmamba-t_in1k.pth bash tools/misc/gpu_seg_smoke.sh
#
# Env: PYTHON (default python), ITERS (300), BATCH (images per GPU, 2 as in the recipe),
# CKPT (ImageNet backbone weights; default: none, random init), DATA (data/shapes_ade_512),
# WORK (work_dirs/seg_gpu_smoke). Needs the project's dependencies (mmcv 2.1.0, mmseg 1.2.2).
# What to look at: the loss falling, time/iter and memory in the train log, and both test
# runs finishing with an mIoU (low after a few hundred iterations from random init: this run
# checks the pipeline, speed and memory, not accuracy).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
ITERS="${ITERS:-300}"
BATCH="${BATCH:-2}"
DATA="${DATA:-data/shapes_ade_512}"
WORK="${WORK:-work_dirs/seg_gpu_smoke}"
CONFIG=configs/upernet_groupmamba_t_160k_ade20k.py
WARMUP=$(( ITERS / 5 ))

"$PY" -c "
from mmgroupmamba.datasets.synthetic_ade import generate_segmentation_set
print(generate_segmentation_set('$DATA', num_train=400, num_val=50, size_range=(384, 640)))"

if [[ -n "${CKPT:-}" ]]; then
  INIT="model.backbone.init_cfg.checkpoint=$CKPT"
else
  INIT="model.backbone.init_cfg=None"
fi
DATA_OPTS=(train_dataloader.dataset.data_root="$DATA"
           val_dataloader.dataset.data_root="$DATA"
           test_dataloader.dataset.data_root="$DATA")

START=$(date +%s)
"$PY" tools/train.py "$CONFIG" --amp --work-dir "$WORK" --cfg-options \
  "$INIT" "${DATA_OPTS[@]}" \
  train_dataloader.batch_size="$BATCH" \
  train_cfg.max_iters="$ITERS" train_cfg.val_interval="$ITERS" \
  param_scheduler.0.end="$WARMUP" param_scheduler.1.begin="$WARMUP" \
  param_scheduler.1.end="$ITERS" \
  default_hooks.checkpoint.interval="$ITERS" default_hooks.logger.interval=20
TRAIN_S=$(( $(date +%s) - START ))

CKPT_OUT="$WORK/iter_${ITERS}.pth"
START=$(date +%s)
"$PY" tools/test.py "$CONFIG" "$CKPT_OUT" --work-dir "$WORK/test_ss" \
  --cfg-options "${DATA_OPTS[@]}" model.backbone.init_cfg=None
SS_S=$(( $(date +%s) - START ))
START=$(date +%s)
"$PY" tools/test.py "$CONFIG" "$CKPT_OUT" --work-dir "$WORK/test_ms" --tta \
  --cfg-options "${DATA_OPTS[@]}" model.backbone.init_cfg=None
MS_S=$(( $(date +%s) - START ))
echo "[seg smoke] train ${ITERS} iters: ${TRAIN_S}s; single-scale test: ${SS_S}s;" \
     "multi-scale+flip test: ${MS_S}s (mIoU in the logs above)"
