# Shared by the end-to-end benchmarks (sourced): the benchmark stack (its own state folder), the
# release build of the given targets, and helpers. Sets ROOT, BUILD, OUT, WORK and the stack's
# environment (KAFKA_BOOTSTRAP, PG*).
#   source bench/e2e/lib.sh TARGET...
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export DATAFLOW_STATE_DIR=${BENCH_STATE_DIR:-$ROOT/build/bench-stack}
BUILD=$ROOT/build/release
OUT=$ROOT/bench/results
WORK=$DATAFLOW_STATE_DIR/bench
mkdir -p "$OUT" "$WORK"
cd "$ROOT"
cmake --preset release > /dev/null
cmake --build build/release -j2 --target "$@" > /dev/null
# The benchmark stops the stack it started when it ends (Kafka and Connect alone hold over 1 GB),
# unless BENCH_KEEP_STACK=1, or the stack was already running before (then it is left as found).
bench_stack_was_up=0
scripts/stack status > /dev/null 2>&1 && bench_stack_was_up=1
scripts/stack up > /dev/null
eval "$(scripts/stack env)"
bench_stop_stack() {
  if ((bench_stack_was_up)); then
    echo "bench: the benchmark stack was running before and is left up ($DATAFLOW_STATE_DIR); stop it: DATAFLOW_STATE_DIR=$DATAFLOW_STATE_DIR scripts/stack down" >&2
  elif [[ "${BENCH_KEEP_STACK:-0}" == 1 ]]; then
    echo "bench: BENCH_KEEP_STACK=1, the benchmark stack is left up; stop it: DATAFLOW_STATE_DIR=$DATAFLOW_STATE_DIR scripts/stack down" >&2
  else
    echo "bench: stopping the benchmark stack (BENCH_KEEP_STACK=1 keeps it)" >&2
    scripts/stack down > /dev/null 2>&1 || echo "bench: scripts/stack down failed; stop it: DATAFLOW_STATE_DIR=$DATAFLOW_STATE_DIR scripts/stack down" >&2
  fi
}
trap bench_stop_stack EXIT
export PGOPTIONS="-c client_min_messages=warning"
q() { psql -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
ms_now() { date +%s%3N; }
# Peak resident memory of a process so far, in MB.
vmhwm() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# peak_rss_until_exit PID: polls /proc until PID exits
# and prints its peak resident memory in MB.
peak_rss_until_exit() {
  local rss=0 r
  while kill -0 "$1" 2>/dev/null; do
    r=$(vmhwm "$1" 2>/dev/null || true)
    [[ "$r" =~ ^[0-9.]+$ ]] && rss=$r
    sleep 0.05
  done
  echo "$rss"
}

# generate_events N FILE [KEYS] [SHAPE]: N Debezium order events ("key<TAB>value" lines), made
# from a captured event with the order id, amount and LSN varied. KEYS (default N) distinct order
# ids: with fewer, event i changes order (i - 1) % KEYS + 1, so most events update a row written
# before (an update-heavy stream). SHAPE: plain (default, ~620 B; amount i % 100000 . i % 90 + 10)
# or schema (the converter's schemas on, ~3.8 KB; the amount is the captured event's: with
# schemas a decimal is base64 bytes).
generate_events() {
  local template
  template=$(jq -r '.payload' "tests/data/debezium/${4:-plain}-orders.jsonl" | sed -n 2p)
  T="$template" awk -v n="$1" -v keys="${3:-$1}" 'BEGIN {
    t = ENVIRON["T"];  # not -v: awk would process the backslash escapes of the JSON
    # Mark the varied fields once, then print the pieces: no regex per event.
    sub(/"after":\{"id":[0-9]+/, "\"after\":{\"id\":\001", t);
    varyAmount = sub(/"amount":"[0-9.]+"/, "\"amount\":\"\001\"", t);
    sub(/"lsn":[0-9]+/, "\"lsn\":\001", t);
    split(t, p, "\001");
    for (i = 1; i <= n; i++) {
      id = (i - 1) % keys + 1;
      if (varyAmount) printf "{\"id\":%d}\t%s%d%s%d.%02d%s%d%s\n", id, p[1], id, p[2], i % 100000, i % 90 + 10, p[3], 1000000 + i, p[4];
      else printf "{\"id\":%d}\t%s%d%s%d%s\n", id, p[1], id, p[2], 1000000 + i, p[3];
    }
  }' > "$2"
}

# produce_events TOPIC FILE: the events, keyed (the default partitioner spreads keys over partitions).
produce_events() {
  kcat -b "$KAFKA_BOOTSTRAP" -P -t "$1" -K $'\t' -X linger.ms=50 -X batch.num.messages=10000 -l "$2"
}

# load_append_times TOPIC FROM: the Kafka timestamp of each order event of TOPIC from offset FROM
# on, into the table bench_append (order_id, append_ms), for latencies measured in SQL.
load_append_times() {
  kcat -b "$KAFKA_BOOTSTRAP" -C -t "$1" -o "$2" -e -q -f '%k\t%T\n' | sed 's/^{"id":\([0-9]*\)}/\1/' > "$WORK/append.tsv"
  q "DROP TABLE IF EXISTS bench_append; CREATE TABLE bench_append (order_id bigint, append_ms bigint)" > /dev/null
  psql -X -q -c "\\copy bench_append FROM '$WORK/append.tsv'" > /dev/null
}

# quiesce: what earlier phases left to the co-located server is done before a latency
# measurement starts: their dirty pages flushed (a checkpoint), and every WAL sender caught up
# (Debezium decodes all WAL, the warehouse's own writes too: after a drain, for seconds). Waits at
# most 60 s for the senders.
quiesce() {
  q "CHECKPOINT" > /dev/null
  local behind
  for _ in $(seq 1 600); do
    behind=$(q "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)), 0) FROM pg_stat_replication")
    awk -v b="$behind" 'BEGIN {exit !(b < 1048576)}' && return 0
    sleep 0.1
  done
  echo "quiesce: a WAL sender is still $behind bytes behind after 60 s" >&2
}

# phase_breakdown LOG: where the batches' time went, summed over a job's batch log lines
# ("... 38 ms (read=0 process=3 stage=6 merge=8 commit=3)"): "read 120 / process 300 / ... ms".
phase_breakdown() {
  grep -o '([a-zA-Z]*=[0-9].*)$' "$1" | tr -d '()' | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (!(kv[1] in sum)) order[n++] = kv[1]; sum[kv[1]] += kv[2] } }
    END { for (i = 0; i < n; i++) printf "%s%s %d", (i ? " / " : ""), order[i], sum[order[i]]; if (n) printf " ms"; print "" }'
}
