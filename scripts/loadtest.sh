#!/usr/bin/env bash
# The serving load test on a 2-core machine: builds the DeepFM-sized 2-cluster
# bundle, runs the server on core 0 and the load generator on core 1 (taskset), sweeps the
# open-loop rate at 100 rows/request with micro-batching on and off (interleaved) for the
# most rows/s with p99 < 25 ms, measures p50/p99 at half that rate, then offers twice that
# rate: goodput against capacity, accepted p50/p99, refusals by code (client) and by code
# and reason (scraped from the server's /metrics during the run). One JSON + a table.
#   scripts/loadtest.sh                                    # full run, ~12-15 min, machine otherwise idle
#   scripts/loadtest.sh --duration 4 --warmup 1 --refine 1 --out runs/loadtest/smoke.json
#   scripts/loadtest.sh --baseline ../older-checkout       # its server too, interleaved (before vs after)
# Every option: scripts/loadtest.sh --help (see scripts/loadtest_sweep.py).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "loadtest: taskset not found (util-linux)" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "loadtest: $PY not found; run scripts/setup.sh first" >&2; exit 2; }
exec "$PY" scripts/loadtest_sweep.py --python "$PY" "$@"
