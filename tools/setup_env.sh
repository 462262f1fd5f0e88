#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything it needs.
#
#   bash tools/setup_env.sh            # venv in ./.venv
#   VENV=/path/to/venv bash tools/setup_env.sh
#
# Idempotent: a stamp file records the hash of the requirement files, so a second run
# with nothing changed returns in seconds. Prints the venv's python path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"
# mmpretrain 1.2.0 imports torchvision (its transforms) unconditionally, and PyPI's
# torchvision only loads beside PyPI's own (CUDA) torch build: with the CPU-only torch
# 2.13.0 wheel `import torchvision` fails ("operator torchvision::nms does not exist").
# torch 2.14.1 + torchvision 0.29.1 is the newest pair both available here and working
# on CPU and GPU; its headers need C++20, which mmcv 2.1.0 does not ask for (see below).
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# mmdet 3.3.0 / mmseg 1.2.2 assert mmcv < 2.2.0, so the pin is exact.
MMCV_VERSION=2.1.0
# Our own cache of mmcv wheels, keyed by the torch they were compiled against (pip's cache
# does not know that an mmcv wheel only works with the torch it was built for).
MMCV_CACHE="${MMCV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmgroupmamba/wheels}"

stamp_src() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/tools/setup_env.sh"
  echo "$TORCH_SPEC mmcv==$MMCV_VERSION"
}
STAMP="$VENV/.mmgroupmamba-setup"
HASH="$(stamp_src | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && "$VENV/bin/python" -c "import mmcv.ops, mmgroupmamba" 2>/dev/null; then
  echo "[setup] environment up to date: $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi

log() { echo "[setup] $*" >&2; }
[[ -x "$VENV/bin/python" ]] || { log "creating venv $VENV"; "$PY_BOOT" -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# setuptools<81 must be present *before* mmcv builds: its setup.py imports pkg_resources.
"${PIP[@]}" "setuptools<81" wheel packaging
# torch first: mmcv is compiled against the torch that is installed (and must match it at
# run time). torch declares an unbounded setuptools requirement; install both together so the pin holds.
"$PY" -c "import torch, torchvision" 2>/dev/null || {
  log "installing $TORCH_SPEC"; "${PIP[@]}" $TORCH_SPEC "setuptools<81"; }

build_mmcv() {
  # mmcv 2.1.0 from its source archive, with ops, against the installed torch.
  local out="$1" src
  src="$(mktemp -d)"
  # --no-build-isolation: an isolated build has no torch and silently skips the ops.
  "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation \
      -d "$src" "mmcv==$MMCV_VERSION"
  tar xzf "$src"/mmcv-$MMCV_VERSION.tar.gz -C "$src"
  # mmcv hard-codes -std=c++17; torch >= 2.13 headers are C++20 (2.14 #errors below it).
  sed -i 's/-std=c++17/-std=c++20/g' "$src/mmcv-$MMCV_VERSION/setup.py"
  (cd "$src/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$out" .)
  rm -rf "$src"
}

MMCV_WHEEL=()
if ! "$PY" -c "import mmcv.ops" 2>/dev/null; then
  TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
  WHEEL_DIR="$MMCV_CACHE/mmcv-$MMCV_VERSION-torch$TORCH_VERSION"
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION with ops for torch $TORCH_VERSION (about 20 minutes on 2 cores, once; cached in $WHEEL_DIR)"
    rm -rf "$WHEEL_DIR.tmp"
    mkdir -p "$WHEEL_DIR.tmp" && build_mmcv "$WHEEL_DIR.tmp" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  fi
  MMCV_WHEEL=("$WHEEL_DIR"/mmcv-*.whl)
  # Replace whatever mmcv is there (a broken or foreign build) without touching torch.
  "${PIP[@]}" --no-deps --force-reinstall "${MMCV_WHEEL[@]}"
fi

# The wheel is named again here so that pip installs mmcv's own run-time dependencies
# (opencv-python, addict, yapf, ...) alongside the pins: `import mmcv` needs cv2.
log "installing pinned OpenMMLab packages, test and optional requirements"
"${PIP[@]}" "${MMCV_WHEEL[@]}" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" \
  -r "$ROOT/requirements/optional.txt"
"${PIP[@]}" --no-deps -r "$ROOT/requirements/mim.txt"
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
"$PY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, mmgroupmamba" >&2 \
  || { log "the environment does not import (see the error above)"; exit 1; }
echo "$HASH" > "$STAMP"
log "ready: $VENV"
echo "$PY"
