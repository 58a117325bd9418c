#!/usr/bin/env bash
# ctest `chaos.campaign` (label chaos): a stack of its own (so the faults touch nothing another test
# uses), the seeded fault campaign of tests/chaos/chaos.py over it, then the stack down again.
#   CHAOS_SEED (default 1), CHAOS_DURATION (seconds of faults, default 150) and CHAOS_ARGS (more
#   chaos.py flags) change the schedule; the report is written to $DATAFLOW_BUILD_DIR/chaos-report.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${DATAFLOW_BUILD_DIR:?}
export DATAFLOW_STATE_DIR=${DATAFLOW_STATE_DIR:-$BUILD/chaos-stack}
export DATAFLOW_BUILD_DIR=$BUILD
down() {
  local rc=$?
  if ((rc != 0)); then
    for log in "$DATAFLOW_STATE_DIR"/chaos/home/logs/*.log "$DATAFLOW_STATE_DIR"/chaos/supervisor.log; do
      [[ -f "$log" ]] && { echo "--- $log (last lines)"; tail -n 15 "$log"; }
    done
    "$ROOT/scripts/stack" status || true
  fi
  "$ROOT/scripts/stack" down > /dev/null 2>&1 || true
  exit $rc
}
trap down EXIT
"$ROOT/scripts/stack" up
# shellcheck disable=SC2086  # CHAOS_ARGS is a list of flags
python3 "$ROOT/tests/chaos/chaos.py" --seed "${CHAOS_SEED:-1}" --duration "${CHAOS_DURATION:-150}" \
  --report "$BUILD/chaos-report.json" ${CHAOS_ARGS:-}
