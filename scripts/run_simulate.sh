#!/usr/bin/env bash
# Runs the write simulator against the local stack (the original's run_simulate.sh). Same flags:
#   scripts/run_simulate.sh --sleep-ms 200 --insert-p 0.7 --update-p 0.25 --delete-p 0.05
# plus --ops N, --seed S, --rate OPS_PER_S, --batch N, --verbose (see --help).
# Uses PGHOST/PGPORT/... when set, else the stack's (scripts/stack env).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${DATAFLOW_BUILD_DIR:-$ROOT/build/release}
if [[ ! -x "$BUILD/jobs/simulate_writes" ]]; then
  "$ROOT/scripts/install-deps.sh" >&2
  cmake --preset release >/dev/null && cmake --build "$ROOT/build/release" -j2 --target simulate_writes >&2
  BUILD=$ROOT/build/release
fi
if [[ -z "${PGHOST:-}" ]]; then eval "$("$ROOT/scripts/stack" env)"; fi
exec "$BUILD/jobs/simulate_writes" "$@"
