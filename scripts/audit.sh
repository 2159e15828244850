#!/usr/bin/env bash
# Audits the locked dependencies (requirements.lock) and the installed venv for known vulnerabilities
# with pip-audit. Exit status: 0 = nothing known, 1 = known vulnerabilities, 2 = the audit could not be
# completed (no vulnerability database reachable, or a package it could not look up). A package it cannot
# check is never reported as clean: pip-audit runs with --strict.
#
#   AUDIT_SERVICE=osv bash scripts/audit.sh    # the OSV database instead of PyPI's (default: pypi)
#
# torch is installed outside the lock (a local CPU wheel, see scripts/install.sh), so it is audited
# from the venv, as is draftgate's own environment.
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
SERVICE=${AUDIT_SERVICE:-pypi}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

audit() {  # audit LABEL ARGS...: runs pip-audit, keeps its report, returns its status
  local label=$1
  shift
  echo "== pip-audit ($label, $SERVICE)"
  pip-audit --strict --progress-spinner off --vulnerability-service "$SERVICE" "$@" 2>&1 | tee -a "$out"
  return "${PIPESTATUS[0]}"
}

status=0
audit "requirements.lock" -r requirements.lock --require-hashes --disable-pip || status=1
torch_version=$(python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ -n "$torch_version" ]; then
  audit "torch from the venv" -r <(echo "torch==$torch_version") --no-deps --disable-pip || status=1
fi

if [ "$status" -ne 0 ]; then
  if grep -qE "could not be audited|Failed to resolve|ConnectionError|Max retries exceeded|HTTPError" "$out" \
     && ! grep -qE "^Found [0-9]+ known vulnerabilit" "$out"; then
    echo "audit INCOMPLETE: the vulnerability database ($SERVICE) could not be reached or could not answer" \
         "for every package; nothing was found, but nothing was proven either" >&2
    exit 2
  fi
  echo "audit FAILED: known vulnerabilities (see above)" >&2
  exit 1
fi
echo "audit OK: no known vulnerabilities in the locked dependencies"
