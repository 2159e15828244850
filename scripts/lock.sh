#!/usr/bin/env bash
# Regenerates requirements.lock (runtime + test dependencies, every file's sha256) from pyproject.toml
# and requirements-build.in with pip-compile. torch is resolved (pinned to the 2.13.0 CPU wheel that
# scripts/install.sh installs first) so its dependencies are locked, but left out of the lock itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
echo "torch==2.13.0" > "$constraint"
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" pip-compile --quiet --generate-hashes --extra test --unsafe-package torch --strip-extras \
  --no-emit-index-url --no-emit-find-links -c "$constraint" -o requirements.lock \
  pyproject.toml requirements-build.in
echo "requirements.lock: $(grep -c '^[a-zA-Z]' requirements.lock) pinned packages"
