#!/usr/bin/env bash
# Tests of the local stack (ctest label `stack`), run against real PostgreSQL, Kafka and Debezium:
#   stack_test.sh up | cdc_events | snapshot | up_again | simulator | idle_slot | down
# `up` and `down` are the ctest fixture's setup and cleanup; DATAFLOW_STATE_DIR is set by ctest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK=$ROOT/scripts/stack
BUILD=${DATAFLOW_BUILD_DIR:?set by ctest}
export PGOPTIONS="-c client_min_messages=warning"

fail() { echo "FAIL: $*" >&2; exit 1; }
q() { psql -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
load_env() { eval "$("$STACK" env)"; }

# consume TOPIC FROM_OFFSET COUNT: prints COUNT records (kcat -J) from FROM_OFFSET, waiting up to 60 s.
consume() {
  local topic=$1 from=$2 count=$3
  wait_topic "$topic"
  timeout 60 kcat -b "$KAFKA_BOOTSTRAP" -C -t "$topic" -o "$from" -c "$count" -J -q \
    || fail "fewer than $count records arrived in $topic within 60 s"
}
# consume_key TOPIC FROM COUNT ID: the first COUNT records from offset FROM whose key is
# {"id":ID}; records of other keys (e.g. the simulator's, still arriving) are skipped.
consume_key() {
  local topic=$1 from=$2 count=$3 id=$4 out=""
  wait_topic "$topic"
  for _ in $(seq 1 300); do
    out=$(kcat -b "$KAFKA_BOOTSTRAP" -C -t "$topic" -o "$from" -e -J -q |
      jq -c --argjson id "$id" 'select(((.key // "{}") | fromjson? | .id?) == $id)' | head -n "$count")
    (($(grep -c . <<< "$out") >= count)) && { echo "$out"; return 0; }
    sleep 0.2
  done
  fail "fewer than $count records keyed $id arrived in $topic within 60 s"
}
# Topics appear with their first record; wait for one (up to 60 s).
wait_topic() {
  for _ in $(seq 1 300); do
    kcat -b "$KAFKA_BOOTSTRAP" -L -t "$1" 2>/dev/null | grep -q "partition 0," && return 0
    sleep 0.2
  done
  fail "topic $1 did not appear within 60 s"
}
# The next offset of partition 0, or 0 when the topic does not exist yet.
end_offset() {
  local out; out=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "$1:0:-1" 2>/dev/null | awk '{print $NF}') || true
  [[ "$out" =~ ^[0-9]+$ ]] && echo "$out" || echo 0
}

