#!/usr/bin/env bash
# Scale-out benchmark: the drain of N order events from a topic with P partitions into
# fact_orders by 1, 2 and 3 processes of stream_orders in one consumer group, side by side in one
# run on the real stack (its own state folder). Each round uses a fresh query name and group and
# starts all its processes at once; it ends when the checkpoint's per-partition offsets reach the
# end of every partition. Reported per round: events/s from start to the last commit (the
# group's rebalances as processes join included), and from the end of the first batch to the
# last (roughly the steady state).
# Everything shares this machine's cores with PostgreSQL and Kafka: on 2 cores, more processes
# cannot add CPU, only overlap one process's waits (Kafka, the warehouse) with another's work.
# Writes bench/results/scale-out-<date>.json and .md.
#   bench/e2e/scale_out.sh [N=600000] [P=3] [BATCH=30000]
set -euo pipefail
N=${1:-600000}
P=${2:-3}
BATCH=${3:-30000}
source "$(dirname "$0")/lib.sh" stream_orders

topic=bench.scale.$(date +%s)
scripts/stack partitions "$topic" "$P" 2> /dev/null
echo "generating $N events into $topic ($P partitions, keyed by order id)"
generate_events "$N" "$WORK/scale-events.tsv"
produce_events "$topic" "$WORK/scale-events.tsv"
ends=()
for p in $(seq 0 $((P - 1))); do ends+=("$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "$topic:$p:-1" | awk '{print $NF}')"); done
echo "partition sizes: ${ends[*]}"

rounds=()
for k in 1 2 3; do
  name=bench-scale-$k-$(date +%s)
  q "TRUNCATE fact_orders" > /dev/null
  pids=()
  start=$(ms_now)
  for i in $(seq 1 "$k"); do
    ORDERS_TOPIC=$topic QUERY_NAME=$name CONSUMER_GROUP=$name MAX_OFFSETS_PER_TRIGGER=$BATCH \
      SOURCE_HEALTH_INTERVAL_MS=0 KAFKA_OPTIONS=session.timeout.ms=6000,heartbeat.interval.ms=500 \
      "$BUILD/jobs/stream_orders" > "$WORK/scale-$k-$i.log" 2>&1 &
    pids+=($!)
  done
  done_sql="SELECT coalesce(sum(next_offset), 0) FROM dataflow_partition_offsets WHERE checkpoint_name = '$name'"
  while [[ $(q "$done_sql") != "$N" ]]; do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a process of round $k died" >&2; tail "$WORK"/scale-$k-*.log >&2; exit 1; }; done
    sleep 0.05
  done
  end=$(ms_now)
  kill -TERM "${pids[@]}"
  wait "${pids[@]}" || true
  rows=$(q "SELECT count(*) FROM fact_orders")
  [[ "$rows" == "$N" ]] || { echo "round $k wrote $rows rows, expected $N" >&2; exit 1; }
  owners=$(cat "$WORK"/scale-$k-*.log | grep -c "partitions assigned" || true)
  total_eps=$(awk -v n="$N" -v ms="$((end - start))" 'BEGIN {printf "%.0f", n * 1000 / ms}')
  # Sustained: from the end of the first batch (of any process) to the end of the last one, over
  # the rows committed after the first. Batch lines: "[date time] [info] NAME batch N: ROWS rows in".
  sustained_eps=$(grep -h ' batch [0-9]*: ' "$WORK"/scale-$k-*.log |
    awk '{ split($2, t, /[:.\]]/); print ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4], $7 }' | sort -n |
    awk -v n="$N" 'NR == 1 { first = $1; firstRows = $2 } { last = $1 }
      END { if (last > first) printf "%.0f", (n - firstRows) * 1000 / (last - first); else print 0 }')
  batches=$(grep -h ' batch [0-9]*: ' "$WORK"/scale-$k-*.log | wc -l)
  echo "processes=$k: ${total_eps} events/s from start, ${sustained_eps} events/s sustained, $((end - start)) ms, $batches batches, $owners assignments"
  rounds+=("{\"processes\": $k, \"events\": $N, \"wall_ms\": $((end - start)), \"events_per_second\": $total_eps, \"sustained_events_per_second\": $sustained_eps, \"batches\": $batches, \"assignments\": $owners}")
done

date_tag=$(date +%F)
json=$OUT/scale-out-$date_tag.json
printf '{"date": "%s", "partitions": %s, "batch": %s, "cores": %s, "rounds": [%s]}\n' "$date_tag" "$P" "$BATCH" "$(nproc)" \
  "$(IFS=,; echo "${rounds[*]}")" | jq . > "$json"
base=$(jq '.rounds[0].events_per_second' "$json")
{
  echo "# Scale-out across processes, $date_tag"
  echo
  echo "\`bench/e2e/scale_out.sh $N $P $BATCH\` on $(nproc) cores: $N Debezium order events in $P partitions, drained into"
  echo "fact_orders by 1, 2 and 3 processes of stream_orders in one consumer group (one run, side by side)."
  echo
  echo "| processes | events/s, start to last commit | vs 1 process | events/s after the first batch | batches | assignments | wall ms |"
  echo "|---|---|---|---|---|---|---|"
  jq -r --argjson base "$base" '.rounds[] | "| \(.processes) | \(.events_per_second) | \((.events_per_second / $base * 100 | round) / 100)x | \(.sustained_events_per_second) | \(.batches) | \(.assignments) | \(.wall_ms) |"' "$json"
} > "${json%.json}.md"
cat "${json%.json}.md"
