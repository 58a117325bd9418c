#!/usr/bin/env bash
# End-to-end benchmark of the pipeline on the real stack (its own state folder), all on this
# machine. Measures:
#   1. drain: N order events preloaded into a topic (Debezium's own output shape, from a captured
#      event with id, LSN and amount varied) drained into fact_orders by stream_orders
#      --available-now with default settings: events/s, time from process start to the first
#      committed batch, peak RSS; and, side by side, a plain COPY of the same N rows into a copy
#      of fact_orders, BENCH_REPEAT pairs in turn (default 3; the median pair is reported). The
#      same, once, for an update-heavy stream (N events over N/10 orders) and for
#      N/4 events with schemas (~3.8 KB each: memory must not grow with event size). Each drain
#      checks every order holds its last event;
#   2. latency: the simulator inserts at a fixed rate (RATE, and 10 x RATE in transactions of 10)
#      through the real PostgreSQL -> Debezium -> Kafka path while stream_orders runs live: source
#      commit -> warehouse and Kafka append -> warehouse, p50/p95/p99; peak RSS; records behind.
#      The first WARMUP seconds of each load (BENCH_WARMUP_S, default 3) are not measured: they
#      are the broker's and Connect's first seconds on a new topic, with appends of 90 ms.
# Writes bench/results/e2e-<date>.json and .md.
#   bench/e2e/run.sh [N=200000] [RATE=1000] [SECONDS=30]
set -euo pipefail
N=${1:-200000}
RATE=${2:-1000}
DURATION=${3:-30}
WARMUP=${BENCH_WARMUP_S:-3}
source "$(dirname "$0")/lib.sh" stream_orders simulate_writes kafka_consume kafka_produce_at_rate

# ------------------------------------------------------------------ 1. drain throughput
# drain NAME N KEYS SHAPE: N events over KEYS order ids (generate_events) produced into a topic of
# their own, then drained into an empty fact_orders by stream_orders --available-now with its
# default settings (BENCH_BATCH sets MAX_OFFSETS_PER_TRIGGER). Sets drain_ms, drain_eps,
# sustained_eps, first_batch_ms, rss (MB), phases, event_bytes and topic.
# With AGAIN=1 it drains the topic of the previous call again, from the start, as a new query.
drain() {
  local name=$1 n=$2 keys=$3 shape=$4
  q "TRUNCATE fact_orders" > /dev/null
  if [[ "${AGAIN:-0}" != 1 ]]; then
    topic=bench.$name.$(date +%s)
    echo "generating $n events over $keys keys ($shape) into $topic"
    generate_events "$n" "$WORK/$name.tsv" "$keys" "$shape"
    produce_events "$topic" "$WORK/$name.tsv"
  fi
  event_bytes=$(($(stat -c %s "$WORK/$name.tsv") / n))
  q "CHECKPOINT" > /dev/null  # from a quiet server, as the COPYs below
  local start end pid rows
  start=$(ms_now)
  ORDERS_TOPIC=$topic QUERY_NAME=bench-$name-$start ${BENCH_BATCH:+MAX_OFFSETS_PER_TRIGGER=$BENCH_BATCH} \
    "$BUILD/jobs/stream_orders" --available-now > "$WORK/$name.log" 2>&1 &
  pid=$!
  rss=$(peak_rss_until_exit "$pid")
  wait "$pid"
  end=$(ms_now)
  rows=$(q "SELECT count(*) FROM fact_orders")
  [[ "$rows" == "$keys" ]] || { echo "drain $name wrote $rows rows, expected $keys" >&2; tail "$WORK/$name.log" >&2; exit 1; }
  # Each order holds its last event: the amount of event i is i % 100000 . (i % 90 + 10).
  local wrong=0
  [[ "$shape" == plain ]] && wrong=$(q "SELECT count(*) FROM fact_orders WHERE amount <> (((order_id + ($n - order_id) / $keys * $keys) % 100000)::text || '.' || ((order_id + ($n - order_id) / $keys * $keys) % 90 + 10)::text)::numeric")
  [[ "$wrong" == 0 ]] || { echo "drain $name: $wrong orders do not hold their last event's amount" >&2; exit 1; }
  first_batch_ms=$(( $(date -d "$(grep -m1 ' batch 0:' "$WORK/$name.log" | sed 's/^\[\([^]]*\)\].*/\1/')" +%s%3N) - start ))
  drain_ms=$((end - start))
  # Sustained: from the first committed batch to the last, without process start-up.
  read -r sustained_eps <<< "$(grep ' batch [0-9]*: ' "$WORK/$name.log" | awk -v n="$n" '
    { split($2, t, /[:.]/); ms = ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4]; sub(/\]$/, "", ms)
      if (NR == 1) { first = ms; firstRows = $7 } last = ms }
    END { if (last > first) printf "%.0f", (n - firstRows) * 1000 / (last - first); else print 0 }')"
  drain_eps=$(awk -v n="$n" -v ms="$drain_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')
  phases=$(phase_breakdown "$WORK/$name.log")
}

