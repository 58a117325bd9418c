#!/usr/bin/env bash
# End-to-end benchmark of the pipeline on the real stack (its own state folder), all on this
# machine. Measures:
#   1. drain: N order events preloaded into a topic (Debezium's own output shape, from a captured
#      event with id, LSN and amount varied) drained into fact_orders by stream_orders
#      --available-now: events/s, time from process start to the first committed batch, peak RSS;
#      and, side by side, a plain COPY of the same N rows into a copy of fact_orders;
#   2. latency: the simulator inserts at a fixed rate through the real PostgreSQL -> Debezium ->
#      Kafka path while stream_orders runs live: source commit -> warehouse and Kafka append ->
#      warehouse, p50/p95/p99; peak RSS.
# Writes bench/results/e2e-<date>.json and .md.
#   bench/e2e/run.sh [N=200000] [RATE=1000] [SECONDS=30]
set -euo pipefail
N=${1:-200000}
RATE=${2:-1000}
DURATION=${3:-30}
source "$(dirname "$0")/lib.sh" stream_orders simulate_writes kafka_consume

# ------------------------------------------------------------------ 1. drain throughput
topic=bench.drain.$(date +%s)
echo "generating $N events into $topic"
q "TRUNCATE fact_orders" > /dev/null
generate_events "$N" "$WORK/events.tsv"
produce_events "$topic" "$WORK/events.tsv"
bytes=$(stat -c %s "$WORK/events.tsv")
# The Kafka source alone, into a sink that does nothing.
consume=$("$BUILD/bench/kafka_consume" "$KAFKA_BOOTSTRAP" "$topic" 2>/dev/null | tail -n 1)
consume_rps=$(echo "$consume" | jq -r '.records_per_second')

start=$(ms_now)
ORDERS_TOPIC=$topic QUERY_NAME=bench-drain-$start MAX_OFFSETS_PER_TRIGGER=${BENCH_BATCH:-30000} \
  "$BUILD/jobs/stream_orders" --available-now > "$WORK/drain.log" 2>&1 &
pid=$!
rss=$(peak_rss_until_exit "$pid")
wait "$pid"
end=$(ms_now)
rows=$(q "SELECT count(*) FROM fact_orders")
[[ "$rows" == "$N" ]] || { echo "drain wrote $rows rows, expected $N" >&2; tail "$WORK/drain.log" >&2; exit 1; }
first_batch_ms=$(( $(date -d "$(grep -m1 ' batch 0:' "$WORK/drain.log" | sed 's/^\[\([^]]*\)\].*/\1/')" +%s%3N) - start ))
drain_ms=$((end - start))
# Sustained: from the first committed batch to the last, without process start-up.
read -r sustained_eps <<< "$(grep ' batch [0-9]*: ' "$WORK/drain.log" | awk -v n="$N" '
  { split($2, t, /[:.]/); ms = ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4]; sub(/\]$/, "", ms)
    if (NR == 1) { first = ms; firstRows = $7 } last = ms }
  END { if (last > first) printf "%.0f", (n - firstRows) * 1000 / (last - first); else print 0 }')"
