#!/bin/sh
# The deployment's least-privileged logins, made or brought up to date (idempotent): `cdc_source`
# for Debezium (sql/grants/debezium_source.sql: REPLICATION, SELECT on the captured tables, the
# publication made here) and `etl_jobs` for the jobs (sql/grants/table_jobs.sql: the warehouse
# tables, the DLQ, the checkpoint and state tables). Run by the entrypoint when it initializes the
# cluster, and by docker/startup.sh (docker exec) for volumes made before the roles existed.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=appdb}" "${CDC_SOURCE_PASSWORD:?set CDC_SOURCE_PASSWORD}" \
  "${ETL_JOBS_PASSWORD:?set ETL_JOBS_PASSWORD}"
run() { psql -X -q -h /tmp -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v ON_ERROR_STOP=1 "$@" > /dev/null; }
login() { run -v role="$1" -v pw="$2" -f /opt/sql/grants/login_role.sql; }
login cdc_source "$CDC_SOURCE_PASSWORD"
login etl_jobs "$ETL_JOBS_PASSWORD"
PGOPTIONS="-c client_min_messages=warning" run -v role=cdc_source -v publication=dataflow_cdc -f /opt/sql/grants/debezium_source.sql
PGOPTIONS="-c client_min_messages=warning" run -v role=etl_jobs -f /opt/sql/grants/table_jobs.sql
