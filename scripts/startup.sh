#!/usr/bin/env bash
# The original's startup.sh, without Docker: starts the stack, waits for health, registers the
# Debezium connector, verifies it, and starts both CDC jobs in the background. Returns when all of
# that is up. (scripts/run-pipeline does the same and then runs the simulator with a live view;
# docker/startup.sh is the Docker Compose version.)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/install-deps.sh --all
cmake --preset release > /dev/null
cmake --build build/release -j "${JOBS:-2}" --target stream_customers stream_orders simulate_writes
scripts/stack up
scripts/stack status
scripts/jobs start
echo "Simulate writes: scripts/run_simulate.sh [--sleep-ms 200 --insert-p 0.7 --update-p 0.25 --delete-p 0.05]"
echo "Progress:        scripts/jobs status      Verify: scripts/verify-warehouse"
