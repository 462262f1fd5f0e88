#!/usr/bin/env bash
# GPU smoke run of the Mask R-CNN GroupMamba-T 1x config: the real model and the full
# 1333x800 pipeline, on the generated COCO-format shapes set at COCO-like image sizes.
# Trains ITERS iterations (one epoch), evaluates bbox + segm with CocoMetric, tests the
# saved checkpoint, and prints the iteration time and peak GPU memory from mmengine's log.
#
#   bash tools/misc/gpu_det_smoke.sh                 # 1 GPU, 300 iterations, --amp
#   GPUS=2 bash tools/misc/gpu_det_smoke.sh          # tools/dist_train.sh + dist_test.sh
#   ITERS=200 AMP= PRETRAINED=path.pth bash tools/misc/gpu_det_smoke.sh
#   CONFIG=other_config.py EVAL= bash tools/misc/gpu_det_smoke.sh   # timing only
#
# Environment: GPUS (1), ITERS per GPU (300), NUM_VAL (100 val images), AMP (--amp; empty
# for fp32), PYTHON (python), DATA (data/shapes_coco_full), WORK (work_dirs/det_gpu_smoke),
# CONFIG (configs/maskrcnn_groupmamba_t_1x.py; any mmdet Mask R-CNN config on COCO),
# PRETRAINED (the config's checkpoint if that file exists, else a random backbone), EVAL
# (1: validate after the epoch and test the checkpoint; empty: train and time only),
# EXTRA (more --cfg-options).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
GPUS=${GPUS:-1}
ITERS=${ITERS:-300}
NUM_VAL=${NUM_VAL:-100}
AMP=${AMP---amp}
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/shapes_coco_full}
WORK=${WORK:-work_dirs/det_gpu_smoke}
CONFIG=${CONFIG:-configs/maskrcnn_groupmamba_t_1x.py}
EVAL=${EVAL-1}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# One epoch of ITERS iterations at 2 images per GPU; COCO-like 480-640 px images, which the
# pipeline resizes to the full 1333x800 scale exactly as COCO images.
NUM_TRAIN=$((ITERS * 2 * GPUS))
"$PYTHON" -c "
from mmgroupmamba.datasets.synthetic_coco import generate_detection_set
generate_detection_set('$DATA', num_train=$NUM_TRAIN, num_val=$NUM_VAL, image_size=(480, 640),
                       instances_per_image=(3, 8), radius_range=(0.05, 0.2))
print('data ready in $DATA')"

CKPT_OPT=()
if [ -n "${PRETRAINED:-}" ]; then
    CKPT_OPT=(model.backbone.init_cfg.checkpoint="$PRETRAINED")
elif [ "$CONFIG" != configs/maskrcnn_groupmamba_t_1x.py ] || [ ! -f checkpoints/groupmamba_tiny.pth ]; then
    echo "no pretrained backbone here: random backbone (timing and memory only)"
    CKPT_OPT=(model.backbone.init_cfg=None)
fi

# data_root is baked into the dataset and evaluator entries when the config is parsed,
# so every entry is pointed at the generated set; the heads get its 4 classes (an
# 80-class head would predict labels the evaluator cannot map to categories).
CLASSES="[circle,square,triangle,cross]"
OPTS=()
for split in train val test; do
    sub=$([ $split = train ] && echo train || echo val)
    OPTS+=("${split}_dataloader.dataset.data_root=$DATA/"
           "${split}_dataloader.dataset.ann_file=annotations/instances_$sub.json"
           "${split}_dataloader.dataset.data_prefix.img=$sub/"
           "${split}_dataloader.dataset.metainfo.classes=$CLASSES")
done
OPTS+=("val_evaluator.ann_file=$DATA/annotations/instances_val.json"
       "test_evaluator.ann_file=$DATA/annotations/instances_val.json"
       model.roi_head.bbox_head.num_classes=4 model.roi_head.mask_head.num_classes=4
       train_cfg.max_epochs=1 default_hooks.logger.interval=20
       "${CKPT_OPT[@]}" ${EXTRA:-})
# timing only: no validation inside the epoch, no checkpoint
[ -n "$EVAL" ] || OPTS+=(train_cfg.val_interval=2 default_hooks.checkpoint.interval=2)

rm -rf "$WORK"
START=$(date +%s)
if [ "$GPUS" -gt 1 ]; then
    bash tools/dist_train.sh $CONFIG "$GPUS" --work-dir "$WORK" $AMP --cfg-options "${OPTS[@]}"
    [ -z "$EVAL" ] || bash tools/dist_test.sh $CONFIG "$WORK/epoch_1.pth" "$GPUS" \
        --work-dir "$WORK/test" --cfg-options "${OPTS[@]}"
else
    "$PYTHON" tools/train.py $CONFIG --work-dir "$WORK" $AMP --cfg-options "${OPTS[@]}"
    [ -z "$EVAL" ] || "$PYTHON" tools/test.py $CONFIG "$WORK/epoch_1.pth" \
        --work-dir "$WORK/test" --cfg-options "${OPTS[@]}"
fi
echo "wall time (train + val + test): $(( $(date +%s) - START )) s"

# Summary of mmengine's per-iteration log: time (s/iter, after the first 50 iterations)
# and memory (peak MB allocated by torch on rank 0).
"$PYTHON" - "$WORK" <<'EOF'
import glob, json, statistics, sys
logs = sorted(glob.glob(f'{sys.argv[1]}/*/vis_data/scalars.json'))
rows = [json.loads(line) for line in open(logs[-1])]
train = [r for r in rows if 'loss' in r and 'time' in r]
late = [r for r in train if r['iter'] > 50] or train
# the mean after 50 and over all logged windows include one-off costs (captures of new
# batch sizes by a graphed backbone, Triton and cuDNN warm-up) that the median leaves out
t_late, t_all = [r['time'] for r in late], [r['time'] for r in train]
print(f"iterations logged: {train[-1]['iter']}; time/iter (median after 50): "
      f"{statistics.median(t_late):.3f} s (mean after 50 {statistics.mean(t_late):.3f}, "
      f"all {statistics.mean(t_all):.3f}); "
      f"data_time: {statistics.median(r['data_time'] for r in late):.3f} s; "
      f"peak memory: {max(r.get('memory', 0) for r in train)} MB; "
      f"last loss: {train[-1]['loss']:.3f}")
val = [r for r in rows if 'coco/bbox_mAP' in r]
if val:
    print(f"val: bbox_mAP {val[-1]['coco/bbox_mAP']}, segm_mAP {val[-1]['coco/segm_mAP']}")
EOF
