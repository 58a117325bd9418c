#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), builds, and runs every ctest suite
# (labels: unit, kafka, postgres, stack, e2e). On a fresh Debian bookworm machine this is all it takes.
#
#   scripts/test.sh                  release build, all tests
#   PRESET=asan scripts/test.sh      sanitizer build
#   scripts/test.sh -L unit          extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."

preset="${PRESET:-release}"
scripts/install-deps.sh --all

cmake --preset "$preset" >/dev/null
cmake --build "build/$preset" -j "${JOBS:-2}"
# ctest prints the summary line ("100% tests passed, 0 tests failed out of N") and per-label times.
ctest --test-dir "build/$preset" --output-on-failure -j "${JOBS:-2}" --timeout 900 "$@"
