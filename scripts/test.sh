#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), builds, and runs every ctest suite
# (labels: unit, kafka, postgres, stack, e2e, firstrun, docker). On a fresh Debian bookworm machine this is
# all it takes.
#
#   scripts/test.sh                  release build, all tests
#   PRESET=asan scripts/test.sh      sanitizer build
#   scripts/test.sh -L unit          extra arguments go to ctest
#
# A failed set-up step (packages, configure, build) ends with the step, the cause and its log.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/steps.sh

preset="${PRESET:-release}"
logs=.state/logs
run_step "[test.sh]" "installing packages (scripts/install-deps.sh --all)" "$logs/install-deps.log" \
  scripts/install-deps.sh --all
STEP_QUIET=1 run_step "[test.sh]" "configuring (cmake --preset $preset)" "$logs/configure-$preset.log" \
  cmake --preset "$preset"
run_step "[test.sh]" "building (cmake --build build/$preset)" "$logs/build-$preset.log" \
  cmake --build "build/$preset" -j "${JOBS:-2}"
# ctest prints the summary line ("100% tests passed, 0 tests failed out of N") and per-label times.
ctest --test-dir "build/$preset" --output-on-failure -j "${JOBS:-2}" --timeout 900 "$@"
