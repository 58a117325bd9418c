#!/usr/bin/env bash
# The supervisor's status page in headless Chromium (label unit): a job under the supervisor, its
# batches, rates chart and dead letters on the page; a screenshot is kept in the build folder.
set -euo pipefail
DATAFLOW=${1:?dataflow program}
DEMO=${2:?demo job}
OUT=${3:?output folder}
mkdir -p "$OUT"
export DATAFLOW_HOME=$(mktemp -d)
source "$(dirname "$0")/../../scripts/lib/ports.sh"   # free_port: outside the ephemeral range
export DATAFLOW_UI_PORT=$(free_port)
export DATAFLOW_METRICS_BASE_PORT=$(free_port "$DATAFLOW_UI_PORT")
trap 'kill -TERM "$sup" 2>/dev/null; wait "$sup" 2>/dev/null; rm -rf "$DATAFLOW_HOME"' EXIT
fail() { echo "FAIL: $*" >&2; cat "$DATAFLOW_HOME/supervisor.log" >&2 || true; exit 1; }

"$DATAFLOW" supervise > "$DATAFLOW_HOME/supervisor.log" 2>&1 &
sup=$!
for _ in $(seq 1 50); do [[ -S "$DATAFLOW_HOME/supervisor.sock" ]] && break; sleep 0.1; done
"$DATAFLOW" submit --name demo "$DEMO" > /dev/null
url=http://127.0.0.1:$DATAFLOW_UI_PORT
for _ in $(seq 1 100); do
  n=$(curl -sf "$url/api/jobs" | jq '[.[] | select(.name == "demo") | (.progress // []) | length] | add // 0')
  [[ "$n" -ge 3 ]] && break
  sleep 0.2
done
api=$(curl -sf "$url/api/jobs") || fail "/api/jobs"
echo "$api" | jq -e '.[0].name == "demo" and .[0].state == "running" and (.[0].progress | length) >= 3
  and (.[0].deadLetters | length) > 0 and .[0].deadLetters[-1].kind == "demo_error"' > /dev/null || fail "/api/jobs: $api"

chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
        --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --virtual-time-budget=4000 --window-size=1200,1000)
dom=$("${chrome[@]}" --dump-dom "$url/" 2>/dev/null) || fail "chromium could not load the page"
echo "$api" | jq -e '.[0].progress[-1].stateOperators[0].numRowsTotal == 10 and (.[0].progress[-1].eventTime.watermark | length) > 0' > /dev/null \
  || fail "progress lacks the state operator or the watermark: $(echo "$api" | jq -c '.[0].progress[-1]')"
metrics=$(curl -sf "http://127.0.0.1:$(echo "$api" | jq -r '.[0].metricsPort')/metrics") || fail "/metrics of the demo job"
for needle in 'dataflow_state_rows{operator="0:stateStoreSave",query="demo"} 10' 'dataflow_watermark_seconds{query="demo"}' \
              'dataflow_state_memory_bytes{operator="0:stateStoreSave"' 'dataflow_state_rows_updated_total{operator="0:stateStoreSave"'; do
  [[ "$metrics" == *"$needle"* ]] || fail "/metrics lacks '$needle'"
done
for needle in "demo" "running" "input rows/s" "processed rows/s" "<polyline" "demo_error" "latest dead letters" \
              "rows in state" "watermark"; do
  [[ "$dom" == *"$needle"* ]] || fail "the rendered page lacks '$needle'"
done
# Unauthenticated endpoints: on loopback only by default, and nothing but GET is served.
mport=$(echo "$api" | jq -r '.[0].metricsPort')
for port in "$DATAFLOW_UI_PORT" "$mport"; do
  bound=$(ss -ltnH "sport = :$port" | awk '{print $4}' | sort -u | paste -sd' ')
  [[ "$bound" == "127.0.0.1:$port" ]] || fail "port $port listens on '$bound', expected 127.0.0.1 only"
done
for target in "$url/" "$url/api/jobs" "http://127.0.0.1:$mport/metrics" "http://127.0.0.1:$mport/progress" \
              "http://127.0.0.1:$mport/healthz" "http://127.0.0.1:$mport/deadletters"; do
  for method in POST PUT DELETE PATCH; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X "$method" --data x "$target")
    ((code >= 400)) || fail "$method $target answered $code"
  done
done
"${chrome[@]}" --screenshot="$OUT/status-page.png" "$url/" > /dev/null 2>&1 || fail "screenshot"
size=$(stat -c %s "$OUT/status-page.png")
((size > 10000)) || fail "screenshot too small ($size bytes)"
echo "status page: ok (screenshot $OUT/status-page.png, $size bytes)"
