#!/usr/bin/env bash
# Sets up .venv with the pinned stack and fetches the embedded MovieLens-100K data.
# Idempotent: reinstalls only when this script or pyproject.toml changed.
#   EMBSTACK_CUDA=1 scripts/setup.sh   → CUDA variant (fbgemm-gpu==1.8.0 + CUDA torch 2.13)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip"
stamp=.venv/.embstack-deps
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing the pinned stack into .venv"
  $PIP install -q --upgrade pip
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  $PIP install -q torch==2.13.0
  if [ "${EMBSTACK_CUDA:-0}" = "1" ]; then $PIP install -q fbgemm-gpu==1.8.0; else $PIP install -q fbgemm-gpu-cpu==1.8.0; fi
  # torchrec declares the CUDA fbgemm-gpu as a dependency: install it alone, then its real needs.
  $PIP install -q --no-deps torchrec==1.8.0
  $PIP install -q tensordict==0.15.3 torchmetrics==1.0.3 tqdm==4.70.1 pyre-extensions==0.0.32
  $PIP install -q -e ".[dev,plots]"
  echo "$want" > "$stamp"
fi
wheel=data/downloads/recbole-1.2.1-py3-none-any.whl
if [ ! -f "$wheel" ]; then
  echo "setup: downloading the recbole 1.2.1 wheel (MovieLens-100K ships inside it)"
  $PIP download -q --no-deps recbole==1.2.1 -d data/downloads
fi
