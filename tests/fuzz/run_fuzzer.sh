#!/usr/bin/env bash
# Builds a libFuzzer target with clang (ASan + UBSan + libFuzzer) and runs it briefly on a seeded
# corpus (label unit). Fails on any crash, leak or sanitizer report.
#   run_fuzzer.sh OUT change_event   the Debezium parser, seeded with the captured events
#   run_fuzzer.sh OUT pgoutput       the pgoutput decoder and its events, seeded by pgoutput_seeds.py
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?output folder}
TARGET=${2:-change_event}
SECONDS_TO_RUN=${FUZZ_SECONDS:-30}
CORPUS=$OUT/$TARGET-corpus
mkdir -p "$CORPUS"
flags=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$ROOT/dataflow/include")
case "$TARGET" in
  change_event)
    clang++-14 "${flags[@]}" -I"$ROOT/connectors/debezium/include" \
      "$ROOT/tests/fuzz/change_event_fuzzer.cc" "$ROOT/connectors/debezium/src/change_event.cc" \
      -lboost_json -o "$OUT/change_event_fuzzer"
    i=0
    for f in "$ROOT"/tests/data/debezium/*.jsonl; do
      while IFS= read -r line; do
        /usr/bin/python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get("payload"); sys.stdout.write(v or "")' "$line" > "$CORPUS/seed-$i"
        i=$((i + 1))
      done < "$f"
    done
    ;;
  pgoutput)
    clang++-14 "${flags[@]}" -I"$ROOT/connectors/postgres/include" -I"$ROOT/connectors/postgres/src" \
      -I"$ROOT/connectors/debezium/include" \
      "$ROOT/tests/fuzz/pgoutput_fuzzer.cc" "$ROOT/connectors/postgres/src/pgoutput.cc" \
      "$ROOT/connectors/postgres/src/debezium_json.cc" "$ROOT/connectors/debezium/src/change_event.cc" \
      -lboost_json -o "$OUT/pgoutput_fuzzer"
    /usr/bin/python3 "$ROOT/tests/fuzz/pgoutput_seeds.py" "$CORPUS"
    cp "$ROOT"/tests/fuzz/pgoutput-regressions/* "$CORPUS"/  # inputs that once crashed it
    ;;
  *) echo "run_fuzzer.sh: unknown target '$TARGET' (change_event or pgoutput)" >&2; exit 2 ;;
esac
"$OUT/${TARGET}_fuzzer" "$CORPUS" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=1024 \
  -artifact_prefix="$OUT/$TARGET-" 2>&1 | tail -n 5
echo "fuzzer $TARGET: no crash, leak or sanitizer report in ${SECONDS_TO_RUN} s"
