#!/usr/bin/env bash
# Installs Debian's Chromium (headless dashboard tests) when it is missing. Exits non-zero if it cannot.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: chromium is missing and apt-get is not available; install Chromium to run the dashboard tests" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
{ $SUDO apt-get install -y -qq chromium || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; }; } >/dev/null
command -v chromium >/dev/null
