#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite:
#   bash tools/run_tests.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(bash tools/setup_env.sh | tail -n 1)"
exec "$PY" -m pytest tests -q -p no:cacheprovider "$@"
