#!/usr/bin/env bash
# The table job vs the stateless job, side by side in one run on the real stack: N order events
# over C customers preloaded into a topic (Debezium's own output shape, from a captured event with
# the order id, customer, amount and LSN varied), drained by stream_orders (into fact_orders) and
# then by customer_order_stats (asTable -> groupBy(customer) -> 7 aggregates, into
# customer_order_stats) with --available-now, once as one partition of groups in the process and
# once regrouped through an internal Kafka topic (REPARTITION=kafka, what scale-out uses): events/s
# from process start, first committed batch, peak RSS. Writes bench/results/tables-latest.md.
#   bench/e2e/tables.sh [N=200000] [C=100000]
set -euo pipefail
N=${1:-200000}
C=${2:-100000}
source "$(dirname "$0")/lib.sh" stream_orders customer_order_stats

topic=bench.tables.$(date +%s)
template=$(jq -r '.payload' tests/data/debezium/plain-orders.jsonl | sed -n 2p)
T="$template" awk -v n="$N" -v c="$C" 'BEGIN {
  t = ENVIRON["T"];
  sub(/"after":\{"id":[0-9]+/, "\"after\":{\"id\":\001", t);
  sub(/"customer_id":[0-9]+/, "\"customer_id\":\001", t);
  sub(/"amount":"[0-9.]+"/, "\"amount\":\"\001\"", t);
  sub(/"lsn":[0-9]+/, "\"lsn\":\001", t);
  split(t, p, "\001");
  for (i = 1; i <= n; i++) {
    printf "{\"id\":%d}\t%s%d%s%d%s%d.%02d%s%d%s\n", i, p[1], i, p[2], (i * 7919) % c + 1, p[3], i % 100000, i % 90 + 10, p[4], 1000000 + i, p[5];
  }
}' > "$WORK/table-events.tsv"
produce_events "$topic" "$WORK/table-events.tsv"
q "TRUNCATE fact_orders, customer_order_stats" > /dev/null

# drain JOB [REPARTITION]: prints "events/s first-batch-ms peak-rss-mb"
drain() {
  local start end pid rss first
  start=$(ms_now)
  ORDERS_TOPIC=$topic QUERY_NAME=bench-$1-$start MAX_OFFSETS_PER_TRIGGER=${BENCH_BATCH:-30000} REPARTITION=${2:-none} \
    "$BUILD/jobs/$1" --available-now > "$WORK/$1.log" 2>&1 &
  pid=$!
  rss=$(peak_rss_until_exit "$pid")
  wait "$pid" || { tail "$WORK/$1.log" >&2; exit 1; }
  end=$(ms_now)
  first=$(( $(date -d "$(grep -m1 ' batch 0:' "$WORK/$1.log" | sed 's/^\[\([^]]*\)\].*/\1/')" +%s%3N) - start ))
  echo "$(awk -v n="$N" -v ms="$((end - start))" 'BEGIN {printf "%.0f", n * 1000 / ms}') $first $rss"
}
read -r s_eps s_first s_rss <<< "$(drain stream_orders)"
expected=$(( N < C ? N : C ))
check_groups() {
  local groups
  groups=$(q "SELECT count(*) FROM customer_order_stats WHERE NOT is_deleted")
  [[ "$groups" == "$expected" ]] || { echo "customer_order_stats ($1) has $groups customers, expected $expected" >&2; exit 1; }
  q "TRUNCATE customer_order_stats" > /dev/null
}
read -r t_eps t_first t_rss <<< "$(drain customer_order_stats)"
check_groups "one partition of groups"
read -r r_eps r_first r_rss <<< "$(drain customer_order_stats kafka)"
check_groups "through Kafka"
ratio=$(awk -v a="$t_eps" -v b="$s_eps" 'BEGIN {printf "%.2f", a / b}')
r_ratio=$(awk -v a="$r_eps" -v b="$s_eps" 'BEGIN {printf "%.2f", a / b}')
hop=$(awk -v a="$r_eps" -v b="$t_eps" 'BEGIN {printf "%.2f", a / b}')

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
cat > "$OUT/tables-latest.md" <<MD
# Table job vs stateless job ($(date -u +%Y-%m-%dT%H:%MZ))

Machine: $machine. Command: \`bench/e2e/tables.sh $N $C\`. $N order events over $C customers,
one run, one after the other on the same topic.

| job | events/s (process start to end) | first committed batch | peak RSS |
|---|---|---|---|
| stream_orders (stateless, into fact_orders) | $s_eps | $s_first ms | $s_rss MB |
| customer_order_stats (asTable, groupBy, 7 aggregates) | $t_eps (**${ratio}×**) | $t_first ms | $t_rss MB |
| customer_order_stats regrouped through Kafka (REPARTITION=kafka) | $r_eps (**${r_ratio}×**; ${hop}× the one above) | $r_first ms | $r_rss MB |

Targets (issue #13): customer_order_stats >= 0.8x the stateless job's drain rate, RSS < 150 MB with
100 k customers.
MD
cat "$OUT/tables-latest.md"
