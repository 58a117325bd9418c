#!/usr/bin/env bash
# Builds the parser's libFuzzer target with clang (ASan + UBSan + libFuzzer) and runs it briefly
# on a corpus seeded with the captured Debezium events (label unit). Fails on any crash, leak or
# sanitizer report.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?output folder}
SECONDS_TO_RUN=${FUZZ_SECONDS:-30}
mkdir -p "$OUT/corpus"
clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$ROOT/dataflow/include" -I"$ROOT/connectors/debezium/include" \
  "$ROOT/tests/fuzz/change_event_fuzzer.cc" "$ROOT/connectors/debezium/src/change_event.cc" \
  -lboost_json -o "$OUT/change_event_fuzzer"
i=0
for f in "$ROOT"/tests/data/debezium/*.jsonl; do
  while IFS= read -r line; do
    /usr/bin/python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get("payload"); sys.stdout.write(v or "")' "$line" > "$OUT/corpus/seed-$i"
    i=$((i + 1))
  done < "$f"
done
"$OUT/change_event_fuzzer" "$OUT/corpus" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=1024 \
  -artifact_prefix="$OUT/" 2>&1 | tail -n 5
echo "fuzzer: no crash, leak or sanitizer report in ${SECONDS_TO_RUN} s"
