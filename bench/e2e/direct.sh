#!/usr/bin/env bash
# The direct PostgreSQL source against the Kafka path (Debezium -> Kafka -> the job), side by
# side in one run on the benchmark stack. Measures:
#   1. drain: N order inserts committed in the source (in transactions of 100) before either job
#      starts; each path then drains the same changes from its own log (the replication slot, the
#      Debezium topic) into an empty fact_orders with stream_orders --available-now: events/s,
#      process start -> first committed batch, peak RSS; BENCH_REPEAT pairs (default 3, each with
#      inserts and a slot of its own, the direct drain first), the median pair reported; each
#      path writes into a warehouse database of its own;
#   2. latency: both paths live at once, each into its own warehouse database, while the
#      simulator inserts at RATE/s: source commit -> warehouse p50/p95/p99;
#   3. memory of the whole pipeline, the source database aside: the direct job's RSS against
#      Kafka's + Kafka Connect's + the Kafka path job's.
# Writes bench/results/direct-latest.json and .md.
#   bench/e2e/direct.sh [N=200000] [RATE=1000] [SECONDS=30]
set -euo pipefail
N=${1:-200000}
RATE=${2:-1000}
DURATION=${3:-30}
source "$(dirname "$0")/lib.sh" stream_orders simulate_writes

# Each path writes into a warehouse database of its own, neither of them the source database: the
# direct path's slot decodes every change of the source database, so a warehouse there would have
# it decode the other path's writes too (with the Kafka drains first, 200 000 fact_orders rows per
# drain before its own changes).
q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'dataflow_bench_direct%' AND NOT active" > /dev/null
for db in bench_direct bench_kafka; do
  q "DROP DATABASE IF EXISTS $db WITH (FORCE)" > /dev/null
  q "CREATE DATABASE $db" > /dev/null
  PG_URL="postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$db" scripts/migrate.sh > /dev/null
done
direct_url="postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_direct"
kafka_url="postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_kafka"
dq() { psql "$direct_url" -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
kq() { psql "$kafka_url" -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
run_id=$(date +%s)
# Run in the background (or a subshell): exec makes $! the job's own pid, for its memory.
kafka_env() { exec env ORDERS_TOPIC=dbserver1.public.orders PG_URL="$kafka_url" SOURCE_HEALTH_INTERVAL_MS=0 "$@"; }
direct_env() { exec env CDC_SOURCE=postgres SOURCE_PG_URL="$PG_URL" PG_URL="$direct_url" SOURCE_HEALTH_INTERVAL_MS=0 "$@"; }
scripts/jobs stop > /dev/null 2>&1 || true

# ------------------------------------------------------------------ 1. drain
# BENCH_REPEAT pairs (default 3: the job, the server and Kafka + Connect share two cores, and one
# pair moves by a fifth from run to run); the pair with the median ratio is reported. Each pair
# commits its own N inserts, so that each direct drain reads a slot whose stream holds those
# inserts and not the earlier drains' writes (a slot decodes all the WAL after its position).
# The direct drain goes first in every pair: its slot reads all the WAL after the inserts, so a
# Kafka drain before it would put that drain's N warehouse writes into the direct drain's backlog
# (taking turns, 2026-12-02: the pairs with Kafka first gave 0.75x and 0.76x, those with direct
# first 0.93-1.05x), while Debezium's slot follows the WAL all along, outside any drain. Each drain
# starts with the server quiesced: dirty pages flushed and every WAL sender caught up (Debezium's
# decodes the other drain's writes).
REPEAT=${BENCH_REPEAT:-3}
cust=$(q "INSERT INTO customers (email, country) VALUES ('bench-direct-$run_id@example.com', 'NL') RETURNING id")
# commit_inserts PAIR: the pair's slot (a run with nothing to read), then its N inserts in the
# source, appended by Debezium; sets o0, the topic's offset before them.
commit_inserts() {
  (direct_env QUERY_NAME=bench-direct-drain-$run_id-$1 STARTING_OFFSETS=latest \
    "$BUILD/jobs/stream_orders" --available-now > "$WORK/direct-drain-$1.log" 2>&1)
  o0=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "dbserver1.public.orders:0:-1" 2>/dev/null | awk '{print $NF}') || true
  [[ "$o0" =~ ^[0-9]+$ ]] || o0=0
  echo "pair $1: committing $N order inserts (transactions of 100)" >&2
  q "DO \$\$ BEGIN FOR b IN 0..$((N / 100 - 1)) LOOP
       INSERT INTO orders (customer_id, amount, status) SELECT $cust, (b * 100 + i) % 1000 / 10.0 + 1, 'bench' FROM generate_series(1, 100) i;
       COMMIT; END LOOP; END \$\$" > /dev/null
  local o1=0
  for _ in $(seq 1 600); do
    o1=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "dbserver1.public.orders:0:-1" 2>/dev/null | awk '{print $NF}') || true
    [[ "$o1" =~ ^[0-9]+$ ]] && ((o1 - o0 >= N)) && break
    sleep 0.5
  done
  ((o1 - o0 >= N)) || { echo "Debezium appended $((o1 - o0)) of $N events" >&2; exit 1; }
  # The inserts leave the server work to do (autovacuum of orders, dirty pages): done now, so
  # that neither drain pays for it.
  q "VACUUM (ANALYZE) orders" > /dev/null
}

