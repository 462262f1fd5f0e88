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
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
# mmdet 3.3.0 / mmseg 1.2.2 assert mmcv < 2.2.0, so the pin is exact.
MMCV_SPEC="mmcv==2.1.0"

stamp_src() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/tools/setup_env.sh"
  echo "$TORCH_SPEC $MMCV_SPEC"
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
# run time). 2.13.0 is the newest whose headers still accept mmcv's hard-coded -std=c++17.
# torch declares an unbounded setuptools requirement; install both together so the pin holds.
"$PY" -c "import torch" 2>/dev/null || { log "installing $TORCH_SPEC"; "${PIP[@]}" "$TORCH_SPEC" "setuptools<81"; }

if ! "$PY" -c "import mmcv.ops" 2>/dev/null; then
  log "building $MMCV_SPEC with ops (about 15 minutes on 2 cores the first time; pip caches the wheel)"
  # --no-build-isolation: an isolated build has no torch and silently skips the ops.
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" --no-build-isolation "$MMCV_SPEC"
  "$PY" -c "import mmcv.ops" || { log "mmcv.ops failed to import after the build"; exit 1; }
fi

log "installing pinned OpenMMLab packages and test requirements"
"${PIP[@]}" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
"$PY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, mmgroupmamba" >&2
echo "$HASH" > "$STAMP"
log "ready: $VENV"
echo "$PY"
