#!/usr/bin/env bash
# One-time (and idempotent) set-up: a virtual environment in .venv with torch pinned to the
# CPU build on this machine's disk *before* the project, so pip never resolves a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.auditor-sandbox-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[server,dev]"
  touch "$stamp"
fi
