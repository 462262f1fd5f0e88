#!/usr/bin/env bash
# tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args, e.g. --tta]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (same on every node).
set -e
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# PYTHON: the interpreter holding torch (python, else python3).
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

PYTHONPATH="$ROOT":$PYTHONPATH \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$ROOT/tools/test.py" \
    $CONFIG \
    $CHECKPOINT \
    --launcher pytorch "${@:4}"
