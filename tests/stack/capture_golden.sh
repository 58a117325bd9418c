#!/usr/bin/env bash
# Captures real Debezium change events from the running stack into tests/data/debezium/: the golden
# inputs of the parser's unit tests. Two capture connectors run beside the pipeline's own:
#   plain  - the pipeline's settings: schemas.enable=false, decimal.handling.mode=string
#   schema - the JsonConverter default: schemas.enable=true, decimal.handling.mode=precise
# Each sees a snapshot (op=r) of rows that existed before it was registered, then an insert, an
# update, a delete (and its tombstone) on customers, orders and a table of many column types.
#
#   scripts/stack reset && scripts/stack up && tests/stack/capture_golden.sh
# (on an empty stack, so that the snapshot holds only the rows this script writes)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
eval "$("$ROOT/scripts/stack" env)"
OUT=$ROOT/tests/data/debezium
mkdir -p "$OUT"
export PGOPTIONS="-c client_min_messages=warning"
q() { psql -X -q -v ON_ERROR_STOP=1 -c "$1" > /dev/null; }

q "DROP TABLE IF EXISTS public.golden_types"
q "CREATE TABLE public.golden_types (
     id bigint PRIMARY KEY, flag boolean, small smallint, big bigint, ratio double precision,
     price numeric(12,2), exact numeric(20,4), anyscale numeric, day date, at_time time,
     ts timestamp, ts_ms timestamp(3), tstz timestamptz, payload jsonb, uid uuid, raw bytea,
     note text)"
q "INSERT INTO public.golden_types VALUES (1, true, 7, 9007199254740993, 0.25, 30.50, 22.2200, 3.14159,
     '2024-02-29', '13:45:30.123456', '2024-02-29 13:45:30.123456', '2024-02-29 13:45:30.123',
     '2024-02-29 13:45:30.123456+02', '{\"a\": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '\\xdeadbeef', 'snapshot row')"
q "INSERT INTO public.customers (email, country) VALUES ('golden-snapshot@example.com', 'NO')
     ON CONFLICT (email) DO NOTHING"
q "INSERT INTO public.orders (customer_id, amount, status)
     SELECT id, 12.34, 'shipped' FROM public.customers WHERE email = 'golden-snapshot@example.com'"

register() {
  local name=$1 prefix=$2 schemas=$3 decimals=$4
  jq -n --arg prefix "$prefix" --arg schemas "$schemas" --arg decimals "$decimals" --arg port "$PGPORT" \
        --arg slot "golden_$prefix" '{
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput", "database.hostname": "127.0.0.1", "database.port": $port,
    "database.user": "postgres", "database.password": "postgres", "database.dbname": "appdb",
    "topic.prefix": $prefix, "slot.name": $slot, "publication.name": $slot,
    "publication.autocreate.mode": "filtered",
    "table.include.list": "public.customers,public.orders,public.golden_types",
    "snapshot.mode": "initial", "decimal.handling.mode": $decimals,
    "key.converter": "org.apache.kafka.connect.json.JsonConverter", "key.converter.schemas.enable": $schemas,
    "value.converter": "org.apache.kafka.connect.json.JsonConverter", "value.converter.schemas.enable": $schemas}' |
  curl -sf -X PUT -H 'Content-Type: application/json' --data @- "$CONNECT_URL/connectors/$name/config" > /dev/null
  for _ in $(seq 1 300); do
    curl -sf "$CONNECT_URL/connectors/$name/status" | jq -e '.tasks[0].state == "RUNNING"' > /dev/null 2>&1 && return
    sleep 0.2
  done
  echo "capture connector $name did not start" >&2; exit 1
}
unregister() {
  curl -sf -X DELETE "$CONNECT_URL/connectors/$1" > /dev/null || true
  sleep 2
  q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'golden_$2' AND NOT active"
  q "DROP PUBLICATION IF EXISTS golden_$2"
}

register golden-plain gplain false string
register golden-schema gschema true precise
sleep 3  # let both snapshots finish before the streaming changes
q "INSERT INTO public.golden_types VALUES (2, false, -7, -1, -0.5, -1.10, 0, 0, '1970-01-01', '00:00:00',
     '1970-01-01 00:00:00', '1970-01-01 00:00:00', 'infinity', 'null', NULL, '', repeat('x', 3000))"
q "UPDATE public.golden_types SET note = 'updated', price = 1234567890.12 WHERE id = 1"
q "DELETE FROM public.golden_types WHERE id = 2"
q "INSERT INTO public.customers (email, country) VALUES ('golden-insert@example.com', 'SE')"
q "UPDATE public.customers SET country = 'FI' WHERE email = 'golden-insert@example.com'"
q "INSERT INTO public.orders (customer_id, amount, status)
     SELECT id, 99.99, 'pending' FROM public.customers WHERE email = 'golden-insert@example.com'"
q "UPDATE public.orders SET status = 'paid' WHERE amount = 99.99"
q "DELETE FROM public.customers WHERE email = 'golden-insert@example.com'"
sleep 3

for prefix in gplain gschema; do
  mode=${prefix#g}
  for table in customers orders golden_types; do
    kcat -b "$KAFKA_BOOTSTRAP" -C -t "$prefix.public.$table" -o beginning -e -q -J > "$OUT/$mode-$table.jsonl"
    echo "captured $(wc -l < "$OUT/$mode-$table.jsonl") records: tests/data/debezium/$mode-$table.jsonl"
  done
done
unregister golden-plain gplain
unregister golden-schema gschema
q "DELETE FROM public.customers WHERE email = 'golden-snapshot@example.com'"
q "DROP TABLE public.golden_types"
