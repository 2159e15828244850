#!/usr/bin/env bash
# Audits the locked dependencies (requirements.lock) and torch (installed outside the lock, see
# scripts/install.sh) for known vulnerabilities. Two sources, both always run:
#   1. pip-audit --strict against a live service (PyPI's JSON API by default; AUDIT_SERVICE=osv for OSV).
#      A package it cannot check is never reported as clean.
#   2. scripts/offline_audit.py against the committed PyPA advisory database snapshot
#      (security/pypa-advisories.json.gz; the same PYSEC advisories pip-audit's PyPI service serves).
#      It knows only advisories published before the snapshot's date; it prints that date.
# Exit status: 0 = nothing known to either source, 1 = known vulnerabilities (from either),
# 2 = neither source could give an answer. When only the snapshot answered, it says so loudly.
#
#   AUDIT_SERVICE=osv bash scripts/audit.sh
#   AUDIT_LOCK=other.lock bash scripts/audit.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
SERVICE=${AUDIT_SERVICE:-pypi}
LOCK=${AUDIT_LOCK:-requirements.lock}  # the tests point it at a deliberately vulnerable lock
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
audit "$LOCK" -r "$LOCK" --require-hashes --disable-pip || status=1
torch_version=$(python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ -n "$torch_version" ]; then
  audit "torch from the venv" -r <(echo "torch==$torch_version") --no-deps --disable-pip || status=1
fi

echo "== offline audit (PyPA advisory database snapshot)"
python scripts/offline_audit.py check -r "$LOCK" ${torch_version:+--pin "torch==$torch_version"}
offline=$?

live_incomplete=0
if [ "$status" -ne 0 ] && grep -qE "could not be audited|Failed to resolve|ConnectionError|Max retries exceeded|HTTPError" "$out" \
   && ! grep -qE "^Found [0-9]+ known vulnerabilit" "$out"; then
  live_incomplete=1
fi
if [ "$offline" -eq 1 ] || { [ "$status" -ne 0 ] && [ "$live_incomplete" -eq 0 ]; }; then
  echo "audit FAILED: known vulnerabilities (see above)" >&2
  exit 1
fi
if [ "$live_incomplete" -eq 1 ]; then
  if [ "$offline" -ne 0 ]; then
    echo "audit INCOMPLETE: no live vulnerability database ($SERVICE) and no readable snapshot" >&2
    exit 2
  fi
  echo "audit OK against the snapshot only: the live database ($SERVICE) could not be reached, so advisories" \
       "published after the snapshot's date were not checked" >&2
  exit 0
fi
echo "audit OK: no known vulnerabilities in the locked dependencies (live $SERVICE and the snapshot)"
