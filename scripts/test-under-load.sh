#!/usr/bin/env bash
# Run the test suite while every core is also kept busy by a CPU-bound process, to show that no test depends on the
# machine's speed (issue 19). Arguments go to pytest.
#
#   bash scripts/test-under-load.sh            # the whole suite under load
#   bash scripts/test-under-load.sh -m unit    # a part of it
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
cores=$(nproc)
pids=()
for _ in $(seq "$cores"); do
    "$PY" -c "while True: pass" &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
echo "background load: $cores CPU-bound processes (one per core)"
start=$(date +%s)
status=0
"$PY" -m pytest -q -p no:cacheprovider "$@" || status=$?
echo "under load: pytest exit status $status after $(( $(date +%s) - start )) s"
exit "$status"