# The Kafka source alone, into a sink that does nothing (on the updates' topic: same events).
drain updates "$N" $((N / 10)) plain
u_ms=$drain_ms u_eps=$drain_eps u_rss=$rss u_phases=$phases
consume=$("$BUILD/bench/kafka_consume" "$KAFKA_BOOTSTRAP" "$topic" 2>/dev/null | tail -n 1)
consume_rps=$(echo "$consume" | jq -r '.records_per_second')
drain schema $((N / 4)) $((N / 4)) schema
s_eps=$drain_eps s_rss=$rss s_bytes=$event_bytes s_n=$((N / 4))
# The inserts' drain against a plain COPY of the same rows into an empty copy of fact_orders,
# REPEAT times in turn (BENCH_REPEAT, default 3; the job and the server share two cores with Kafka
# and Connect, and one pair moves by a quarter from run to run): the median ratio is reported. The
# drain's after-work (autovacuum of fact_orders, dirty pages) is done before each COPY: each COPY
# starts, as each drain does, from a checkpoint.
REPEAT=${BENCH_REPEAT:-3}
copy_once() {  # copy_once FORMAT(text|binary): ms
  q "DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE fact_orders INCLUDING ALL)" > /dev/null
  q "VACUUM (ANALYZE) fact_orders" > /dev/null
  q "CHECKPOINT" > /dev/null
  local c0 c1
  c0=$(ms_now); psql -X -q -c "\\copy bench_copy FROM '$WORK/copy.$1' WITH (FORMAT $1)" > /dev/null; c1=$(ms_now)
  q "DROP TABLE bench_copy" > /dev/null
  echo $((c1 - c0))
}
pairs=()
pair_phases=()
for ((r = 1; r <= REPEAT; r++)); do
  AGAIN=$((r > 1)) drain inserts "$N" "$N" plain
  if ((r == 1)); then
    psql -X -q -c "\\copy (SELECT * FROM fact_orders) TO '$WORK/copy.text'" > /dev/null
    psql -X -q -c "\\copy (SELECT * FROM fact_orders) TO '$WORK/copy.binary' WITH (FORMAT binary)" > /dev/null
  fi
  t_ms=$(copy_once text)
  b_ms=$(copy_once binary)
  pairs+=("$drain_ms $t_ms $b_ms $first_batch_ms $rss $sustained_eps $r")
  pair_phases[r]=$phases
  echo "inserts drain $r/$REPEAT: drain $drain_ms ms, plain COPY text $t_ms ms, binary $b_ms ms"
done
bytes=$((event_bytes * N))
# The median pair by the drain/COPY ratio (its drain's figures are the ones reported).
read -r drain_ms copy_ms bcopy_ms first_batch_ms rss sustained_eps median_r <<< "$(printf '%s\n' "${pairs[@]}" |
  awk '{print $2 / $1, $0}' | sort -n | awk -v m=$(((REPEAT + 1) / 2)) 'NR == m {$1 = ""; print}')"
