#!/usr/bin/env bash
# Distillation demo on the built-in shapes set (CPU, no download):
#   1. train a small CNN teacher with tools/train.py,
#   2. for every seed in SEEDS, train the small GroupMamba student with hard distillation
#      from that teacher, and the same student without a teacher (same data, schedule and
#      seed),
#   3. re-evaluate every saved checkpoint with tools/test.py,
# then print the top-1 of all models: the final validation during training and the
# tools/test.py re-evaluation of the saved checkpoint (which must agree), per seed and
# averaged (160 val images: one image is 0.625 points, so single runs are noisy).
#
#   bash tools/misc/run_distill_demo.sh
#   SEEDS=0 bash tools/misc/run_distill_demo.sh     # one seed (about a third of the time)
#
# Environment: PYTHON (python), WORK (work_dirs/demo_distill), SEEDS ("0 1 2"), JOBS (2:
# the two students of a seed at once, one thread each; 1: one after the other),
# OMP_NUM_THREADS (1 per run: one thread per process is much faster than two when
# processes share two cores).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON=${PYTHON:-python}
WORK=${WORK:-work_dirs/demo_distill}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
TEACHER_CFG=configs/demo/groupmamba-demo_distill-teacher_shapes.py
DISTILL_CFG=configs/demo/groupmamba-demo_distill_shapes.py
NONE_CFG=configs/demo/groupmamba-demo_distill-none_shapes.py

START=$(date +%s)
"$PYTHON" tools/misc/generate_demo_data.py cls
rm -rf "$WORK"
mkdir -p "$WORK"

echo "== teacher ($(date +%T))"
"$PYTHON" tools/train.py $TEACHER_CFG --work-dir "$WORK/teacher" > "$WORK/teacher.log" 2>&1 \
    || { echo "teacher failed, see $WORK/teacher.log"; exit 1; }
TEACHER_CKPT=$(cat "$WORK/teacher/last_checkpoint")
echo "teacher checkpoint: $TEACHER_CKPT ($(( $(date +%s) - START )) s)"

train() {  # $1: run name, $2: config, $3...: --cfg-options
    local name=$1 cfg=$2
    shift 2
    "$PYTHON" tools/train.py "$cfg" --work-dir "$WORK/$name" --cfg-options "$@" \
        > "$WORK/$name.log" 2>&1 || { echo "$name failed, see $WORK/$name.log"; return 1; }
}

RUNS="teacher:$TEACHER_CFG"
for seed in $SEEDS; do
    echo "== students, seed $seed ($(date +%T))"
    if [ "$JOBS" -gt 1 ]; then
        train distill_s$seed $DISTILL_CFG randomness.seed=$seed \
            model.teacher_checkpoint="$TEACHER_CKPT" & PID=$!
        train none_s$seed $NONE_CFG randomness.seed=$seed
        wait $PID
    else
        train distill_s$seed $DISTILL_CFG randomness.seed=$seed \
            model.teacher_checkpoint="$TEACHER_CKPT"
        train none_s$seed $NONE_CFG randomness.seed=$seed
    fi
    RUNS="$RUNS distill_s$seed:$DISTILL_CFG none_s$seed:$NONE_CFG"
done
echo "students done ($(( $(date +%s) - START )) s)"

echo "== re-evaluation with tools/test.py ($(date +%T))"
for run in $RUNS; do
    name=${run%%:*}
    "$PYTHON" tools/test.py "${run#*:}" "$(cat "$WORK/$name/last_checkpoint")" \
        --work-dir "$WORK/$name/test" > "$WORK/$name.test.log" 2>&1 \
        || { echo "re-evaluation of $name failed, see $WORK/$name.test.log"; exit 1; }
done
WALL=$(( $(date +%s) - START ))

"$PYTHON" - "$WORK" "$WALL" $SEEDS <<'EOF'
import re, statistics, sys
work, wall, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def top1(path, tag):
    values = re.findall(rf'Epoch\({tag}\).*?accuracy/top1: ([0-9.]+)', open(path).read())
    return float(values[-1]) if values else float('nan')

def row(label, name):
    val, test = top1(f'{work}/{name}.log', 'val'), top1(f'{work}/{name}.test.log', 'test')
    print(f'{label:<40}{val:>12.2f}{test:>15.2f}' + ('' if val == test else '  MISMATCH'))
    return test

print(f'{"model":<40}{"val top-1":>12}{"tools/test.py":>15}')
row('teacher (ResNet-18, 1/4 width)', 'teacher')
res = {'distill': [], 'none': []}
for s in seeds:
    res['distill'].append(row(f'student + distillation, seed {s}', f'distill_s{s}'))
    res['none'].append(row(f'student, no teacher, seed {s}', f'none_s{s}'))
d, n = statistics.mean(res['distill']), statistics.mean(res['none'])
print(f'mean over {len(seeds)} seed(s): with distillation {d:.2f}, without {n:.2f} '
      f'({d - n:+.2f} points); wall time {wall} s ({wall / 60:.1f} min)')
EOF
