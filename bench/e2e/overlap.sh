#!/usr/bin/env bash
# Overlapped batches, side by side in one run: the drain of 200 000 preloaded order events into
# fact_orders by stream_orders --available-now, sequential with 40k-record batches (the old
# default) against overlapped (OVERLAP_BATCHES=true) with 30k and 40k-record batches; three
# rounds each, interleaved. Prints events/s and peak RSS per run and writes them to
# bench/results/overlap-<date>.txt.
#   bench/e2e/overlap.sh [N=200000] [ROUNDS=3]
set -euo pipefail
N=${1:-200000}
ROUNDS=${2:-3}
source "$(dirname "$0")/lib.sh" stream_orders
topic=bench.overlap.$(date +%s)
generate_events "$N" "$WORK/overlap.tsv"
produce_events "$topic" "$WORK/overlap.tsv"
out=$OUT/overlap-$(date +%F).txt
echo "bench/e2e/overlap.sh $N $ROUNDS on $(nproc) cores, $(date -u +%FT%RZ)" > "$out"
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "false 40000" "true 30000" "true 40000"; do
    read -r overlap batch <<< "$cfg"
    q "TRUNCATE fact_orders" > /dev/null
    start=$(ms_now)
    MAX_OFFSETS_PER_TRIGGER=$batch ORDERS_TOPIC=$topic QUERY_NAME=overlap-$overlap-$batch-$round-$start \
      OVERLAP_BATCHES=$overlap SOURCE_HEALTH_INTERVAL_MS=0 "$BUILD/jobs/stream_orders" --available-now > "$WORK/overlap.log" 2>&1 &
    pid=$!
    rss=$(peak_rss_until_exit "$pid")
    wait "$pid"
    end=$(ms_now)
    rows=$(q "SELECT count(*) FROM fact_orders")
    [[ "$rows" == "$N" ]] || { echo "wrote $rows rows, expected $N" >&2; exit 1; }
    echo "overlap=$overlap batch=$batch round=$round: $((end - start)) ms = $((rows * 1000 / (end - start))) events/s, peak RSS $rss MB" | tee -a "$out"
  done
done
