#!/usr/bin/env bash
# Installs everything and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/chromium.sh  # the dashboard is tested in a real headless Chromium
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
if [ -z "${DRAFTGATE_TEST_POSTGRES_URL:-}" ] && [ "${DRAFTGATE_START_POSTGRES:-${CI:-}}" != "" ]; then
  eval "$(bash scripts/postgres.sh)"
  if [ -z "${DRAFTGATE_TEST_POSTGRES_URL:-}" ]; then
    echo "error: CI runs the ledger tests on PostgreSQL too, and scripts/postgres.sh could not start one" >&2
    exit 1
  fi
fi
# Lint and types first: cheap, and a finding fails the run like a failing test.
ruff check .
mypy gateway router policies ledger local_engine
# Known vulnerabilities (1) or an audit that got no answer from any source (2) fail the run. Without a
# live vulnerability service (this CI's network has none) the committed advisory snapshot answers.
bash scripts/audit.sh || exit $?
# Three workers on two cores: the suite mostly waits on servers, subprocesses and timeouts (pytest-xdist;
# DRAFTGATE_TEST_WORKERS=0 runs it in one process, for debugging).
exec python -m pytest -q -ra -n "${DRAFTGATE_TEST_WORKERS:-3}" "$@"
