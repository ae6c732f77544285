#!/usr/bin/env bash
# One command from a fresh clone: install everything (with the test extras) and run the test suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests
exec .venv/bin/python -m pytest -q "$@"