drain_eps=$(awk -v n="$N" -v ms="$drain_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')

# The same rows with a plain COPY into an empty copy of fact_orders, for scale.
q "DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE fact_orders INCLUDING ALL)" > /dev/null
q "COPY (SELECT order_id, customer_id, amount, status, created_at, updated_at, is_deleted, event_time, source_lsn, first_seen_at, last_seen_at FROM fact_orders) TO '/tmp/bench_copy.tsv'" > /dev/null 2>&1 \
  || psql -X -q -c "\\copy (SELECT * FROM fact_orders) TO '$WORK/copy.tsv'" > /dev/null
[[ -f "$WORK/copy.tsv" ]] || psql -X -q -c "\\copy (SELECT * FROM fact_orders) TO '$WORK/copy.tsv'" > /dev/null
c0=$(ms_now); psql -X -q -c "\\copy bench_copy FROM '$WORK/copy.tsv'" > /dev/null; c1=$(ms_now)
copy_ms=$((c1 - c0))
copy_rps=$(awk -v n="$N" -v ms="$copy_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')
q "DROP TABLE bench_copy" > /dev/null

# ------------------------------------------------------------------ 2. latency at a fixed rate
scripts/jobs stop stream_orders > /dev/null 2>&1 || true
q "TRUNCATE fact_orders" > /dev/null  # the drain's generated ids overlap the real ones
o0=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "dbserver1.public.orders:0:-1" 2>/dev/null | awk '{print $NF}') || true
[[ "$o0" =~ ^[0-9]+$ ]] || o0=0
ORDERS_TOPIC=dbserver1.public.orders QUERY_NAME=bench-latency STARTING_OFFSETS=latest \
  "$BUILD/jobs/stream_orders" > "$WORK/latency.log" 2>&1 &
job=$!
sleep 3
t_start=$(q "SELECT now()")
ops=$((RATE * DURATION))
"$BUILD/jobs/simulate_writes" --insert-p 1 --update-p 0 --delete-p 0 --rate "$RATE" --ops "$ops" --seed 99 > "$WORK/sim.log" 2>&1
sleep 3
live_rss=$(vmhwm "$job")
kill -TERM "$job"; wait "$job" || true
kcat -b "$KAFKA_BOOTSTRAP" -C -t dbserver1.public.orders -o "$o0" -e -q -f '%k\t%T\n' \
  | sed 's/^{"id":\([0-9]*\)}/\1/' > "$WORK/append.tsv"
q "DROP TABLE IF EXISTS bench_append; CREATE TABLE bench_append (order_id bigint, append_ms bigint)" > /dev/null
psql -X -q -c "\\copy bench_append FROM '$WORK/append.tsv'" > /dev/null
read -r n_lat s50 s95 s99 k50 k95 k99 <<< "$(psql -X -q -tA -F ' ' -c "
  WITH l AS (
    SELECT extract(epoch FROM f.last_seen_at - f.event_time) * 1000 AS from_source,
           extract(epoch FROM f.last_seen_at) * 1000 - a.append_ms AS from_kafka
    FROM fact_orders f JOIN bench_append a USING (order_id)
    WHERE f.first_seen_at >= '$t_start' AND NOT f.is_deleted)
  SELECT count(*),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY from_source)::numeric, 1),
    round(percentile_cont(0.95) WITHIN GROUP (ORDER BY from_source)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY from_source)::numeric, 1),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY from_kafka)::numeric, 1),
    round(percentile_cont(0.95) WITHIN GROUP (ORDER BY from_kafka)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY from_kafka)::numeric, 1)
  FROM l")"
q "DROP TABLE bench_append" > /dev/null

# ------------------------------------------------------------------ report
stamp=$(date -u +%Y-%m-%dT%H:%MZ)
machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"); PostgreSQL, Kafka, Connect and the job on the same machine"
cat > "$OUT/e2e-latest.json" <<JSON
{"timestamp": "$stamp", "machine": "$machine",
 "kafka_consume_records_per_second": $consume_rps,
 "drain": {"events": $N, "event_bytes_avg": $((bytes / N)), "seconds": $(awk -v ms="$drain_ms" 'BEGIN {print ms / 1000}'),
           "events_per_second": $drain_eps, "sustained_events_per_second": $sustained_eps, "first_committed_batch_ms": $first_batch_ms, "peak_rss_mb": $rss,
           "plain_copy_rows_per_second": $copy_rps},
 "latency": {"rate_ops_per_second": $RATE, "orders_measured": $n_lat,
             "source_commit_to_warehouse_ms": {"p50": $s50, "p95": $s95, "p99": $s99},
             "kafka_append_to_warehouse_ms": {"p50": $k50, "p95": $k95, "p99": $k99},
             "peak_rss_mb": $live_rss}}
JSON
cat > "$OUT/e2e-latest.md" <<MD
# End-to-end benchmark ($stamp)

Machine: $machine. Command: \`bench/e2e/run.sh $N $RATE $DURATION\`.

| measure | value | target |
|---|---|---|
| Kafka source alone, $N events into a no-op sink | $consume_rps records/s | |
| drain: $N events (~$((bytes / N)) B) into fact_orders, process start to end | $drain_eps events/s ($drain_ms ms) | |
| drain, sustained (first to last committed batch) | $sustained_eps events/s | >= 50k/s (stretch 100k) |
| same rows, plain COPY into an empty copy of the table | $copy_rps rows/s | (for scale) |
| process start -> first committed batch | $first_batch_ms ms | < 1 s |
| drain: where the batches' time went (sum over batches) | $(phase_breakdown "$WORK/drain.log") | |
| peak RSS while draining (batches of ${BENCH_BATCH:-30000}) | $rss MB | < 100 MB |
| latency at $RATE inserts/s, source commit -> warehouse, p50 / p95 / p99 | $s50 / $s95 / $s99 ms | |
| latency at $RATE inserts/s, Kafka append -> warehouse, p50 / p95 / p99 | $k50 / $k95 / $k99 ms | p99 < 100 ms |
| peak RSS of the live job | $live_rss MB | < 100 MB |

Latencies use the warehouse row's \`last_seen_at\` (\`now()\`: the start of the batch's transaction,
a few ms before its commit) against \`event_time\` (\`source.ts_ms\`) and the Kafka record timestamp;
$n_lat orders measured.
MD
cat "$OUT/e2e-latest.md"
