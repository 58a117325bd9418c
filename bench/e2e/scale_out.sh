#!/usr/bin/env bash
# Scale-out benchmark: the drain of N order events from a topic with P partitions into
# fact_orders by 1, 2 and 3 processes of stream_orders in one consumer group, side by side in one
# run on the real stack (its own state folder). Each round uses a fresh query name and group and
# starts all its processes at once; it ends when the checkpoint's per-partition offsets reach the
# end of every partition. Reported per round: events/s from start to the last commit, and from
# the first commit to the last (without process start-up and the group's first rebalance).
# Everything shares this machine's cores with PostgreSQL and Kafka: on 2 cores, more processes
# cannot add CPU, only overlap one process's waits (Kafka, the warehouse) with another's work.
# Writes bench/results/scale-out-<date>.json and .md.
#   bench/e2e/scale_out.sh [N=300000] [P=3] [BATCH=40000]
set -euo pipefail
N=${1:-300000}
P=${2:-3}
BATCH=${3:-40000}
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
  read -r first_ms last_ms <<< "$(q "SELECT (extract(epoch FROM min(committed_at)) * 1000)::bigint, (extract(epoch FROM max(committed_at)) * 1000)::bigint FROM dataflow_partition_offsets WHERE checkpoint_name = '$name'" | tr '|' ' ')"
  # Rows committed by the first commit are not part of the sustained window.
  owners=$(cat "$WORK"/scale-$k-*.log | grep -c "partitions assigned" || true)
  first_rows=$(grep -h ' batch 0: ' "$WORK"/scale-$k-*.log | awk '{print $6}' | sort -n | head -n 1)
  total_eps=$(awk -v n="$N" -v ms="$((end - start))" 'BEGIN {printf "%.0f", n * 1000 / ms}')
  sustained_eps=$(awk -v n="$N" -v f="${first_rows:-0}" -v ms="$((last_ms - first_ms))" 'BEGIN {if (ms > 0) printf "%.0f", (n - f) * 1000 / ms; else print 0}')
  first_commit_ms=$(( $(q "SELECT (extract(epoch FROM min(leased_at)) * 1000)::bigint FROM dataflow_partition_offsets WHERE checkpoint_name = '$name'") - start ))
  echo "processes=$k: ${total_eps} events/s from start, ${sustained_eps} events/s sustained, $((end - start)) ms, first lease after ${first_commit_ms} ms, $owners assignments"
  rounds+=("{\"processes\": $k, \"events\": $N, \"wall_ms\": $((end - start)), \"events_per_second\": $total_eps, \"sustained_events_per_second\": $sustained_eps, \"first_lease_ms\": $first_commit_ms, \"assignments\": $owners}")
done

date_tag=$(date +%F)
json=$OUT/scale-out-$date_tag.json
printf '{"date": "%s", "partitions": %s, "batch": %s, "cores": %s, "rounds": [%s]}\n' "$date_tag" "$P" "$BATCH" "$(nproc)" \
  "$(IFS=,; echo "${rounds[*]}")" | jq . > "$json"
base=$(jq '.rounds[0].sustained_events_per_second' "$json")
{
  echo "# Scale-out across processes, $date_tag"
  echo
  echo "\`bench/e2e/scale_out.sh $N $P $BATCH\` on $(nproc) cores: $N Debezium order events in $P partitions, drained into"
  echo "fact_orders by 1, 2 and 3 processes of stream_orders in one consumer group (one run, side by side)."
  echo
  echo "| processes | events/s from start | events/s sustained | vs 1 process (sustained) | wall ms |"
  echo "|---|---|---|---|---|"
  jq -r --argjson base "$base" '.rounds[] | "| \(.processes) | \(.events_per_second) | \(.sustained_events_per_second) | \((.sustained_events_per_second / $base * 100 | round) / 100)x | \(.wall_ms) |"' "$json"
} > "${json%.json}.md"
cat "${json%.json}.md"
