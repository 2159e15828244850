#!/usr/bin/env bash
# Creates .venv and installs draftgate with its test extras from requirements.lock: every package
# pinned and checked against its sha256 (pip --require-hashes), then draftgate itself with --no-deps.
# torch 2.13.0 goes first and outside the lock: the CPU wheel is a local build (2.13.0+cpu) whose hash
# PyPI does not publish, and an open range would pull a multi-GB CUDA build on CPU machines (GPU users
# may install their own torch first). Its dependencies (sympy, networkx, ...) come hashed from the lock.
# Regenerate the lock with scripts/lock.sh after changing dependencies in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet --no-deps "torch==2.13.0"
fi
python -m pip install --quiet --require-hashes -r requirements.lock
python -m pip install --quiet --no-deps --no-build-isolation -e .
python -m pip check
