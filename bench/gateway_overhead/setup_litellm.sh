#!/usr/bin/env bash
# Builds the LiteLLM proxy's own virtualenv for bench/gateway_overhead (never draftgate's .venv).
#
# litellm==1.109.1 is draftgate's pinned version. `litellm[proxy]==1.109.1` pins
# litellm-proxy-extras and litellm-enterprise at versions PyPI does not carry, so when that fails
# this installs litellm==1.109.1 and then the proxy's own requirements by name (what its
# `litellm --config` start-up imports), with the same bounds litellm's metadata gives them.
#
#   bash bench/gateway_overhead/setup_litellm.sh [VENV_DIR]     (default /tmp/litellm-proxy-venv)
set -euo pipefail
VENV=${1:-/tmp/litellm-proxy-venv}
PY=${PYTHON:-python3}
LITELLM_VERSION=1.109.1

if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm.proxy.proxy_server" 2>/dev/null; then
  echo "litellm proxy venv ready: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24,<27"
if "$VENV/bin/python" -m pip install --quiet "litellm[proxy]==$LITELLM_VERSION"; then
  echo "installed litellm[proxy]==$LITELLM_VERSION"
else
  echo "litellm[proxy]==$LITELLM_VERSION is not installable from this index; installing its proxy requirements one by one"
  "$VENV/bin/python" -m pip install --quiet "litellm==$LITELLM_VERSION"
  # The proxy requirements from litellm's metadata (extra == 'proxy') that its start-up imports,
  # minus litellm-proxy-extras / litellm-enterprise (not on PyPI at the pinned versions).
  "$VENV/bin/python" -m pip install --quiet \
    "gunicorn>=23.0.0,<24" "uvicorn>=0.33.0,<1" "uvloop>=0.22.1,<1" "httptools>=0.6,<1" \
    "fastapi>=0.136.3,<1" "starlette>=1.0.1,<2" "backoff>=2.2.1,<3" "pyyaml>=6.0.3,<7" "rq>=2.7.0,<3" \
    "orjson>=3.11.6,<4" "apscheduler>=3.11.2,<4" "fastapi-sso>=0.19.0,<1" "pyjwt>=2.13.0,<3" \
    "python-multipart>=0.0.27,<1" "cryptography>=49.0.0,<51" "pynacl>=1.6.2,<2" "websockets>=15.0.1,<16" \
    "boto3>=1.43.117,<2" "email-validator>=2,<3" "rich>=13.9.4,<14" "backports-zstd>=1.0.0,<2" \
    "mcp>=1.10,<3" "polars>=1.38.1,<2" "tomlkit>=0.13.3,<1" "restrictedpython>=8.5,<9" \
    "expression>=5.6.0,<6" "soundfile>=0.12.1,<1"
fi
"$VENV/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null
echo "litellm proxy venv ready: $VENV ($("$VENV/bin/python" -m pip show litellm | grep ^Version))"
