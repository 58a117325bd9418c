#!/usr/bin/env bash
# ctest fixture for the `postgres` tests: a real PostgreSQL 15 (initdb on a free port) under this
# build's folder, or the one named by PG_URL. Writes the URL to $DATAFLOW_PG_URL_FILE.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
case "$1" in
  up)
    if [[ -n "${PG_URL:-}" ]]; then echo "$PG_URL" > "$DATAFLOW_PG_URL_FILE"; exit 0; fi
    "$ROOT/scripts/stack" up --only=postgres
    eval "$("$ROOT/scripts/stack" env)"
    echo "$PG_URL" > "$DATAFLOW_PG_URL_FILE"
    ;;
  down)
    if [[ -z "${PG_URL:-}" ]]; then "$ROOT/scripts/stack" down; fi
    rm -f "$DATAFLOW_PG_URL_FILE"
    ;;
esac