case "${1:-}" in
  up)
    "$STACK" reset > /dev/null 2>&1 || true
    "$STACK" up
    "$STACK" status
    ;;

  cdc_events)
    # Inserts, updates and deletes on both tables arrive as c, u, d and a tombstone, with
    # source.lsn increasing per key.
    load_env
    c0=$(end_offset dbserver1.public.customers); o0=$(end_offset dbserver1.public.orders)
    cid=$(q "INSERT INTO customers (email, country) VALUES ('stack-test-$$@example.com', 'US') RETURNING id")
    q "UPDATE customers SET country = 'CA' WHERE id = $cid" > /dev/null
    oid=$(q "INSERT INTO orders (customer_id, amount, status) VALUES ($cid, 30.50, 'pending') RETURNING id")
    q "UPDATE orders SET status = 'paid', amount = 1.10 WHERE id = $oid" > /dev/null
    q "DELETE FROM orders WHERE id = $oid" > /dev/null
    q "DELETE FROM customers WHERE id = $cid" > /dev/null

    customers=$(consume_key dbserver1.public.customers "$c0" 4 "$cid")
    ops=$(echo "$customers" | jq -r 'if .payload == null then "tombstone" else (.payload | fromjson | .op) end' | paste -sd,)
    [[ "$ops" == "c,u,d,tombstone" ]] || fail "customers events were $ops, expected c,u,d,tombstone"
    echo "$customers" | jq -s -e --arg id "$cid" '[.[] | select(.payload != null) | .payload | fromjson
      | (.after // .before).id == ($id | tonumber)] | all' > /dev/null || fail "customer events carry another id than $cid"
    country=$(echo "$customers" | jq -r 'select(.payload != null) | .payload | fromjson | select(.op == "u") | .after.country')
    [[ "$country" == CA ]] || fail "update event has country=$country"
    tombstone_key=$(echo "$customers" | jq -r 'select(.payload == null) | .key')
    [[ $(echo "$tombstone_key" | jq -r .id) == "$cid" ]] || fail "tombstone key is $tombstone_key"

    orders=$(consume_key dbserver1.public.orders "$o0" 4 "$oid")
    ops=$(echo "$orders" | jq -r 'if .payload == null then "tombstone" else (.payload | fromjson | .op) end' | paste -sd,)
    [[ "$ops" == "c,u,d,tombstone" ]] || fail "orders events were $ops, expected c,u,d,tombstone"
    amount=$(echo "$orders" | jq -r 'select(.payload != null) | .payload | fromjson | select(.op == "c") | .after.amount')
    [[ "$amount" == "30.50" ]] || fail "insert amount is $amount (decimal.handling.mode=string expected \"30.50\")"
    for events in "$customers" "$orders"; do
      echo "$events" | jq -s -e '[.[] | select(.payload != null) | .payload | fromjson | .source.lsn]
        | . as $l | [range(1; length)] | all(. as $i | $l[$i] > $l[$i - 1])' > /dev/null \
        || fail "source.lsn does not increase per key"
    done
    echo "cdc_events: ok (customer $cid, order $oid)"
    ;;

  snapshot)
    # Rows that exist before a connector is registered arrive as snapshot reads (op = r).
    load_env
    q "INSERT INTO customers (email, country) VALUES ('snapshot-$$@example.com', 'JP')" > /dev/null
    expected=$(q "SELECT count(*) FROM customers")
    jq --arg port "$PGPORT" '.config + {"topic.prefix": "snaptest", "slot.name": "snaptest", "publication.name": "snaptest",
         "database.hostname": "127.0.0.1", "database.port": $port, "database.user": "postgres",
         "database.password": "postgres", "database.dbname": "appdb", "table.include.list": "public.customers"}' \
       "$ROOT/scripts/cdc/debezium-connector.json" |
      curl -sf -X PUT -H 'Content-Type: application/json' --data @- "$CONNECT_URL/connectors/snaptest/config" > /dev/null
    records=$(consume snaptest.public.customers 0 "$expected")
    curl -sf -X DELETE "$CONNECT_URL/connectors/snaptest" > /dev/null
    for _ in $(seq 1 50); do
      [[ -z $(q "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'snaptest' AND active") ]] && break; sleep 0.2
    done
    q "SELECT pg_drop_replication_slot('snaptest')" > /dev/null
    q "DROP PUBLICATION IF EXISTS snaptest" > /dev/null
    reads=$(echo "$records" | jq -r '.payload | fromjson | .op' | sort | uniq -c | awk '{print $2"="$1}' | paste -sd,)
    [[ "$reads" == "r=$expected" ]] || fail "snapshot gave $reads, expected r=$expected"
    echo "$records" | jq -s -e '[.[] | .payload | fromjson | .after.email] | any(. == "snapshot-'"$$"'@example.com")' > /dev/null \
      || fail "the pre-existing row is not in the snapshot"
    echo "snapshot: ok ($expected rows read)"
    ;;

  up_again)
    # A second `up` is harmless: same processes, connector still running.
    load_env
    before=$(cat "$DATAFLOW_STATE_DIR/kafka/pid" "$DATAFLOW_STATE_DIR/connect/pid")
    "$STACK" up
    after=$(cat "$DATAFLOW_STATE_DIR/kafka/pid" "$DATAFLOW_STATE_DIR/connect/pid")
    [[ "$before" == "$after" ]] || fail "up restarted running components"
    "$STACK" status | grep -q "connector postgres-cdc: RUNNING" || fail "connector not RUNNING after a second up"
    echo "up_again: ok"
    ;;

  simulator)
    # Same seed and same starting rows: same operations. Bad flags: a message naming the flag.
    load_env
    sim=$BUILD/jobs/simulate_writes
    run_fresh() {
      PGDATABASE=postgres q "DROP DATABASE IF EXISTS simtest" > /dev/null
      PGDATABASE=postgres q "CREATE DATABASE simtest" > /dev/null
      PG_URL="postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/simtest" "$ROOT/scripts/migrate.sh" > /dev/null
      PGDATABASE=simtest "$sim" --ops 300 --sleep-ms 0 --batch 7 --seed "$1" --verbose 2> /dev/null | grep -v '^simulate_writes:'
    }
    a=$(run_fresh 42); b=$(run_fresh 42); c=$(run_fresh 43)
    [[ $(echo "$a" | wc -l) == 300 ]] || fail "expected 300 operations, got $(echo "$a" | wc -l)"
    [[ "$a" == "$b" ]] || fail "seed 42 gave two different sequences"
    [[ "$a" != "$c" ]] || fail "seeds 42 and 43 gave the same sequence"
    for kind in insert update delete; do echo "$a" | grep -q "^$kind " || fail "no $kind in the sequence"; done
    fks=$(PGDATABASE=simtest q "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL")
    [[ "$fks" == 0 ]] || fail "$fks orders without a customer"
    # Another client deletes customers all the while: the simulator's orders for a customer that
    # was just deleted fail on the foreign key; it skips them, reloads, goes on, and says so.
    ( while :; do PGDATABASE=simtest q "DELETE FROM customers WHERE id IN (SELECT id FROM customers ORDER BY random() LIMIT 3)" > /dev/null 2>&1; sleep 0.01; done ) &
    deleter=$!
    rc=0; raced=$(PGDATABASE=simtest "$sim" --ops 600 --sleep-ms 0 --insert-p 0.8 --update-p 0.15 --delete-p 0.05 --seed 5 2>&1) || rc=$?
    kill "$deleter"; wait "$deleter" 2>/dev/null || true
    ((rc == 0)) || fail "the simulator stopped on a race with another client (exit $rc): $(echo "$raced" | tail -n 2)"
    echo "$raced" | grep -Eq "skipped [0-9]+ transaction\(s\) that lost a race with another client \(.*foreign_key=[0-9]+" ||
      fail "no foreign-key race reported: $(echo "$raced" | tail -n 2)"
    # Several writers at once, each on its own connection: every operation counted once (committed
    # or skipped), the tables consistent.
    multi=$(PGDATABASE=simtest "$sim" --ops 400 --connections 3 --sleep-ms 0 --seed 9 2>&1) ||
      fail "three writers failed: $(echo "$multi" | tail -n 2)"
    echo "$multi" | grep -q "seed 9, 3 connections" || fail "no writer count: $multi"
    echo "$multi" | grep -Eq "^simulate_writes: 4[0-9]{2} ops|^simulate_writes: 3[0-9]{2} ops" || fail "no summary: $multi"
    committed=$(echo "$multi" | sed -n 's/^simulate_writes: \([0-9]*\) ops.*/\1/p')
    skipped=$(echo "$multi" | sed -n 's/.*skipped \([0-9]*\) transaction.*/\1/p')
    ((committed + ${skipped:-0} == 400)) || fail "400 operations asked, $committed committed + ${skipped:-0} skipped"
    fks=$(PGDATABASE=simtest q "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL")
    [[ "$fks" == 0 ]] || fail "$fks orders without a customer after three writers"
    PGDATABASE=postgres q "DROP DATABASE simtest" > /dev/null
    check_flag() {
      local out rc=0; out=$("$sim" "$@" 2>&1) || rc=$?
      ((rc != 0)) || fail "simulate_writes $* succeeded"
      echo "$out" | grep -q -- "$1" || fail "message for '$*' does not name $1: $out"
    }
    check_flag --insert-p 1.5 --update-p 0 --delete-p 0
    check_flag --delete-p -0.1
    check_flag --update-p 0.9
    check_flag --rate abc
    check_flag --no-such-flag
    check_flag --connections 0
    summary=$(PGDATABASE=appdb "$sim" --ops 50 --rate 500 --seed 1 2>&1)
    echo "$summary" | grep -Eq "50 ops \(inserts=[0-9]+ updates=[0-9]+ deletes=[0-9]+\) in [0-9.]+ s, [0-9.]+ ops/s" \
      || fail "no summary line: $summary"
    echo "simulator: ok"
    ;;

  idle_slot)
    # Debezium's slot keeps up while customers and orders are idle: WAL written elsewhere (8 MB
    # into a table outside the publication) is released by the next heartbeat's captured write
    # (cdc.heartbeat), not held until the next change of a captured table.
    load_env
    slot=$(jq -r '.config["slot.name"]' "$ROOT/scripts/cdc/debezium-connector.json")
    q "DROP TABLE IF EXISTS stack_test_idle_wal"
    q "CREATE TABLE stack_test_idle_wal (pad text)"
    q "INSERT INTO stack_test_idle_wal SELECT repeat(md5(g::text), 32) FROM generate_series(1, 8000) g"
    q "DROP TABLE stack_test_idle_wal"
    target=$(q "SELECT pg_current_wal_lsn()")
    beat=$(q "SELECT coalesce(max(beat_at), '-infinity') FROM cdc.heartbeat")
    for _ in $(seq 1 300); do
      [[ $(q "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$slot'") == t ]] && break
      sleep 0.2
    done
    lag=$(q "SELECT pg_size_pretty(pg_wal_lsn_diff('$target', confirmed_flush_lsn)) FROM pg_replication_slots WHERE slot_name = '$slot'")
    [[ $(q "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$slot'") == t ]] \
      || fail "slot $slot still holds $lag of WAL 60 s after it was written, the captured tables idle"
    [[ $(q "SELECT max(beat_at) > '$beat' FROM cdc.heartbeat") == t ]] || fail "Debezium's heartbeat did not write cdc.heartbeat"
    echo "idle_slot: ok"
    ;;

  down)
    # `down` stops everything it started and leaves no process and no listening port.
    load_env
    pids=$(cat "$DATAFLOW_STATE_DIR"/{kafka,connect}/pid 2>/dev/null || true)
    ports="$PGPORT ${KAFKA_BOOTSTRAP##*:} ${CONNECT_URL##*:}"
    "$STACK" down
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && fail "process $pid still alive after down"; done
    for port in $ports; do ss -ltnH "sport = :$port" | grep -q . && fail "port $port still listening after down"; done
    pgrep -f "$DATAFLOW_STATE_DIR" > /dev/null && fail "a process still runs from $DATAFLOW_STATE_DIR"
    echo "down: ok"
    ;;

  *) echo "usage: $0 up|cdc_events|snapshot|up_again|simulator|down" >&2; exit 2 ;;
esac
