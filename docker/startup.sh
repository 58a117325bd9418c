#!/usr/bin/env bash
# The original startup.sh, with Docker Compose: builds and starts PostgreSQL, Kafka, Kafka Connect
# and the runner, waits for them to be healthy, registers the Debezium connector from
# scripts/cdc/debezium-connector.json, verifies it, and submits both CDC jobs to the runner's
# supervisor (scripts/docker-up first installs the engine and builds the images). Then:
#   docker exec etl_runner dataflow list
#   docker exec etl_runner dataflow logs stream_orders -f
#   docker exec etl_runner simulate_writes --sleep-ms 200 --insert-p 0.7 --update-p 0.25 --delete-p 0.05
#   docker compose -f docker/compose.yml down
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
compose=(docker compose -f "$ROOT/docker/compose.yml")
connect=http://127.0.0.1:${ETL_CONNECT_PORT:-8083}

"${compose[@]}" up -d --build --wait postgres kafka connect runner
docker exec etl_postgres postgres-roles  # a volume made before the roles existed gets them too
echo "waiting for Kafka Connect"
for _ in $(seq 1 120); do curl -sf $connect/connectors > /dev/null && break; sleep 1; done
# Debezium logs in as cdc_source, which may not create the publication (postgres-roles made it).
jq --arg pw "${ETL_CDC_SOURCE_PASSWORD:-cdc_source}" '.config | with_entries(.value |= (gsub("\\${PG_HOST}"; "postgres")
      | gsub("\\${PG_PORT}"; "5432") | gsub("\\${PG_USER}"; "cdc_source") | gsub("\\${PG_PASSWORD}"; $pw)
      | gsub("\\${PG_DB}"; "appdb"))) | .["publication.autocreate.mode"] = "disabled"' \
   "$ROOT/scripts/cdc/debezium-connector.json" |
  curl -sf -X PUT -H 'Content-Type: application/json' --data @- $connect/connectors/postgres-cdc/config > /dev/null
for _ in $(seq 1 120); do
  state=$(curl -sf $connect/connectors/postgres-cdc/status | jq -r '.connector.state + "/" + (.tasks[0].state // "none")' || true)
  [[ "$state" == RUNNING/RUNNING ]] && break
  sleep 1
done
echo "connector postgres-cdc: $state"
[[ "$state" == RUNNING/RUNNING ]] || { echo "the connector did not start"; exit 1; }
# Submitted once: the supervisor remembers its jobs across container restarts.
for job in stream_customers stream_orders; do
  docker exec etl_runner dataflow list | grep -Eq "^$job +(running|restarting)" || docker exec etl_runner dataflow submit "$job"
done
docker exec etl_runner dataflow list