drain_eps=$(awk -v n="$N" -v ms="$drain_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')
copy_rps=$(awk -v n="$N" -v ms="$copy_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')
bcopy_rps=$(awk -v n="$N" -v ms="$bcopy_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')
phases=${pair_phases[median_r]}
all_ratios=$(printf '%s\n' "${pairs[@]}" | awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $2 / $1}')

# ------------------------------------------------------------------ 2. latency at a fixed rate
# latency RATE SECONDS BATCH: the simulator inserts RATE orders/s (BATCH per transaction) through
# PostgreSQL -> Debezium -> Kafka while stream_orders runs live. Sets n_lat, s50/s95/s99 (source
# commit -> warehouse), k50/k95/k99 (Kafka append -> warehouse), live_rss, sim_rate (achieved),
# and backlog (records behind at the end of the load).
latency() {
  local rate=$1 duration=$2 batch=$3
  scripts/jobs stop stream_orders > /dev/null 2>&1 || true
  q "TRUNCATE fact_orders" > /dev/null  # the drain's generated ids overlap the real ones
  quiesce
  local o0 job t_start ops s0  # a new query each time: a checkpoint of an earlier run would start with its backlog
  o0=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "dbserver1.public.orders:0:-1" 2>/dev/null | awk '{print $NF}') || true
  [[ "$o0" =~ ^[0-9]+$ ]] || o0=0
  ORDERS_TOPIC=dbserver1.public.orders QUERY_NAME=bench-latency-$rate-$(date +%s) STARTING_OFFSETS=latest \
    "$BUILD/jobs/stream_orders" > "$WORK/latency-$rate.log" 2>&1 &
  job=$!
  sleep 3
  t_start=$(q "SELECT now()")
  ops=$((rate * (duration + WARMUP)))
  s0=$(ms_now)
  "$BUILD/jobs/simulate_writes" --insert-p 1 --update-p 0 --delete-p 0 --rate "$rate" --batch "$batch" --ops "$ops" \
    --seed 99 > "$WORK/sim-$rate.log" 2>&1
  sim_rate=$(awk -v n="$ops" -v ms=$(($(ms_now) - s0)) 'BEGIN {printf "%.0f", n * 1000 / ms}')
  # The lag the job reported in its last batch line while the load ran (records behind).
  backlog=$(grep -o 'lag [0-9]*' "$WORK/latency-$rate.log" | tail -n 1 | awk '{print $2}')
  sleep 3
  live_rss=$(vmhwm "$job")
  kill -TERM "$job"; wait "$job" || true
  load_append_times dbserver1.public.orders "$o0"
  read -r n_lat s50 s95 s99 k50 k95 k99 <<< "$(psql -X -q -tA -F ' ' -c "
    WITH l AS (
      SELECT extract(epoch FROM f.last_seen_at - f.event_time) * 1000 AS from_source,
             extract(epoch FROM f.last_seen_at) * 1000 - a.append_ms AS from_kafka
      FROM fact_orders f JOIN bench_append a USING (order_id)
      WHERE f.first_seen_at >= '$t_start' AND NOT f.is_deleted
        AND a.append_ms >= (SELECT min(append_ms) FROM bench_append) + $WARMUP * 1000)
    SELECT count(*),
      round(percentile_cont(0.5) WITHIN GROUP (ORDER BY from_source)::numeric, 1),
      round(percentile_cont(0.95) WITHIN GROUP (ORDER BY from_source)::numeric, 1),
      round(percentile_cont(0.99) WITHIN GROUP (ORDER BY from_source)::numeric, 1),
      round(percentile_cont(0.5) WITHIN GROUP (ORDER BY from_kafka)::numeric, 1),
      round(percentile_cont(0.95) WITHIN GROUP (ORDER BY from_kafka)::numeric, 1),
      round(percentile_cont(0.99) WITHIN GROUP (ORDER BY from_kafka)::numeric, 1)
    FROM l")"
  q "DROP TABLE bench_append" > /dev/null
}

# produced_latency RATE SECONDS: RATE*(WARMUP+SECONDS) generated order events produced straight
# into a topic of their own at RATE/s (kafka_produce_at_rate; no database, Debezium or simulator,
# which top out below 10 000/s here) while stream_orders runs live on it: Kafka append (the
# broker's time: the topic is made with LogAppendTime) -> warehouse, for the records appended
# after the first WARMUP seconds. Sets p_rate, p_n, p_k50/p_k95/p_k99, p_backlog, p_rss.
produced_latency() {
  local rate=$1 duration=$2 n job t_start ptopic
  n=$((rate * (duration + WARMUP)))
  ptopic=bench.live.$(date +%s)
  q "TRUNCATE fact_orders" > /dev/null
  quiesce  # what the drains left to the server is done before, not during, the measurement
  generate_events "$n" "$WORK/live.tsv"
  "$BUILD/bench/kafka_produce_at_rate" "$KAFKA_BOOTSTRAP" "$ptopic" --create-log-append-time  # before the job
  ORDERS_TOPIC=$ptopic QUERY_NAME=bench-produced-$rate-$(date +%s) STARTING_OFFSETS=latest \
    "$BUILD/jobs/stream_orders" > "$WORK/produced-$rate.log" 2>&1 &
  job=$!
  sleep 3
  t_start=$(q "SELECT now()")
  p_rate=$("$BUILD/bench/kafka_produce_at_rate" "$KAFKA_BOOTSTRAP" "$ptopic" "$rate" "$WORK/live.tsv" | jq -r '.records_per_second')
  p_backlog=$(grep -o 'lag [0-9]*' "$WORK/produced-$rate.log" | tail -n 1 | awk '{print $2}')
  sleep 3
  p_rss=$(vmhwm "$job")
  kill -TERM "$job"; wait "$job" || true
  load_append_times "$ptopic" 0
  local arrived
  arrived=$(q "SELECT count(*) FROM fact_orders f JOIN bench_append a USING (order_id) WHERE f.first_seen_at >= '$t_start'")
  ((arrived == n)) || { echo "produced_latency: $arrived of $n orders reached the warehouse" >&2; exit 1; }
  read -r p_n p_k50 p_k95 p_k99 <<< "$(psql -X -q -tA -F ' ' -c "
    WITH l AS (SELECT extract(epoch FROM f.last_seen_at) * 1000 - a.append_ms AS ms
               FROM fact_orders f JOIN bench_append a USING (order_id)
               WHERE f.first_seen_at >= '$t_start' AND a.append_ms >= (SELECT min(append_ms) FROM bench_append) + $WARMUP * 1000)
    SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
      round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 1),
      round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM l")"
  q "DROP TABLE bench_append" > /dev/null
}

produced_latency "$RATE" "$DURATION"
p1_rate=$p_rate p1_n=$p_n p1_k50=$p_k50 p1_k95=$p_k95 p1_k99=$p_k99 p1_backlog=${p_backlog:-0}
produced_latency $((RATE * 10)) "$DURATION"
latency $((RATE * 10)) "$DURATION" 10
h_rate=$sim_rate h_n=$n_lat h_k50=$k50 h_k95=$k95 h_k99=$k99 h_backlog=${backlog:-0} h_rss=$live_rss
latency "$RATE" "$DURATION" 1

# ------------------------------------------------------------------ report
stamp=$(date -u +%Y-%m-%dT%H:%MZ)
machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"); PostgreSQL, Kafka, Connect and the job on the same machine"
cat > "$OUT/e2e-latest.json" <<JSON
{"timestamp": "$stamp", "machine": "$machine",
 "kafka_consume_records_per_second": $consume_rps,
 "drain": {"events": $N, "pairs_in_turn": $REPEAT, "drain_to_copy_ratios": [$all_ratios], "event_bytes_avg": $((bytes / N)), "seconds": $(awk -v ms="$drain_ms" 'BEGIN {print ms / 1000}'),
           "events_per_second": $drain_eps, "sustained_events_per_second": $sustained_eps, "first_committed_batch_ms": $first_batch_ms, "peak_rss_mb": $rss,
           "plain_copy_rows_per_second": $copy_rps, "plain_binary_copy_rows_per_second": $bcopy_rps},
 "update_heavy_drain": {"events": $N, "keys": $((N / 10)), "events_per_second": $u_eps, "peak_rss_mb": $u_rss},
 "schema_events_drain": {"events": $s_n, "event_bytes_avg": $s_bytes, "events_per_second": $s_eps, "peak_rss_mb": $s_rss},
 "latency": {"rate_ops_per_second": $RATE, "orders_measured": $n_lat,
             "source_commit_to_warehouse_ms": {"p50": $s50, "p95": $s95, "p99": $s99},
             "kafka_append_to_warehouse_ms": {"p50": $k50, "p95": $k95, "p99": $k99},
             "peak_rss_mb": $live_rss},
 "latency_high_rate": {"rate_ops_per_second": $((RATE * 10)), "achieved_ops_per_second": $h_rate, "orders_measured": $h_n,
             "kafka_append_to_warehouse_ms": {"p50": $h_k50, "p95": $h_k95, "p99": $h_k99},
             "records_behind_at_end_of_load": $h_backlog, "peak_rss_mb": $h_rss},
 "latency_produced_base_rate": {"rate_ops_per_second": $RATE, "achieved_ops_per_second": $p1_rate, "orders_measured": $p1_n,
             "kafka_append_to_warehouse_ms": {"p50": $p1_k50, "p95": $p1_k95, "p99": $p1_k99},
             "records_behind_at_end_of_load": $p1_backlog},
 "latency_produced": {"rate_ops_per_second": $((RATE * 10)), "achieved_ops_per_second": $p_rate, "orders_measured": $p_n,
             "kafka_append_to_warehouse_ms": {"p50": $p_k50, "p95": $p_k95, "p99": $p_k99},
             "records_behind_at_end_of_load": ${p_backlog:-0}, "peak_rss_mb": $p_rss}}
JSON
cat > "$OUT/e2e-latest.md" <<MD
# End-to-end benchmark ($stamp)

Machine: $machine. Command: \`bench/e2e/run.sh $N $RATE $DURATION\`.

| measure | value | target |
|---|---|---|
| Kafka source alone, $N events into a no-op sink | $consume_rps records/s | |
| drain: $N events (~$((bytes / N)) B) into fact_orders, process start to end | $drain_eps events/s ($drain_ms ms) | |
| drain, sustained (first to last committed batch) | $sustained_eps events/s | >= 50k/s (stretch 100k) |
| same rows, plain COPY into an empty copy of the table | $copy_rps rows/s (binary COPY: $bcopy_rps rows/s) | (for scale) |
| process start -> first committed batch | $first_batch_ms ms | < 250 ms |
| drain: where the batches' time went (sum over batches) | $phases | |
| drain vs plain COPY (the median of $REPEAT pairs in turn: $all_ratios) | $(awk -v a="$drain_eps" -v b="$copy_rps" 'BEGIN {printf "%.2fx", a / b}') (vs binary COPY $(awk -v a="$drain_eps" -v b="$bcopy_rps" 'BEGIN {printf "%.2fx", a / b}')) | >= 0.7x |
| peak RSS while draining (default settings${BENCH_BATCH:+, batches of $BENCH_BATCH}) | $rss MB | < 64 MB |
| update-heavy drain: $N events over $((N / 10)) orders, process start to end | $u_eps events/s ($u_ms ms), $(awk -v a="$u_eps" -v b="$copy_rps" 'BEGIN {printf "%.2fx", a / b}') the plain COPY; peak RSS $u_rss MB | >= 0.5x |
| update-heavy drain: where the batches' time went | $u_phases | |
| drain of $s_n events with schemas (~$s_bytes B) | $s_eps events/s; peak RSS $s_rss MB | < 64 MB |
| latency at $RATE inserts/s, source commit -> warehouse, p50 / p95 / p99 | $s50 / $s95 / $s99 ms | |
| latency at $RATE inserts/s, Kafka append -> warehouse, p50 / p95 / p99 | $k50 / $k95 / $k99 ms | (Connect's send time; the target is the produced row below) |
| peak RSS of the live job | $live_rss MB | < 100 MB |
| latency at $((RATE * 10)) inserts/s (10 per transaction; achieved $h_rate/s), Kafka append -> warehouse, p50 / p95 / p99 | $h_k50 / $h_k95 / $h_k99 ms | p99 < 50 ms |
| records behind at the end of that load (the job's last reported lag) | $h_backlog | no growth |
| latency at $RATE events/s produced straight into Kafka (achieved $p1_rate/s; $p1_n orders), Kafka append -> warehouse, p50 / p95 / p99 | $p1_k50 / $p1_k95 / $p1_k99 ms | p99 < 20 ms |
| latency at $((RATE * 10)) events/s produced straight into Kafka (achieved $p_rate/s; $p_n orders), Kafka append -> warehouse, p50 / p95 / p99 | $p_k50 / $p_k95 / $p_k99 ms | p99 < 50 ms |
| records behind at the end of that load; peak RSS of the live job | ${p_backlog:-0}; $p_rss MB | no growth |

Latencies use the warehouse row's \`last_seen_at\` (\`now()\`: the start of the batch's transaction,
a few ms before its commit) against \`event_time\` (\`source.ts_ms\`) and the Kafka record timestamp
(Connect's send time for the simulator's loads, the broker's append time for the produced one), for
the records appended after the first ${WARMUP} s of each load; $n_lat orders measured at $RATE/s.
MD
cat "$OUT/e2e-latest.md"
