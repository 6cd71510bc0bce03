#!/usr/bin/env bash
# The test command: set up, lint, check generated stubs, type-check, then the default (not slow) test suite.
# Pass extra pytest arguments through, e.g. `scripts/test.sh -m slow` for the slow target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
