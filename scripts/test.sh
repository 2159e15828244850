#!/usr/bin/env bash
# Installs everything and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
if [ -z "${DRAFTGATE_TEST_POSTGRES_URL:-}" ] && [ "${DRAFTGATE_START_POSTGRES:-${CI:-}}" != "" ]; then
  eval "$(bash scripts/postgres.sh)"
fi
exec python -m pytest -q -ra "$@"
