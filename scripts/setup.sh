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
  .venv/bin/python -m pip install --quiet -e ".[server,milvus,dev]"
  touch "$stamp"
fi
# Chromium from Debian's packages for the browser test of the HTML report
# (tests/integration/test_report_browser.py drives it with playwright, which never downloads a
# browser of its own). Installed only when missing, and only where this script can: as root
# with apt-get; elsewhere it says so and that test is skipped.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the report browser test" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          chromium >/dev/null; }; then
      echo "setup: WARNING: could not install chromium; the report browser test will be" \
        "skipped (and fail under CI)" >&2
    fi
  else
    echo "setup: WARNING: /usr/bin/chromium is missing and cannot be installed here (needs" \
      "root and apt-get); the report browser test will be skipped (and fail under CI)" >&2
  fi
fi
