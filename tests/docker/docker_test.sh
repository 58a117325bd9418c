#!/usr/bin/env bash
# The Docker deployment for real (label docker): the engine installed and started, the images
# built, `docker compose up --wait`, the connector registered and both jobs submitted with
# `docker exec` (scripts/docker-up); then, with the simulator running in a container of its own:
#   - the warehouse ends equal to the source;
#   - a job of the user's own, built in the SDK image and copied in with `docker cp`, runs and commits;
#   - `docker stop etl_runner` stops every job gracefully and exits 0; `docker start` resumes them;
#   - `docker kill` (SIGKILL) of the runner mid-stream, then `docker start`: exactly once still holds.
# Under CI=true a missing or unstartable engine fails the test; otherwise it is skipped (exit 77).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export ETL_PG_PORT=${ETL_PG_PORT:-25432} ETL_CONNECT_PORT=${ETL_CONNECT_PORT:-28083} ETL_UI_PORT=${ETL_UI_PORT:-24040}
export ETL_METRICS_PORTS=${ETL_METRICS_PORTS:-29400-29402}
export PG_URL="postgresql://postgres:postgres@127.0.0.1:$ETL_PG_PORT/appdb" PGOPTIONS="-c client_min_messages=warning"
compose=(docker compose -f "$ROOT/docker/compose.yml")
LOG=$(mktemp -d)
fail() {
  echo "FAIL: $*" >&2
  docker exec etl_runner dataflow list >&2 2>/dev/null || true
  docker logs --tail 20 etl_runner >&2 2>/dev/null || true
  exit 1
}
q() { psql "$PG_URL" -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
verify() { "$ROOT/scripts/verify-warehouse" --wait "${1:-90}" || fail "the warehouse does not match the source"; }
simulate() {  # simulate OPS SEED: the simulator in a container of its own (the runner image's PG_URL)
  "${compose[@]}" run --rm --no-deps --entrypoint simulate_writes runner --ops "$1" --rate 300 --batch 2 --seed "$2"
}
runner_state() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' etl_runner; }
wait_jobs_running() {
  for _ in $(seq 1 150); do
    out=$(docker exec etl_runner dataflow list 2>/dev/null || true)
    grep -Eq "^stream_customers +running" <<< "$out" && grep -Eq "^stream_orders +running" <<< "$out" && return 0
    sleep 0.2
  done
  fail "the jobs are not running: $out"
}

engine_was_running=false
"$ROOT/scripts/docker-engine" status > /dev/null 2>&1 && engine_was_running=true
forward_before=$(sysctl -n net.ipv4.ip_forward)
if ! "$ROOT/scripts/docker-engine" up > "$LOG/engine.log" 2>&1; then
  [[ "${CI:-}" == true ]] && { cat "$LOG/engine.log" >&2; fail "the Docker engine could not be installed or started"; }
  echo "SKIP: no Docker engine here: $(tail -n 1 "$LOG/engine.log")"
  exit 77
fi
teardown() {
  "${compose[@]}" --profile sdk --profile scale-out --profile direct down -v --remove-orphans > /dev/null 2>&1 || true
  $engine_was_running || "$ROOT/scripts/docker-engine" down > /dev/null 2>&1 || true
}
trap 'teardown; rm -rf "$LOG"' EXIT
"${compose[@]}" down -v --remove-orphans > /dev/null 2>&1 || true

start=$SECONDS
"$ROOT/scripts/docker-up" > "$LOG/up.log" 2>&1 || { tail -n 30 "$LOG/up.log" >&2; fail "scripts/docker-up failed"; }
echo "docker-up: $((SECONDS - start)) s; runner image $(docker image inspect -f '{{.Size}}' cdc-pipeline/runner | awk '{printf "%.0f MB", $1 / 1e6}')"
for c in etl_postgres etl_kafka etl_connect etl_runner; do
  [[ $(docker inspect -f '{{.State.Health.Status}}' "$c") == healthy ]] || fail "$c is not healthy"
done
# Every binary of the runner finds its shared libraries (a library the build links but the runtime
# packages lack shows up here by name, not as jobs restarting forever).
missing=$(docker exec etl_runner sh -c 'for b in /opt/dataflow/bin/*; do ldd "$b" | sed -n "s|^\t*\(.*\) => not found|$b: \1|p"; done' | sort -u)
[[ -z "$missing" ]] || fail "the runner image lacks shared libraries (scripts/install-deps.sh --runtime): $missing"
[[ $(docker exec etl_runner id -u) != 0 ]] || fail "the runner runs as root"
[[ $(docker exec etl_runner cat /proc/1/comm) == dataflow ]] || fail "PID 1 of the runner is not the supervisor"
docker port etl_postgres | grep -v '127.0.0.1' && fail "a port is published beyond 127.0.0.1"
wait_jobs_running

# The pipeline under load: the simulator in its own container; the warehouse follows.
simulate 600 11 > "$LOG/sim1.log" 2>&1 || { tail -n 5 "$LOG/sim1.log" >&2; fail "the simulator failed"; }
verify 120
grep -q "batch" <<< "$(docker exec etl_runner dataflow logs stream_orders)" || fail "dataflow logs shows no batch"
# Least privilege: the jobs and Debezium log in with roles of their own, not as the superuser.
jobs_users=$(q "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE application_name IN ('customers-cdc-warehouse', 'orders-cdc-warehouse')")
[[ "$jobs_users" == etl_jobs ]] || fail "the jobs log in as '$jobs_users', not etl_jobs"
cdc_users=$(q "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_replication")
[[ "$cdc_users" == cdc_source ]] || fail "Debezium logs in as '$cdc_users', not cdc_source"

# A job of the user's own: built against the SDK image, copied in, submitted.
"${compose[@]}" --profile sdk run --rm --no-deps -v "$ROOT/examples/external_job:/job:ro" -v "$LOG:/out" sdk -c \
  'cmake -S /job -B /tmp/build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build /tmp/build > /dev/null && cp /tmp/build/word_lengths /out/' \
  > "$LOG/sdk.log" 2>&1 || { tail -n 20 "$LOG/sdk.log" >&2; fail "a job could not be built in the SDK image"; }
docker cp "$LOG/word_lengths" etl_runner:/var/lib/dataflow/word_lengths
docker exec etl_runner dataflow submit /var/lib/dataflow/word_lengths > /dev/null
for _ in $(seq 1 100); do docker exec etl_runner dataflow list | grep -Eq "^word_lengths +finished" && break; sleep 0.2; done
docker exec etl_runner dataflow list | grep -Eq "^word_lengths +finished" || fail "the user's job did not finish"
grep -q "batch 0: 3 words, 17 letters" <<< "$(docker exec etl_runner dataflow logs word_lengths)" || fail "the user's job did not run its batch"

# docker stop: every job commits its batch, the container exits 0 within the stop timeout.
simulate 300 12 > "$LOG/sim2.log" 2>&1 &
sim=$!
sleep 1
t0=$SECONDS
docker stop -t 70 etl_runner > /dev/null
[[ $(runner_state) == "exited 0" ]] || fail "docker stop: the runner ended '$(runner_state)', expected exited 0"
echo "docker stop: $((SECONDS - t0)) s, exit 0"
docker start etl_runner > /dev/null
wait_jobs_running
wait "$sim" || fail "the simulator failed during the stop"
verify 120

# docker kill (SIGKILL) mid-stream, then start: nothing lost, nothing doubled.
simulate 600 13 > "$LOG/sim3.log" 2>&1 &
sim=$!
sleep 1.5
docker kill etl_runner > /dev/null
docker start etl_runner > /dev/null
wait_jobs_running
wait "$sim" || fail "the simulator failed during the kill"
verify 120
dead=$(q "SELECT count(*) FROM dlq_events")
[[ "$dead" == 0 ]] || fail "$dead dead letters from well-formed changes"

# Scale-out profile: three orders workers in one consumer group share the topic's 3 partitions
# (continuing from the runner's checkpoint, whose stream_orders is stopped first).
docker exec etl_runner dataflow stop stream_orders > /dev/null
docker exec etl_kafka java -cp '/opt/kafka/libs/*' org.apache.kafka.tools.TopicCommand --bootstrap-server localhost:9092 \
  --alter --topic dbserver1.public.orders --partitions 3 > /dev/null 2>&1 || fail "could not add partitions"
"${compose[@]}" --profile scale-out up -d --no-deps --scale orders-worker=3 orders-worker > "$LOG/scale.log" 2>&1 ||
  { cat "$LOG/scale.log" >&2; fail "the scale-out profile did not start"; }
workers=$("${compose[@]}" --profile scale-out ps -q orders-worker | wc -l)
((workers == 3)) || fail "$workers orders workers, expected 3"
for _ in $(seq 1 300); do  # the group settles with a partition for every worker
  owners=0
  for c in $("${compose[@]}" --profile scale-out ps -q orders-worker); do
    grep -q "partitions assigned" <<< "$(docker logs "$c" 2>&1)" && owners=$((owners + 1))
  done
  ((owners == 3)) && break
  sleep 0.2
done
((owners == 3)) || fail "only $owners of 3 workers were assigned partitions"
simulate 600 14 > "$LOG/sim4.log" 2>&1 || fail "the simulator failed while scaled out"
verify 120

# Direct profile: a runner whose jobs read PostgreSQL's replication stream themselves (no Kafka),
# here into a warehouse database of its own, so that its rows are its own.
q "CREATE DATABASE direct" > /dev/null
direct_url=${PG_URL%/*}/direct
PG_URL=$direct_url "$ROOT/scripts/migrate.sh" > /dev/null || fail "migrations of the direct warehouse failed"
"${compose[@]}" --profile direct up -d --no-deps --wait runner-direct > "$LOG/direct.log" 2>&1 ||
  { cat "$LOG/direct.log" >&2; fail "the direct profile did not start"; }
docker exec etl_runner_direct dataflow submit --name direct-orders stream_orders --query-name direct-orders \
  --pg-url postgresql://postgres:postgres@postgres:5432/direct --source-pg-url postgresql://postgres:postgres@postgres:5432/appdb \
  > /dev/null || fail "submitting the direct job failed"
simulate 300 15 > "$LOG/sim5.log" 2>&1 || fail "the simulator failed beside the direct job"
source_orders="SELECT string_agg(id::text || ':' || status || ':' || amount, ',' ORDER BY id) FROM orders"
direct_orders="SELECT string_agg(order_id::text || ':' || status || ':' || amount, ',' ORDER BY order_id) FROM fact_orders WHERE NOT is_deleted"
for _ in $(seq 1 300); do
  [[ $(q "$source_orders") == $(psql "$direct_url" -X -q -tA -c "$direct_orders") ]] && break
  sleep 0.3
done
[[ $(q "$source_orders") == $(psql "$direct_url" -X -q -tA -c "$direct_orders") ]] ||
  fail "the direct job's fact_orders differs from the source: $(docker exec etl_runner_direct dataflow logs direct-orders 2>&1 | tail -n 5)"
[[ $(q "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dataflow_direct_orders'") == 1 ]] || fail "no slot for the direct job"

# Torn down: containers, networks, volumes, and the engine with the host settings it changed.
trap 'rm -rf "$LOG"' EXIT
"${compose[@]}" --profile sdk --profile scale-out --profile direct down -v --remove-orphans > /dev/null 2>&1 || fail "compose down failed"
[[ -z $(docker ps -aq --filter label=com.docker.compose.project=cdc-pipeline) ]] || fail "containers left behind"
[[ -z $(docker volume ls -q --filter label=com.docker.compose.project=cdc-pipeline) ]] || fail "volumes left behind"
if ! $engine_was_running; then
  "$ROOT/scripts/docker-engine" down > /dev/null 2>&1 || fail "the engine did not stop"
  "$ROOT/scripts/docker-engine" status > /dev/null 2>&1 && fail "the engine is still running"
  ip link show docker0 > /dev/null 2>&1 && fail "the docker0 bridge is left behind"
  [[ $(sysctl -n net.ipv4.ip_forward) == "$forward_before" ]] || fail "net.ipv4.ip_forward was not restored"
fi
echo "docker: ok (compose up, jobs via docker exec, user's job from the SDK, stop/start, kill/start, scale-out, the direct profile, teardown)"
