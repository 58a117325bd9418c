#!/usr/bin/env bash
# Soak: the whole pipeline (PostgreSQL -> Debezium -> Kafka -> stream_customers + stream_orders ->
# warehouse) under a steady mixed load for a long time, on a stack of its own (build/soak-stack).
# Every SAMPLE seconds it records each job's resident memory, the checkpoint tables' size, the DLQ,
# the replication slot's lag and Kafka's end offsets. At the end:
#   - RSS slope per job (MB/hour, least squares over the run, and over the run after its first
#     5 minutes of warm-up);
#   - latency, source commit -> warehouse, p50/p99/max per 5-minute window (each warehouse row's
#     last change: last_seen_at - event_time);
#   - checkpoint and DLQ growth (bytes and rows per hour), slot lag (max, last);
#   - the warehouse equals the source (scripts/verify-warehouse).
# Nothing may grow without bound: the verdicts (RSS slope after warm-up < 10 MB/h, checkpoint
# growth < 10 MB/h, no dead letter, slot lag back under 16 MB within 120 s of the load's end, p99
# of the last window within 2x of the first) are printed and kept with the figures in
# bench/results/soak-latest.{json,md,csv}.
# The load comes from SOAK_CONNECTIONS writers (default 4; one connection commits only a few hundred
# single-change transactions a second here).
#   bench/e2e/soak.sh [MINUTES=30] [RATE=1000] [SAMPLE=10]
set -euo pipefail
MINUTES=${1:-30}
RATE=${2:-1000}
SAMPLE=${3:-10}
CONNECTIONS=${SOAK_CONNECTIONS:-4}
export BENCH_STATE_DIR=${BENCH_STATE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/build/soak-stack}
source "$(dirname "$0")/lib.sh" stream_customers stream_orders simulate_writes
JOBS=(stream_customers stream_orders)
CSV=$WORK/soak.csv

for j in "${JOBS[@]}"; do scripts/jobs stop "$j" > /dev/null 2>&1 || true; done
cleanup() { scripts/jobs stop > /dev/null 2>&1 || true; kill "${sim:-0}" 2>/dev/null || true; bench_stop_stack; }
trap cleanup EXIT
scripts/jobs start "${JOBS[@]}" > /dev/null
"$ROOT/scripts/verify-warehouse" --wait 300 > /dev/null   # the backlog of an earlier run first
pid() { cat "$DATAFLOW_STATE_DIR/jobs/$1.pid"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
slot_lag() { q "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = 'dataflow_cdc'"; }
checkpoint_bytes() { q "SELECT sum(pg_total_relation_size(c))::bigint FROM unnest(ARRAY['dataflow_checkpoints', 'dataflow_offsets', 'dataflow_commits', 'dataflow_partition_offsets', 'dataflow_state']::regclass[]) c"; }
end_offsets() {
  local total=0 t o
  for t in dbserver1.public.customers dbserver1.public.orders; do
    o=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "$t:0:-1" 2>/dev/null | awk '{print $NF}') || o=0
    total=$((total + ${o:-0}))
  done
  echo "$total"
}

pids_before="$(pid stream_customers) $(pid stream_orders)"
dlq0=$(q "SELECT count(*) FROM dlq_events")
t_start=$(q "SELECT now()")
echo "soak: $MINUTES min at $RATE changes/s from $CONNECTIONS connections, sampling every $SAMPLE s (jobs: pids $pids_before)"
"$BUILD/jobs/simulate_writes" --rate "$RATE" --ops $((RATE * MINUTES * 60)) --seed 4242 --connections "$CONNECTIONS" \
  > "$WORK/soak-sim.log" 2>&1 &
