#!/usr/bin/env bash
# One command from a fresh clone: install everything (with the test extras), lint (ruff), type-check (mypy) and run
# the test suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests examples benchmarks
.venv/bin/mypy  # config in pyproject.toml: [tool.mypy] (files = src/ffkit)
exec .venv/bin/python -m pytest -q "$@"
