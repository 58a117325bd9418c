#!/usr/bin/env bash
# Installs the framework into a temporary prefix, builds examples/external_job against it with
# find_package(dataflow), and submits the result to a supervisor like any other job (label unit).
set -euo pipefail
BUILD=${1:?build folder}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill -TERM "$sup" 2>/dev/null || true; wait "$sup" 2>/dev/null || true; rm -rf "$work"' EXIT
cmake --install "$BUILD" --prefix "$work/prefix" > /dev/null
cmake -S "$ROOT/examples/external_job" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log" \
  || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }
export DATAFLOW_HOME=$work/home
"$work/prefix/bin/dataflow" supervise > "$work/supervisor.log" 2>&1 &
sup=$!
for _ in $(seq 1 50); do [[ -S "$DATAFLOW_HOME/supervisor.sock" ]] && break; sleep 0.1; done
"$work/prefix/bin/dataflow" submit "$work/build/word_lengths"
for _ in $(seq 1 100); do
  "$work/prefix/bin/dataflow" list | grep -Eq "^word_lengths +finished" && break
  sleep 0.1
done
"$work/prefix/bin/dataflow" list
grep -q "batch 0: 3 words, 17 letters" <<< "$("$work/prefix/bin/dataflow" logs word_lengths)" || { echo "FAIL: job output"; exit 1; }
echo "external job: ok"
