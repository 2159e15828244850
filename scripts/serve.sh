#!/usr/bin/env bash
# Installs everything and runs the gateway on its embedded defaults (or pass --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
exec draftgate serve "$@"
