#!/usr/bin/env bash
# GPU smoke run of the ImageNet GroupMamba-T config: the real model (23.4M), the full
# 224x224 training pipeline (RandAugment, erasing, Mixup/CutMix), AMP, EMA, grad clip and
# hard distillation from a full-size RegNetY-16GF teacher (timm regnety_160; random
# weights written on the fly, since nothing can be downloaded), on the generated shapes
# set at 224 px in the ImageNet layout. Trains ITERS iterations, evaluates (EMA weights,
# no teacher), re-tests the saved checkpoint with tools/test.py, and prints images/s and
# peak GPU memory from mmengine's log.
#
#   bash tools/misc/gpu_cls_smoke.sh                    # 1 GPU, 128 images/GPU, 300 iters
#   COMPARE=1 bash tools/misc/gpu_cls_smoke.sh          # + 100 iters without the teacher
#   GPUS=8 bash tools/misc/gpu_cls_smoke.sh             # tools/dist_train.sh + dist_test.sh
#
# Environment: GPUS (1), BATCH per GPU (128), ITERS (300), COMPARE (empty; COMPARE_ITERS
# iterations of the no-teacher run, min(ITERS, 100)), PYTHON
# (python), DATA (data/shapes224), WORK (work_dirs/cls_gpu_smoke), TEACHER (a real
# regnety_160-a5fe301d.pth to use instead of random weights), EXTRA (more --cfg-options).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
GPUS=${GPUS:-1}
BATCH=${BATCH:-128}
ITERS=${ITERS:-300}
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/shapes224}
WORK=${WORK:-work_dirs/cls_gpu_smoke}
CONFIG=configs/groupmamba/groupmamba-t_8xb128_in1k.py
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# The configs read the data root from IMAGENET_ROOT (train, val and test loaders).
export IMAGENET_ROOT="$DATA"

rm -rf "$WORK"
mkdir -p "$WORK"
# 8 classes x 400 training images (25 iterations per epoch at 128), 50 val images each.
"$PYTHON" -c "
from mmgroupmamba.datasets import generate_classification_set
generate_classification_set('$DATA', num_train_per_class=400, num_val_per_class=50,
                            image_size=224)
print('data ready in $DATA')"

TEACHER_CKPT=${TEACHER:-$WORK/regnety_160_random.pth}
if [ -z "${TEACHER:-}" ]; then
    "$PYTHON" -c "
import torch
from mmgroupmamba.models.teachers import build_timm_teacher
teacher = build_timm_teacher('regnety_160', num_classes=1000)  # timm if importable
print('teacher:', type(teacher).__module__, sum(p.numel() for p in teacher.parameters()))
torch.save({'model': teacher.state_dict()}, '$TEACHER_CKPT')"
fi

# An iteration-based variant of the config: same model, data pipeline, optimiser, AMP,
# EMA and distillation; a short warm-up + cosine instead of the 300-epoch schedule.
write_cfg() {  # $1: file, $2: iterations, $3: distill_type
    local warm=$(( $2 >= 3 ? $2 / 3 : 1 ))
    cat > "$1" <<EOF
_base_ = ['$ROOT/$CONFIG']
model = dict(head=dict(distill_type='$3'), teacher_checkpoint='$TEACHER_CKPT')
train_dataloader = dict(batch_size=$BATCH)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=$2, val_interval=$2)
param_scheduler = [
    dict(type='LinearLR', start_factor=5e-4, by_epoch=False, begin=0, end=$warm),
    dict(type='CosineAnnealingLR', eta_min=5e-6, by_epoch=False, begin=$warm, end=$2),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=$2, max_keep_ckpts=1, save_best=None))
log_processor = dict(by_epoch=False)
EOF
}

run() {  # $1: name, $2: iterations, $3: distill_type
    local wd="$WORK/$1"
    write_cfg "$WORK/$1.py" "$2" "$3"
    local start=$(date +%s)
    local extra=(${EXTRA:+--cfg-options $EXTRA})
    if [ "$GPUS" -gt 1 ]; then
        bash tools/dist_train.sh "$WORK/$1.py" "$GPUS" --work-dir "$wd" "${extra[@]}"
        bash tools/dist_test.sh "$WORK/$1.py" "$wd/iter_$2.pth" "$GPUS" --work-dir "$wd/test"
    else
        "$PYTHON" tools/train.py "$WORK/$1.py" --work-dir "$wd" "${extra[@]}"
        "$PYTHON" tools/test.py "$WORK/$1.py" "$wd/iter_$2.pth" --work-dir "$wd/test"
    fi
    echo "$1: wall time (data loading, train, val, test): $(( $(date +%s) - start )) s"
    # mmengine logs time (s/iter) and memory (peak MB allocated by torch, rank 0).
    "$PYTHON" - "$wd" "$BATCH" "$GPUS" "$1" <<'PYEOF'
import glob, json, statistics, sys
wd, batch, gpus, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(sorted(glob.glob(f'{wd}/*/vis_data/scalars.json'))[0])]
train = [r for r in rows if 'loss' in r and 'time' in r]
late = [r for r in train if r['step'] > 50] or train
t = statistics.median(r['time'] for r in late)
print(f"{name}: {train[-1]['step']} iterations, median {t:.3f} s/iter after 50 -> "
      f"{batch * gpus / t:.0f} images/s ({batch / t:.0f} per GPU); data_time "
      f"{statistics.median(r['data_time'] for r in late):.3f} s; peak memory "
      f"{max(r.get('memory', 0) for r in train)} MB; loss {train[0]['loss']:.3f} -> "
      f"{train[-1]['loss']:.3f}")
val = [r for r in rows if 'accuracy/top1' in r]
if val:
    print(f"{name}: val top-1 {val[-1]['accuracy/top1']:.2f} (EMA weights, 8 classes)")
PYEOF
}

run distill "$ITERS" hard
if [ -n "${COMPARE:-}" ]; then
    run no_teacher "${COMPARE_ITERS:-$(( ITERS < 100 ? ITERS : 100 ))}" none
fi
