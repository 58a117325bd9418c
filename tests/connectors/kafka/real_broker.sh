#!/usr/bin/env bash
# Runs the RealBroker tests of kafka_tests against the local stack's broker (ctest fixture).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
eval "$("$ROOT/scripts/stack" env)"
export DATAFLOW_REAL_KAFKA=$KAFKA_BOOTSTRAP
exec "$1" --gtest_filter='RealBroker*'
