#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py, whose docstring says what it measures), at most 8 minutes:
#   bash benchmarks/gpu_check.sh                               # one GPU machine -> benchmarks/RESULTS.md
#   bash benchmarks/gpu_check.sh --dry --out /tmp/RESULTS.md   # CPU, tiny sizes: tests the script in < 60 s
# Arguments go to gpu_check.py unchanged. Runs from the repository root with .venv/bin/python if present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
exec timeout --kill-after=15 480 "$PY" benchmarks/gpu_check.py "$@"