sim=$!
echo "seconds,customers_rss_mb,orders_rss_mb,checkpoint_bytes,dlq_rows,slot_lag_bytes,kafka_end_offsets" > "$CSV"
s0=$(ms_now)
while kill -0 "$sim" 2>/dev/null; do
  printf '%s,%s,%s,%s,%s,%s,%s\n' "$(( ($(ms_now) - s0) / 1000 ))" "$(rss_mb "$(pid stream_customers)")" \
    "$(rss_mb "$(pid stream_orders)")" "$(checkpoint_bytes)" "$(q "SELECT count(*) FROM dlq_events")" \
    "$(slot_lag)" "$(end_offsets)" >> "$CSV"
  sleep "$SAMPLE"
done
wait "$sim" || { echo "soak: the simulator failed: $(tail -n 3 "$WORK/soak-sim.log")" >&2; exit 1; }
sim_report=$(grep -E '^simulate_writes: [0-9]+ ops' "$WORK/soak-sim.log" | tail -n 1)
"$ROOT/scripts/verify-warehouse" --wait 300 || { echo "soak: the warehouse does not match the source" >&2; exit 1; }
printf '%s,%s,%s,%s,%s,%s,%s\n' "$(( ($(ms_now) - s0) / 1000 ))" "$(rss_mb "$(pid stream_customers)")" \
  "$(rss_mb "$(pid stream_orders)")" "$(checkpoint_bytes)" "$(q "SELECT count(*) FROM dlq_events")" \
  "$(slot_lag)" "$(end_offsets)" >> "$CSV"
# The slot's lag once the load is over: Debezium confirms an LSN only with its next offset commit
# (after a change or a heartbeat), and WAL the publication does not carry (autovacuum of the
# churned tables, checkpoints) keeps coming, so one sample right after the load can be tens of
# MB. It must come down by itself: polled until it is under 16 MB, for at most 120 s.
drain_s=0 lag_after=$(slot_lag)
while ((lag_after >= 16777216 && drain_s < 120)); do sleep 2; drain_s=$((drain_s + 2)); lag_after=$(slot_lag); done
pids_after="$(pid stream_customers) $(pid stream_orders)"
[[ "$pids_after" == "$pids_before" ]] || { echo "soak: a job restarted (pids $pids_before -> $pids_after)" >&2; exit 1; }

# Latency per 5-minute window of the run, from the rows the soak wrote (their last change).
latency=$(psql -X -q -tA -F ' ' -c "
  WITH l AS (
    SELECT event_time, extract(epoch FROM last_seen_at - event_time) * 1000 AS ms FROM fact_orders WHERE event_time >= '$t_start'
    UNION ALL
    SELECT event_time, extract(epoch FROM last_seen_at - event_time) * 1000 FROM dim_customers WHERE event_time >= '$t_start')
  SELECT floor(extract(epoch FROM event_time - '$t_start') / 300)::int AS w, count(*),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms)::numeric, 1)
  FROM l GROUP BY 1 ORDER BY 1")

# Least-squares slopes per hour (column, from second FROM on).
slope() {
  awk -F, -v col="$1" -v from="${2:-0}" 'NR > 1 && $1 >= from {
      n++; x = $1 / 3600; y = $col; sx += x; sy += y; sxx += x * x; sxy += x * y }
    END { d = n * sxx - sx * sx; if (n < 2 || d == 0) print 0; else printf "%.2f", (n * sxy - sx * sy) / d }' "$CSV"
}
c_slope=$(slope 2); o_slope=$(slope 3); c_slope_w=$(slope 2 300); o_slope_w=$(slope 3 300)
ck_slope=$(awk -v b="$(slope 4 300)" 'BEGIN {printf "%.2f", b / 1048576}')
dlq_added=$(( $(q "SELECT count(*) FROM dlq_events") - dlq0 ))
read -r lag_max lag_last <<< "$(awk -F, 'NR > 1 { if ($6 > m) m = $6; l = $6 } END {print m + 0, l + 0}' "$CSV")"
read -r rss_c_max rss_o_max <<< "$(awk -F, 'NR > 1 { if ($2 > a) a = $2; if ($3 > b) b = $3 } END {print a, b}' "$CSV")"
ck_first=$(awk -F, 'NR == 2 {print $4}' "$CSV"); ck_last=$(tail -n 1 "$CSV" | cut -d, -f4)
p99_first=$(echo "$latency" | head -n 1 | awk '{print $4}'); p99_last=$(echo "$latency" | tail -n 1 | awk '{print $4}')

