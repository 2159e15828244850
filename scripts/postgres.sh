#!/usr/bin/env bash
# Installs (Debian) and starts a throwaway PostgreSQL on 127.0.0.1 for the test suite; prints the
# `export DRAFTGATE_TEST_POSTGRES_URL=...` line to eval. Prints nothing if it cannot (tests then skip).
set -uo pipefail
PORT=${DRAFTGATE_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
DIR=${DRAFTGATE_PG_DIR:-/tmp/draftgate-pg}
{
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) || exit 0
  fi
  BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
  id postgres >/dev/null 2>&1 || exit 0
  if [ -f "$DIR/data/postmaster.pid" ]; then  # a server from an earlier run: stop it first
    su postgres -c "$BIN/pg_ctl -D $DIR/data -m immediate stop" >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR" && mkdir -p "$DIR" && chown postgres "$DIR"
  su postgres -c "$BIN/initdb -D $DIR/data -A trust -U postgres" >/dev/null || exit 0
  su postgres -c "$BIN/pg_ctl -D $DIR/data -o '-h 127.0.0.1 -p $PORT -k $DIR' -l $DIR/log -w start" >/dev/null || exit 0
  su postgres -c "$BIN/createdb -h 127.0.0.1 -p $PORT draftgate_test" || exit 0
} 1>&2
echo "export DRAFTGATE_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/draftgate_test"