drain() {  # drain PATH(kafka|direct) PAIR -> "events/s ms first_batch_ms rss_mb rows"
  local log="$WORK/$1-drain-$2.log" start end pid rss rows first
  if [[ $1 == kafka ]]; then
    kq "TRUNCATE fact_orders" > /dev/null
    quiesce
    start=$(ms_now)
    kafka_env QUERY_NAME=bench-kafka-drain-$run_id-$2 STARTING_OFFSETS="{\"dbserver1.public.orders\":{\"0\":$o0}}" \
      MAX_OFFSETS_PER_TRIGGER=30000 "$BUILD/jobs/stream_orders" --available-now > "$log" 2>&1 &
  else
    dq "TRUNCATE fact_orders" > /dev/null
    quiesce
    start=$(ms_now)
    # That run committed no batch (nothing to read): this one starts anew, from the slot's
    # position, before the inserts; latest: no snapshot of the table.
    direct_env QUERY_NAME=bench-direct-drain-$run_id-$2 MAX_OFFSETS_PER_TRIGGER=30000 STARTING_OFFSETS=latest \
      "$BUILD/jobs/stream_orders" --available-now >> "$log" 2>&1 &
  fi
  pid=$!
  rss=$(peak_rss_until_exit "$pid")
  wait "$pid"
  end=$(ms_now)
  if [[ $1 == kafka ]]; then rows=$(kq "SELECT count(*) FROM fact_orders WHERE status = 'bench'"); else rows=$(dq "SELECT count(*) FROM fact_orders WHERE status = 'bench'"); fi
  first=$(grep ' batch [0-9]*: [1-9]' "$log" | head -n 1 | sed 's/^\[\([^]]*\)\].*/\1/')
  first=$(( $(date -d "$first" +%s%3N) - start ))
  echo "$(awk -v n="$rows" -v ms="$((end - start))" 'BEGIN {printf "%.0f", n * 1000 / ms}') $((end - start)) $first $rss $rows"
}
pairs=()
for ((r = 1; r <= REPEAT; r++)); do
  commit_inserts "$r"
  read -r d_eps d_ms d_first d_rss d_rows <<< "$(drain direct $r)"
  read -r k_eps k_ms k_first k_rss k_rows <<< "$(drain kafka $r)"
  ((k_rows == N && d_rows == N)) || { echo "drained $k_rows (kafka) and $d_rows (direct) rows, expected $N" >&2; exit 1; }
  pairs+=("$k_eps $k_ms $k_first $k_rss $d_eps $d_ms $d_first $d_rss $r")
  echo "pair $r/$REPEAT: kafka $k_eps events/s, direct $d_eps events/s" >&2
done
read -r k_eps k_ms k_first k_rss d_eps d_ms d_first d_rss median_r <<< "$(printf '%s\n' "${pairs[@]}" |
  awk '{print $5 / $1, $0}' | sort -n | awk -v m=$(((REPEAT + 1) / 2)) 'NR == m {$1 = ""; print}')"
all_ratios=$(printf '%s\n' "${pairs[@]}" | awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $5 / $1}')