verdict() { if awk "BEGIN {exit !($2)}"; then echo "met"; else echo "NOT MET"; fi; }
v_rss=$(verdict rss "$c_slope_w < 10 && $o_slope_w < 10")
v_ck=$(verdict ck "$ck_slope < 10")
v_dlq=$(verdict dlq "$dlq_added == 0")
v_lag=$(verdict lag "$lag_after < 16777216")
v_p99=$(verdict p99 "$p99_last <= 2 * $p99_first")

date=$(date +%F)
windows_json=$(echo "$latency" | awk 'BEGIN {printf "["} { if (NR > 1) printf ", "; printf "{\"window\": %d, \"rows\": %d, \"p50_ms\": %s, \"p99_ms\": %s, \"max_ms\": %s}", $1, $2, $3, $4, $5 } END {printf "]"}')
cat > "$OUT/soak-latest.json" <<JSON
{"date": "$date", "minutes": $MINUTES, "rate": $RATE, "simulator": "$sim_report",
 "rss_slope_mb_per_hour": {"stream_customers": $c_slope, "stream_orders": $o_slope},
 "rss_slope_after_warmup_mb_per_hour": {"stream_customers": $c_slope_w, "stream_orders": $o_slope_w},
 "rss_max_mb": {"stream_customers": $rss_c_max, "stream_orders": $rss_o_max},
 "checkpoint_bytes": {"first": $ck_first, "last": $ck_last, "slope_mb_per_hour_after_warmup": $ck_slope},
 "dlq_rows_added": $dlq_added, "slot_lag_bytes": {"max": $lag_max, "last_sample": $lag_last, "after_load": $lag_after, "seconds_to_drain": $drain_s},
 "latency_windows": $windows_json,
 "verdicts": {"rss": "$v_rss", "checkpoint": "$v_ck", "dlq": "$v_dlq", "slot_lag": "$v_lag", "p99_stable": "$v_p99"}}
JSON
cp "$CSV" "$OUT/soak-latest.csv"
{
  echo "# Soak, $date: $MINUTES min at $RATE changes/s"
  echo
  echo "\`bench/e2e/soak.sh $MINUTES $RATE $SAMPLE\` on this machine (2 cores), $CONNECTIONS writer connections. Simulator: $sim_report"
  echo
  echo "| measure | value | bound | verdict |"
  echo "|---|---|---|---|"
  echo "| RSS slope over the run, customers / orders | $c_slope / $o_slope MB/h | | |"
  echo "| RSS slope after 5 min warm-up, customers / orders | $c_slope_w / $o_slope_w MB/h | < 10 MB/h | $v_rss |"
  echo "| RSS max, customers / orders | $rss_c_max / $rss_o_max MB | | |"
  echo "| checkpoint tables, first / last sample | $ck_first / $ck_last bytes ($ck_slope MB/h after warm-up) | < 10 MB/h | $v_ck |"
  echo "| dead letters added | $dlq_added | 0 | $v_dlq |"
  echo "| replication slot lag, max / last sample / after the load | $lag_max / $lag_last / $lag_after bytes (after $drain_s s idle) | after the load < 16 MB | $v_lag |"
  echo "| p99 latency, first / last window | $p99_first / $p99_last ms | last <= 2x first | $v_p99 |"
  echo
  echo "Latency per 5-minute window (source commit -> warehouse, each row's last change):"
  echo
  echo "| window | rows | p50 ms | p99 ms | max ms |"
  echo "|---|---|---|---|---|"
  echo "$latency" | awk '{printf "| %d-%d min | %d | %s | %s | %s |\n", $1 * 5, $1 * 5 + 5, $2, $3, $4, $5}'
  echo
  echo "Samples every $SAMPLE s: soak-latest.csv."
} > "$OUT/soak-latest.md"
cat "$OUT/soak-latest.md"
