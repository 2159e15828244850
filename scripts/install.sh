#!/usr/bin/env bash
# Creates .venv and installs draftgate with its test extras. torch 2.13.0 goes first: an open
# range would pull a multi-GB CUDA build on CPU machines (GPU users may install their own torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade "pip>=24,<27"
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[test]"