# ------------------------------------------------------------------ 2. latency, both live
kq "TRUNCATE fact_orders" > /dev/null
dq "TRUNCATE fact_orders" > /dev/null
kafka_env QUERY_NAME=bench-kafka-live-$run_id STARTING_OFFSETS=latest "$BUILD/jobs/stream_orders" > "$WORK/kafka-live.log" 2>&1 &
kafka_job=$!
direct_env QUERY_NAME=bench-direct-live-$run_id STARTING_OFFSETS=latest "$BUILD/jobs/stream_orders" > "$WORK/direct-live.log" 2>&1 &
direct_job=$!
sleep 3
t_start=$(q "SELECT now()")
"$BUILD/jobs/simulate_writes" --insert-p 1 --update-p 0 --delete-p 0 --rate "$RATE" --ops "$((RATE * DURATION))" --seed 99 > "$WORK/direct-sim.log" 2>&1
sleep 3
kafka_rss=$(vmhwm "$kafka_job")
direct_rss=$(vmhwm "$direct_job")
java_rss=$(ps -eo rss=,args= | awk '/[j]ava/ && (/kafka\.Kafka/ || /ConnectDistributed/) {s += $1} END {printf "%.0f", s / 1024}')
kill -TERM "$kafka_job" "$direct_job"; wait "$kafka_job" "$direct_job" || true
latency="WITH l AS (SELECT extract(epoch FROM last_seen_at - event_time) * 1000 AS ms FROM fact_orders
                   WHERE first_seen_at >= '$t_start' AND NOT is_deleted)
         SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM l"
read -r k_n k50 k95 k99 <<< "$(psql "$kafka_url" -X -q -tA -F ' ' -c "$latency")"
read -r d_n d50 d95 d99 <<< "$(psql "$direct_url" -X -q -tA -F ' ' -c "$latency")"
for slot in $(q "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'dataflow_bench_direct%' AND NOT active"); do
  q "SELECT pg_drop_replication_slot('$slot')" > /dev/null
done

# ------------------------------------------------------------------ report
stamp=$(date -u +%Y-%m-%dT%H:%MZ)
machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"); PostgreSQL, Kafka, Connect and the jobs on the same machine"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
cat > "$OUT/direct-latest.json" <<JSON
{"timestamp": "$stamp", "machine": "$machine", "events": $N, "rate_ops_per_second": $RATE,
 "drain": {"kafka": {"events_per_second": $k_eps, "ms": $k_ms, "first_committed_batch_ms": $k_first, "peak_rss_mb": $k_rss},
           "direct": {"events_per_second": $d_eps, "ms": $d_ms, "first_committed_batch_ms": $d_first, "peak_rss_mb": $d_rss}},
 "latency_source_commit_to_warehouse_ms": {"kafka": {"n": $k_n, "p50": $k50, "p95": $k95, "p99": $k99},
                                           "direct": {"n": $d_n, "p50": $d50, "p95": $d95, "p99": $d99}},
 "memory_mb": {"direct_job": $direct_rss, "kafka_path_job": $kafka_rss, "kafka_and_connect": $java_rss}}
JSON
cat > "$OUT/direct-latest.md" <<MD
# Direct PostgreSQL source vs the Kafka path ($stamp)

Machine: $machine. Command: \`bench/e2e/direct.sh $N $RATE $DURATION\`. Both paths in one run.

| measure | Kafka path (Debezium + Kafka) | direct (pgoutput) | direct / Kafka |
|---|---|---|---|
| drain of $N inserts committed before the job started, events/s (the median of $REPEAT pairs, direct first: $all_ratios) | $k_eps | $d_eps | $(ratio "$d_eps" "$k_eps")x |
| process start -> first committed batch | $k_first ms | $d_first ms | |
| peak RSS of the job while draining | $k_rss MB | $d_rss MB | |
| latency at $RATE inserts/s, source commit -> warehouse, p50 / p95 / p99 | $k50 / $k95 / $k99 ms | $d50 / $d95 / $d99 ms | p99 $(ratio "$d99" "$k99")x |
| drain: where the batches' time went (sum over batches) | $(phase_breakdown "$WORK/kafka-drain-$median_r.log") | $(phase_breakdown "$WORK/direct-drain-$median_r.log") | |
| memory of the pipeline (source database aside) | $((${java_rss%.*} + ${kafka_rss%.*})) MB (Kafka + Connect $java_rss MB, job $kafka_rss MB) | $direct_rss MB | |

Latencies use the warehouse row's \`last_seen_at\` (\`now()\`: the start of the batch's
transaction) against \`event_time\` (the source commit time); both jobs ran live at the same time,
each into its own warehouse database ($k_n and $d_n orders measured).
MD
cat "$OUT/direct-latest.md"
