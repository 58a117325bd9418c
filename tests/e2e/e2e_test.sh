#!/usr/bin/env bash
# End-to-end tests (ctest label `e2e`) of the whole pipeline on the real stack: PostgreSQL ->
# Debezium -> Kafka -> the CDC jobs -> warehouse. Run in this order by ctest:
#   backfill manual_checks malformed mixed_workload faults warehouse_faults multi_table table_stats table_enriched table_windows metrics partitions
#   schema_change toasted_values schema_on signals secrets tls kafka_sasl least_privilege source_role scale_out windows_scale_out table_scale_out
#   direct_source
# DATAFLOW_STATE_DIR and DATAFLOW_BUILD_DIR are set by ctest; the stack fixture is up.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${DATAFLOW_BUILD_DIR:?}
export DATAFLOW_STATE_DIR=${DATAFLOW_STATE_DIR:?}
eval "$("$ROOT/scripts/stack" env)"
# Every job here logs in as the stack's warehouse role (sql/grants/table_jobs.sql), as scripts/jobs
# does; the test's own queries (psql through PG*) and the source side stay the superuser's.
ADMIN_PG_URL=$PG_URL
export PG_URL=$JOBS_PG_URL
export PGOPTIONS="-c client_min_messages=warning"
JOBS=$ROOT/scripts/jobs
SIM=$BUILD/jobs/simulate_writes
DATA=$DATAFLOW_STATE_DIR/e2e
mkdir -p "$DATA"

fail() { echo "FAIL: $*" >&2; "$JOBS" status >&2 || true; exit 1; }
q() { psql -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
# wait_sql SQL EXPECTED SECONDS: polls until the query returns EXPECTED.
wait_sql() {
  local deadline=$((SECONDS + $3)) got
  while true; do
    got=$(q "$1" 2>/dev/null || true)
    [[ "$got" == "$2" ]] && return 0
    ((SECONDS < deadline)) || fail "after $3 s, '$1' returned '$got', expected '$2'"
    sleep 0.2
  done
}
verify() { PG_URL=$ADMIN_PG_URL "$ROOT/scripts/verify-warehouse" --wait "${1:-60}" || fail "the warehouse does not match the source"; }
dlq_count() { q "SELECT count(*) FROM dlq_events"; }
# customer_order_stats against the SQL aggregation of the source: the customers that differ.
STATS_ORACLE="WITH src AS (SELECT customer_id, count(*) AS n, sum(amount) AS total, avg(amount) AS av, max(amount) AS mx,
                                min(created_at) AS f, max(created_at) AS l FROM orders GROUP BY customer_id),
                  dst AS (SELECT * FROM customer_order_stats WHERE NOT is_deleted)
             SELECT count(*) FROM src FULL JOIN dst USING (customer_id)
             WHERE src.customer_id IS NULL OR dst.customer_id IS NULL OR dst.order_count <> src.n
                OR dst.total_amount <> src.total OR abs(dst.avg_amount - src.av) > 0.000001
                OR dst.max_amount <> src.mx OR dst.first_order_at <> src.f OR dst.last_order_at <> src.l"
# orders_enriched against the SQL join of the source: the orders that differ.
ENRICHED_ORACLE="WITH src AS (SELECT o.id, o.customer_id, c.email, c.country, o.amount, o.status
                              FROM orders o LEFT JOIN customers c ON c.id = o.customer_id),
                      dst AS (SELECT * FROM orders_enriched WHERE NOT is_deleted)
                 SELECT count(*) FROM src FULL JOIN dst ON dst.order_id = src.id
                 WHERE src.id IS NULL OR dst.order_id IS NULL OR dst.customer_id IS DISTINCT FROM src.customer_id
                    OR dst.email IS DISTINCT FROM src.email OR dst.country IS DISTINCT FROM src.country
                    OR dst.amount <> src.amount OR dst.status IS DISTINCT FROM src.status"
# orders_partitions: the partitions of the orders topic, in `partitions`; at least 3 (the
# partitions test raised them) for the scale-out tests.
orders_partitions() {
  partitions=$(kcat -b "$KAFKA_BOOTSTRAP" -L -t dbserver1.public.orders | grep -c 'partition [0-9]*,') || true
  ((partitions >= 3)) || fail "dbserver1.public.orders has $partitions partitions, expected 3 (the partitions test)"
}
# group_member JOB QUERY LOG N: starts process N of a job scaled out in the consumer group the
# caller exported (CONSUMER_GROUP), logging to $DATA/LOG-N.log; its pid in member_pid.
group_member() {
  QUERY_NAME=$2 "$BUILD/jobs/$1" >> "$DATA/$3-$4.log" 2>&1 &
  member_pid=$!
}
# live_with_kill JOB QUERY_NAME SEED: runs the job under the simulator (seeded SEED) and kills it
# (-9) three times while the simulator writes, at moments drawn from SEED (E2E_KILL_SEED overrides
# it; the log names the seed), each time starting it again; waits for the simulator. The job keeps
# running (its pid in $job).
live_with_kill() {
  local log="$DATA/$2-live.log" sim round seed=${E2E_KILL_SEED:-$3}
  RANDOM=$seed
  echo "live_with_kill $1: kills drawn from seed $seed (E2E_KILL_SEED)" > "$log"
  QUERY_NAME=$2 "$BUILD/jobs/$1" >> "$log" 2>&1 &
  job=$!
  "$SIM" --ops 1500 --rate 500 --batch 2 --seed "$3" > "$DATA/$2-sim.log" 2>&1 &
  sim=$!
  for round in 1 2 3; do
    sleep "0.$((2 + RANDOM % 8))"  # 0.2-0.9 s: before the first batch, mid-batch, mid-commit alike
    kill -9 "$job" 2>/dev/null || true
    wait "$job" 2>/dev/null || true
    echo "live_with_kill $1: kill $round" >> "$log"
    QUERY_NAME=$2 "$BUILD/jobs/$1" >> "$log" 2>&1 &
    job=$!
  done
  wait "$sim" || fail "the simulator failed: $(tail -n 3 "$DATA/$2-sim.log")"
}
produce_file() {  # produce_file TOPIC KEY FILE
  kcat -b "$KAFKA_BOOTSTRAP" -P -t "$1" -p 0 -k "$2" -X message.max.bytes=16000000 "$3"
}

case "${1:-}" in
  backfill)
    # Rows written before any job existed (the stack tests wrote some; add more) reach the
    # warehouse when the jobs start from earliest.
    "$JOBS" stop > /dev/null
    for i in 1 2 3; do q "INSERT INTO customers (email, country) VALUES ('backfill-$i-$$@example.com', 'NL')" > /dev/null; done
    q "INSERT INTO orders (customer_id, amount, status) SELECT id, 10.25, 'pending' FROM customers WHERE email LIKE 'backfill-%-$$@example.com'" > /dev/null
    [[ $(q "SELECT count(*) FROM dim_customers") == 0 ]] || fail "the warehouse is not empty before the first job"
    "$JOBS" start
    verify 90
    # The jobs log in as the stack's warehouse role (sql/grants/table_jobs.sql), not as the superuser.
    users=$(q "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE application_name IN ('customers-cdc-warehouse', 'orders-cdc-warehouse')")
    [[ "$users" == etl_jobs ]] || fail "the jobs log in as '$users', not etl_jobs"
    wait_sql "SELECT count(*) FROM dim_customers WHERE email LIKE 'backfill-%-$$@example.com' AND NOT is_deleted" 3 30
    wait_sql "SELECT count(*) FROM fact_orders WHERE amount = 10.25 AND NOT is_deleted" 3 30
    # Debezium's initial snapshot: a connector registered now reads every existing row as op=r;
    # a new query from earliest loads them (the multi-table job, here as a batch run).
    customers=$(q "SELECT count(*) FROM customers"); orders=$(q "SELECT count(*) FROM orders")
    jq --arg port "$PGPORT" '.config + {"topic.prefix": "backfill", "slot.name": "backfill_snapshot",
         "publication.name": "backfill_snapshot", "database.hostname": "127.0.0.1", "database.port": $port,
         "database.user": "postgres", "database.password": "postgres", "database.dbname": "appdb"}' \
       "$ROOT/scripts/cdc/debezium-connector.json" |
      curl -sf -X PUT -H 'Content-Type: application/json' --data @- "$CONNECT_URL/connectors/backfill-snapshot/config" > /dev/null
    for _ in $(seq 1 300); do
      c=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t backfill.public.customers:0:-1 2>/dev/null | awk '{print $NF}') || true
      o=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t backfill.public.orders:0:-1 2>/dev/null | awk '{print $NF}') || true
      [[ "$c" == "$customers" && "$o" == "$orders" ]] && break
      sleep 0.2
    done
    [[ "$c" == "$customers" && "$o" == "$orders" ]] || fail "snapshot incomplete: $c/$customers customers, $o/$orders orders"
    ops=$(kcat -b "$KAFKA_BOOTSTRAP" -C -t backfill.public.customers -o beginning -e -q -f '%s\n' | jq -r .op | sort -u | paste -sd,)
    [[ "$ops" == r ]] || fail "snapshot events have ops $ops"
    start_dlq=$(dlq_count)
    CDC_TOPIC_PATTERN='backfill\.public\..*' QUERY_NAME=backfill-e2e timeout 120 "$BUILD/jobs/stream_all_tables" --available-now \
      > "$DATA/backfill.log" 2>&1 || fail "the backfill run failed: $(tail -n 3 "$DATA/backfill.log")"
    loaded=$(grep -o 'batch [0-9]*: [0-9]* rows in' "$DATA/backfill.log" | awk '{s += $3} END {print s + 0}')
    [[ "$loaded" == $((customers + orders)) ]] || fail "the backfill read $loaded snapshot rows, expected $((customers + orders))"
    [[ $(dlq_count) == "$start_dlq" ]] || fail "snapshot rows went to the DLQ"
    verify 30
    curl -sf -X DELETE "$CONNECT_URL/connectors/backfill-snapshot" > /dev/null
    for _ in $(seq 1 50); do [[ -z $(q "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'backfill_snapshot' AND active") ]] && break; sleep 0.2; done
    q "SELECT pg_drop_replication_slot('backfill_snapshot')" > /dev/null
    q "DROP PUBLICATION IF EXISTS backfill_snapshot" > /dev/null
    echo "backfill: ok ($loaded snapshot rows loaded)"
    ;;

  manual_checks)
    # The original README's manual checks, automated.
    t0=$SECONDS
    id=$(q "INSERT INTO customers (email, country) VALUES ('test-$$@example.com', 'US') RETURNING id")
    wait_sql "SELECT country FROM dim_customers WHERE customer_id = $id" US 15
    echo "insert visible after $((SECONDS - t0)) s"
    before=$(q "SELECT last_seen_at FROM dim_customers WHERE customer_id = $id")
    q "UPDATE customers SET country = 'CA' WHERE email = 'test-$$@example.com'" > /dev/null
    wait_sql "SELECT country FROM dim_customers WHERE customer_id = $id" CA 15
    [[ $(q "SELECT last_seen_at > '$before' FROM dim_customers WHERE customer_id = $id") == t ]] || fail "last_seen_at not updated"
    oid=$(q "INSERT INTO orders (customer_id, amount, status) VALUES ($id, 42.00, 'paid') RETURNING id")
    wait_sql "SELECT amount || ' ' || is_deleted FROM fact_orders WHERE order_id = $oid" "42.00 false" 15
    q "DELETE FROM orders WHERE id = $oid" > /dev/null
    wait_sql "SELECT is_deleted FROM fact_orders WHERE order_id = $oid" t 15
    echo "manual_checks: ok ($((SECONDS - t0)) s)"
    ;;

  malformed)
    # Bad records published straight into the topics land in dlq_events with their exact bytes;
    # the jobs keep running.
    start_dlq=$(dlq_count)
    printf '{"op": "c", "after": {"id": 1' > "$DATA/truncated.json"
    printf 'this is not json' > "$DATA/invalid.json"
    printf '{"before": null, "after": {"id": 9001, "customer_id": 1, "amount": "1.00", "status": "x"}, "source": {"lsn": 5}}' > "$DATA/no_op.json"
    printf '{"op": "c", "after": {"id": "nine", "customer_id": 1, "amount": "1.00", "status": "x"}, "source": {"lsn": 5}}' > "$DATA/wrong_type.json"
    printf '{"op": "z", "after": {"id": 9002}, "source": {"lsn": 5}}' > "$DATA/unknown_op.json"
    printf '{"op": "c", "after": {"id": 9003, "customer_id": 1, "amount": "1.00", "status": "\xff\xfe"}, "source": {"lsn": 5}}' > "$DATA/not_utf8.json"
    { printf '{"op": "c", "after": {"id": 9004, "status": "'; head -c 3000000 /dev/zero | tr '\0' 'x'; printf '"'; } > "$DATA/huge.json"
    # Hostile input: a well-formed event with a 2 MB field (over the 1 MiB --max-record-bytes) and
    # one nested 100 000 levels deep.
    { printf '{"op": "c", "after": {"id": 9005, "customer_id": 1, "amount": "1.00", "status": "'; head -c 2000000 /dev/zero | tr '\0' 'y'
      printf '"}, "source": {"lsn": 5}}'; } > "$DATA/big_field.json"
    { printf '{"op": "c", "x": '; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'
      printf ', "after": {"id": 9006, "customer_id": 1, "amount": "1.00", "status": "x"}, "source": {"lsn": 5}}'; } > "$DATA/deep.json"
    files=(truncated invalid no_op wrong_type unknown_op not_utf8 huge big_field deep)
    for f in "${files[@]}"; do produce_file dbserver1.public.orders "{\"id\":0}" "$DATA/$f.json"; done
    wait_sql "SELECT count(*) FROM dlq_events" $((start_dlq + ${#files[@]})) 30
    for f in "${files[@]}"; do
      want=$(md5sum < "$DATA/$f.json" | cut -d' ' -f1)
      n=$(q "SELECT count(*) FROM dlq_events WHERE md5(raw_payload) = '$want' AND source_topic = 'dbserver1.public.orders'")
      [[ "$n" == 1 ]] || fail "$f: $n dead letters with its exact bytes"
    done
    q "SELECT error_kind, left(error_message, 60) FROM dlq_events ORDER BY id DESC LIMIT ${#files[@]}"
    big=$(md5sum < "$DATA/big_field.json" | cut -d' ' -f1); deep=$(md5sum < "$DATA/deep.json" | cut -d' ' -f1)
    [[ $(q "SELECT error_kind FROM dlq_events WHERE md5(raw_payload) = '$big'") == record_too_large ]] || fail "a 2 MB field is not record_too_large"
    [[ $(q "SELECT error_kind || ': ' || error_message FROM dlq_events WHERE md5(raw_payload) = '$deep'") == "malformed_json: "*deep* ]] \
      || fail "deep nesting: $(q "SELECT error_message FROM dlq_events WHERE md5(raw_payload) = '$deep'")"
    [[ $(q "SELECT count(DISTINCT error_kind) FROM dlq_events") -ge 5 ]] || fail "error kinds are not specific"
    # The job is still running and still applies changes.
    id=$(q "INSERT INTO customers (email, country) VALUES ('after-bad-$$@example.com', 'PT') RETURNING id")
    oid=$(q "INSERT INTO orders (customer_id, amount, status) VALUES ($id, 7.00, 'paid') RETURNING id")
    wait_sql "SELECT status FROM fact_orders WHERE order_id = $oid" paid 20
    "$JOBS" status | grep -q "stream_orders: running" || fail "stream_orders stopped"
    echo "malformed: ok"
    ;;

  mixed_workload)
    # Thousands of random operations: afterwards the warehouse equals the source, no dead letters.
    start_dlq=$(dlq_count)
    "$SIM" --ops 4000 --rate 2000 --batch 4 --seed 11
    verify 120
    [[ $(dlq_count) == "$start_dlq" ]] || fail "the workload produced dead letters"
    echo "mixed_workload: ok"
    ;;

  faults)
    # kill -9 of the jobs at random moments (several times), Kafka Connect restarted, the warehouse
    # PostgreSQL restarted, all mid-stream: the warehouse ends equal to the source, no DLQ duplicates.
    start_dlq=$(dlq_count)
    "$SIM" --ops 6000 --rate 400 --batch 3 --seed 23 > "$DATA/faults-sim.log" 2>&1 &
    sim=$!
    for round in 1 2 3; do
      sleep "0.$((RANDOM % 9 + 1))"
      job=$([[ $((RANDOM % 2)) == 0 ]] && echo stream_customers || echo stream_orders)
      "$JOBS" kill "$job" > /dev/null
      echo "round $round: killed $job with SIGKILL"
      "$JOBS" start "$job" > /dev/null
      sleep 1
    done
    "$ROOT/scripts/stack" restart connect
    echo "Kafka Connect restarted"
    sleep 2
    "$ROOT/scripts/stack" restart postgres
    echo "PostgreSQL restarted"
    sleep 1
    "$JOBS" kill stream_orders > /dev/null && "$JOBS" start stream_orders > /dev/null
    wait "$sim" || fail "the simulator failed: $(tail -n 3 "$DATA/faults-sim.log")"
    tail -n 1 "$DATA/faults-sim.log"
    # Debezium may need a moment to reconnect to the restarted database.
    verify 180
    [[ $(dlq_count) == "$start_dlq" ]] || fail "faults added dead letters"
    [[ $(q "SELECT count(*) - count(DISTINCT (source_topic, source_partition, source_offset)) FROM dlq_events") == 0 ]] || fail "duplicate dead letters"
    "$JOBS" status
    echo "faults: ok"
    ;;

  warehouse_faults)
    # The warehouse misbehaves under load: the jobs' warehouse connections are terminated
    # mid-transaction (pg_terminate_backend) three times, then fact_orders and dim_customers are
    # locked by another session for 6 s, longer than many batches, and released. The jobs ride it
    # out by themselves (the same processes, no restart), and the warehouse ends equal to the
    # source with no dead letter added.
    start_dlq=$(dlq_count)
    pids() { "$JOBS" status | grep -o 'pid [0-9]*' | tr '\n' ' '; }
    before=$(pids)
    jobs_sql="application_name IN ('customers-cdc-warehouse', 'orders-cdc-warehouse')"
    "$SIM" --ops 3000 --rate 400 --batch 2 --seed 71 > "$DATA/warehouse_faults-sim.log" 2>&1 &
    sim=$!
    trap 'kill "$sim" 2>/dev/null || true' EXIT  # a failure here must not leave load for the next test
    # Both jobs writing first: each holds its checkpoint connection, and its warehouse connection
    # once it writes a batch. After the PostgreSQL restart of the test before, changes flow again
    # only when Debezium has reconnected.
    wait_sql "SELECT count(*) >= 4 FROM pg_stat_activity WHERE $jobs_sql" t 90
    terminated=0
    for round in 1 2 3; do
      sleep 0.7
      n=$(q "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $jobs_sql) t")
      terminated=$((terminated + n))
    done
    ((terminated >= 2)) || fail "found only $terminated warehouse connections of the jobs to terminate"
    psql -X -q -v ON_ERROR_STOP=1 -c "BEGIN; LOCK TABLE fact_orders, dim_customers IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;" \
      > /dev/null 2>&1 &
    locker=$!
    waited=0
    for _ in $(seq 1 25); do
      sleep 0.2
      n=$(q "SELECT count(*) FROM pg_stat_activity WHERE $jobs_sql AND wait_event_type = 'Lock'")
      ((n > waited)) && waited=$n
    done
    wait "$locker" || fail "the locking session failed"
    wait "$sim" || fail "the simulator failed: $(tail -n 3 "$DATA/warehouse_faults-sim.log")"
    trap - EXIT
    verify 120
    [[ $(pids) == "$before" ]] || fail "a job died under the warehouse faults (pids before: $before, after: $(pids))"
    [[ $(dlq_count) == "$start_dlq" ]] || fail "the warehouse faults added dead letters"
    echo "warehouse_faults: ok ($terminated connections terminated, $waited job(s) seen waiting on the lock)"
    ;;

  multi_table)
    # One query for every table, subscribed by pattern: it rebuilds the same warehouse state from
    # the beginning of the topics (replays are no-ops under the LSN guard) and routes a table
    # without a handler to the dead-letter table.
    "$JOBS" stop > /dev/null
    printf '{"op": "c", "after": {"id": 1}, "source": {"lsn": 1}}' > "$DATA/unknown_table.json"
    produce_file dbserver1.public.unknown_table '{"id":1}' "$DATA/unknown_table.json"
    start_dlq=$(dlq_count)
    QUERY_NAME=cdc-warehouse-e2e timeout 120 "$BUILD/jobs/stream_all_tables" --available-now \
      > "$DATA/multi_table.log" 2>&1 || fail "stream_all_tables failed: $(tail -n 5 "$DATA/multi_table.log")"
    grep " batch " "$DATA/multi_table.log" | tail -n 2
    verify 10
    [[ $(dlq_count) == $((start_dlq + 1)) ]] || fail "expected exactly one new dead letter (the unrouted table)"
    [[ $(q "SELECT error_kind FROM dlq_events WHERE source_topic = 'dbserver1.public.unknown_table'") == unrouted_table ]] || fail "unrouted table not in the DLQ"
    "$JOBS" start > /dev/null
    echo "multi_table: ok"
    ;;

  table_stats)
    # customer_order_stats: the orders changelog as a table, aggregated per customer. Edge cases
    # (an amount changed, an order moved to another customer, an order deleted, a primary key
    # changed, a customer deleted with its orders by the cascade, one order updated 50 times in one
    # transaction), then
    # a run from the beginning of the topic must equal the SQL aggregation of the source; then
    # the job runs live under the simulator, is killed (-9) and restarted three times at seeded
    # moments (live_with_kill), and must equal it again.
    oracle=$STATS_ORACLE
    a=$(q "INSERT INTO customers (email, country) VALUES ('stats-a-$$@example.com', 'NL') RETURNING id")
    b=$(q "INSERT INTO customers (email, country) VALUES ('stats-b-$$@example.com', 'DE') RETURNING id")
    o1=$(q "INSERT INTO orders (customer_id, amount) VALUES ($a, 10.00) RETURNING id")
    o2=$(q "INSERT INTO orders (customer_id, amount) VALUES ($a, 99.99) RETURNING id")
    o3=$(q "INSERT INTO orders (customer_id, amount) VALUES ($b, 5.50) RETURNING id")
    q "INSERT INTO orders (customer_id, amount) VALUES ($b, 7.25)" > /dev/null
    q "UPDATE orders SET amount = 12.34 WHERE id = $o1" > /dev/null        # amount changed
    q "UPDATE orders SET customer_id = $b WHERE id = $o2" > /dev/null      # a's max moves to b
    q "DELETE FROM orders WHERE id = $o3" > /dev/null                     # deleted
    o4=$(q "INSERT INTO orders (customer_id, amount) VALUES ($a, 42.00) RETURNING id")
    q "UPDATE orders SET id = id + 100000000 WHERE id = $o4" > /dev/null  # a primary-key change: delete + create
    q "BEGIN; $(for i in $(seq 1 50); do printf 'UPDATE orders SET amount = %d.%02d WHERE id = %s; ' $i $i "$o1"; done) COMMIT" > /dev/null
    verify 60  # the stateless jobs caught up: the topic holds every change
    QUERY_NAME=table-stats-e2e timeout 120 "$BUILD/jobs/customer_order_stats" --available-now \
      > "$DATA/table_stats.log" 2>&1 || fail "customer_order_stats failed: $(tail -n 5 "$DATA/table_stats.log")"
    [[ $(q "$oracle") == 0 ]] || fail "customer_order_stats differs from the SQL aggregation in $(q "$oracle") customers"
    [[ $(q "SELECT order_count || '/' || max_amount FROM customer_order_stats WHERE customer_id = $b") == 2/99.99 ]] ||
      fail "customer $b: $(q "SELECT order_count || '/' || max_amount FROM customer_order_stats WHERE customer_id = $b")"
    q "DELETE FROM customers WHERE id = $b" > /dev/null                    # its orders go by the cascade
    live_with_kill customer_order_stats table-stats-e2e 71
    verify 90
    wait_sql "$oracle" 0 60
    [[ $(q "SELECT is_deleted FROM customer_order_stats WHERE customer_id = $b") == t ]] || fail "customer $b's stats not deleted"
    kill -TERM "$job"; wait "$job" || fail "customer_order_stats did not stop cleanly"
    echo "table_stats: ok ($(q "SELECT count(*) FROM customer_order_stats WHERE NOT is_deleted") customers)"
    ;;

  table_enriched)
    # orders_enriched: orders joined with their customers, both changelogs read as tables. A
    # customer's new email must reach all of its orders, an order moved to another customer must
    # carry the new one's columns, a customer deleted takes its orders (the cascade); a run from the
    # beginning of the topics, then a live run under the simulator killed (-9) three times, must
    # equal the SQL join of the source.
    oracle=$ENRICHED_ORACLE
    a=$(q "INSERT INTO customers (email, country) VALUES ('enriched-a-$$@example.com', 'NL') RETURNING id")
    b=$(q "INSERT INTO customers (email, country) VALUES ('enriched-b-$$@example.com', 'DE') RETURNING id")
    c=$(q "INSERT INTO customers (email, country) VALUES ('enriched-c-$$@example.com', 'FR') RETURNING id")
    o1=$(q "INSERT INTO orders (customer_id, amount) VALUES ($a, 1.00) RETURNING id")
    q "INSERT INTO orders (customer_id, amount) VALUES ($a, 2.00), ($c, 3.00)" > /dev/null
    q "UPDATE customers SET email = 'enriched-a2-$$@example.com' WHERE id = $a" > /dev/null  # both of a's orders
    q "UPDATE orders SET customer_id = $b, status = 'shipped' WHERE id = $o1" > /dev/null    # moved to b
    q "DELETE FROM customers WHERE id = $c" > /dev/null                                     # its order goes too
    verify 60
    QUERY_NAME=enriched-e2e timeout 120 "$BUILD/jobs/orders_enriched" --available-now \
      > "$DATA/table_enriched.log" 2>&1 || fail "orders_enriched failed: $(tail -n 5 "$DATA/table_enriched.log")"
    [[ $(q "$oracle") == 0 ]] || fail "orders_enriched differs from the SQL join in $(q "$oracle") orders"
    [[ $(q "SELECT count(*) FROM orders_enriched WHERE email = 'enriched-a2-$$@example.com' AND NOT is_deleted") == 1 ]] ||
      fail "customer $a's new email is not on its remaining order"
    # Live with hard deletes (TABLE_DELETES=hard): deleted orders leave the table.
    soft_deleted=$(q "SELECT count(*) FROM orders_enriched WHERE is_deleted")
    export TABLE_DELETES=hard
    live_with_kill orders_enriched enriched-e2e 73
    unset TABLE_DELETES
    q "UPDATE customers SET country = 'BE' WHERE id = $b" > /dev/null
    verify 90
    wait_sql "$oracle" 0 60
    (( $(q "SELECT count(*) FROM orders_enriched WHERE is_deleted") <= soft_deleted )) || fail "TABLE_DELETES=hard soft-deleted rows"
    (( $(grep -o 'deletes=[0-9]*' "$DATA/enriched-e2e-sim.log" | tail -1 | cut -d= -f2) > 0 )) || fail "the simulator deleted nothing"
    kill -TERM "$job"; wait "$job" || fail "orders_enriched did not stop cleanly"
    TABLE_DELETES=maybe "$BUILD/jobs/orders_enriched" --available-now > "$DATA/table_enriched_bad.log" 2>&1 && fail "a bad TABLE_DELETES was accepted"
    grep -q "TABLE_DELETES: expected soft or hard" "$DATA/table_enriched_bad.log" || fail "a bad TABLE_DELETES is not named"
    echo "table_enriched: ok ($(q "SELECT count(*) FROM orders_enriched WHERE NOT is_deleted") orders)"
    ;;

  table_windows)
    # orders_per_minute: event-time tumbling windows with a watermark, append mode. Orders created
    # at chosen times in 2030 fill two minutes; a later one moves the watermark (10 s delay) past
    # both, so each window's row is written once, with its count and revenue. An order created in
    # a final minute afterwards is late: with LATE_EVENTS=deadLetter it reaches dlq_events with its
    # bytes, and the minute's row is unchanged.
    cust=$(q "INSERT INTO customers (email, country) VALUES ('windows-$$@example.com', 'NL') RETURNING id")
    q "INSERT INTO orders (customer_id, amount, status, created_at) VALUES
         ($cust, 1.00, 'wpending', '2030-01-01 00:00:05+00'), ($cust, 2.00, 'wpending', '2030-01-01 00:00:20+00'),
         ($cust, 3.50, 'wpending', '2030-01-01 00:00:59.999+00'), ($cust, 9.00, 'wshipped', '2030-01-01 00:00:30+00'),
         ($cust, 4.00, 'wpending', '2030-01-01 00:01:10+00'), ($cust, 0.50, 'wpending', '2030-01-01 00:03:00+00')" > /dev/null
    verify 60
    run_windows() {
      LATE_EVENTS=deadLetter QUERY_NAME=windows-e2e timeout 120 "$BUILD/jobs/orders_per_minute" --available-now \
        >> "$DATA/table_windows.log" 2>&1 || fail "orders_per_minute failed: $(tail -n 5 "$DATA/table_windows.log")"
    }
    run_windows
    rows="SELECT string_agg(to_char(window_start AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || status || ' ' || order_count || ' ' || revenue, ', '
            ORDER BY window_start, status) FROM orders_per_minute WHERE window_start >= '2030-01-01' AND status LIKE 'w%'"
    expected="00:00 wpending 3 6.50, 00:00 wshipped 1 9.00, 00:01 wpending 1 4.00"
    [[ $(q "$rows") == "$expected" ]] || fail "orders_per_minute: '$(q "$rows")', expected '$expected' (00:03 is not final)"
    late=$(q "INSERT INTO orders (customer_id, amount, status, created_at) VALUES ($cust, 7.00, 'wpending', '2030-01-01 00:00:40+00') RETURNING id")
    start_dlq=$(dlq_count)
    verify 60
    run_windows
    [[ $(q "$rows") == "$expected" ]] || fail "a late order changed a final window: '$(q "$rows")'"
    [[ $(q "SELECT count(*) FROM dlq_events WHERE error_kind = 'late_event' AND convert_from(record_key, 'UTF8') = '{\"id\":$late}'") == 1 ]] ||
      fail "the late order is not in dlq_events with its key (new dead letters: $(( $(dlq_count) - start_dlq )))"
    [[ $(q "SELECT count(*) FROM dlq_events WHERE error_kind = 'late_event' AND convert_from(raw_payload, 'UTF8') LIKE '%\"id\":$late,%'") == 1 ]] ||
      fail "the late order's dead letter lacks its bytes"
    LATE_EVENTS=sometimes "$BUILD/jobs/orders_per_minute" --available-now > "$DATA/table_windows_bad.log" 2>&1 && fail "a bad LATE_EVENTS was accepted"
    grep -q "LATE_EVENTS: expected drop or deadLetter" "$DATA/table_windows_bad.log" || fail "a bad LATE_EVENTS is not named"
    echo "table_windows: ok"
    ;;

  schema_on)
    # The same jobs on events with the embedded schema and precise (base64) decimals, the
    # JsonConverter's defaults, across a schema change: a second connector with those settings
    # snapshots the tables, a column is added, more changes follow, and the multi-table job loads
    # everything from the beginning: no dead letter, the warehouse still equals the source.
    start_dlq=$(dlq_count)
    jq --arg port "$PGPORT" '.config + {"topic.prefix": "schemaon", "slot.name": "schema_on", "publication.name": "schema_on",
         "database.hostname": "127.0.0.1", "database.port": $port, "database.user": "postgres", "database.password": "postgres",
         "database.dbname": "appdb", "decimal.handling.mode": "precise", "key.converter.schemas.enable": "true",
         "value.converter.schemas.enable": "true"}' "$ROOT/scripts/cdc/debezium-connector.json" |
      curl -sf -X PUT -H 'Content-Type: application/json' --data @- "$CONNECT_URL/connectors/schema-on/config" > /dev/null
    wait_topic_count() {  # topic expected-records
      local n=0
      for _ in $(seq 1 300); do
        n=$(kcat -b "$KAFKA_BOOTSTRAP" -C -t "$1" -o beginning -e -q -f 'x\n' 2>/dev/null | wc -l) || true
        ((n >= $2)) && return 0
        sleep 0.2
      done
      fail "$1 has $n records, expected $2"
    }
    wait_topic_count schemaon.public.orders "$(q "SELECT count(*) FROM orders")"
    q "ALTER TABLE orders ADD COLUMN note text" > /dev/null
    "$SIM" --ops 300 --rate 1000 --seed 53 > /dev/null 2>&1
    verify 60
    kcat -b "$KAFKA_BOOTSTRAP" -C -t schemaon.public.orders -o beginning -c 1 -e -q -f '%s\n' | jq -e '.schema and .payload' > /dev/null \
      || fail "the schema-on topic has no embedded schema"
    sleep 2
    CDC_TOPIC_PATTERN='schemaon\.public\..*' QUERY_NAME=schema-on-e2e timeout 120 "$BUILD/jobs/stream_all_tables" --available-now \
      > "$DATA/schema_on.log" 2>&1 || fail "the schema-on run failed: $(tail -n 3 "$DATA/schema_on.log")"
    loaded=$(grep -o 'batch [0-9]*: [0-9]* rows in' "$DATA/schema_on.log" | awk '{s += $3} END {print s + 0}')
    ((loaded > 0)) || fail "nothing loaded from the schema-on topics"
    [[ $(dlq_count) == "$start_dlq" ]] || fail "schema-on events went to the DLQ: $(q "SELECT error_kind, error_message FROM dlq_events ORDER BY id DESC LIMIT 3")"
    verify 30
    curl -sf -X DELETE "$CONNECT_URL/connectors/schema-on" > /dev/null
    for _ in $(seq 1 50); do [[ -z $(q "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'schema_on' AND active") ]] && break; sleep 0.2; done
    q "SELECT pg_drop_replication_slot('schema_on')" > /dev/null
    q "DROP PUBLICATION IF EXISTS schema_on" > /dev/null
    q "ALTER TABLE orders DROP COLUMN note" > /dev/null
    echo "schema_on: ok ($loaded schema-carrying events loaded)"
    ;;

  signals)
    # SIGTERM and SIGINT stop a job gracefully with exit code 0; bad flags exit 2 naming the flag.
    "$JOBS" stop > /dev/null
    for sig in TERM INT; do
      "$BUILD/jobs/stream_orders" > "$DATA/signal.log" 2>&1 &
      pid=$!
      sleep 2
      kill "-$sig" "$pid"
      rc=0; wait "$pid" || rc=$?
      [[ $rc == 0 ]] || fail "SIG$sig: exit code $rc: $(tail -n 3 "$DATA/signal.log")"
      grep -q "stopped" "$DATA/signal.log" || fail "SIG$sig: no graceful stop in the log"
    done
    rc=0; out=$("$BUILD/jobs/stream_orders" --max-offsets-per-trigger=-1 2>&1) || rc=$?
    [[ $rc == 2 && "$out" == *--max-offsets-per-trigger* ]] || fail "a bad value: rc=$rc, $out"
    for bad in MAX_BYTES_PER_TRIGGER=-5 RAMP_UP_BATCHES=17 IDLE_POLL_MS=0 REPARTITION=shuffle; do
      rc=0; out=$(env "$bad" "$BUILD/jobs/stream_orders" 2>&1) || rc=$?
      flag=${bad%%=*}; flag=--${flag,,}; flag=${flag//_/-}  # the setting's flag names it
      [[ $rc == 2 && "$out" == *"$flag"* ]] || fail "a bad $bad: rc=$rc, $out"
    done
    rc=0; out=$("$BUILD/jobs/stream_orders" --no-such-flag 2>&1) || rc=$?
    [[ $rc == 2 && "$out" == *--no-such-flag* ]] || fail "an unknown flag: rc=$rc, $out"
    rc=0; out=$(KAFKA_BOOTSTRAP="$KAFKA_BOOTSTRAP" "$BUILD/jobs/stream_orders" --kafka-option group.id=x 2>&1) || rc=$?
    [[ $rc == 2 && "$out" == *group.id* ]] || fail "a forbidden Kafka option: rc=$rc, $out"
    # Not `--help | grep -q`: grep stops reading at the match and, with pipefail, the help's SIGPIPE fails the line.
    grep -q ORDERS_TOPIC <<< "$("$BUILD/jobs/stream_orders" --help)" || fail "--help does not document ORDERS_TOPIC"
    echo "signals: ok"
    ;;

  secrets)
    # A distinctive password, given each way the jobs take one (in --pg-url under the supervisor,
    # PG_PASSWORD_FILE, PG_PASSWORD, a Kafka SASL option, a URL of a server that is down), never
    # shows: not in the jobs' logs and error messages, /metrics, /progress, /source, the
    # supervisor's list, status page and logs, nor in the checkpoint tables or dlq_events.
    source "$ROOT/scripts/lib/ports.sh"
    pw="Pw$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')Zq"
    role=dataflow_secrets_e2e
    out=$DATA/secrets
    rm -rf "$out"
    mkdir -p -m 700 "$out/collected" "$out/home"
    q "DROP ROLE IF EXISTS $role"
    q "CREATE ROLE $role LOGIN SUPERUSER PASSWORD '$pw'"
    printf '%s\n' "$pw" > "$out/pgpass"
    chmod 600 "$out/pgpass"
    url="postgresql://$role:$pw@$PG_HOST:$PG_PORT/$PG_DB"
    ui=$(free_port); base=$(free_port "$ui"); mfile=$(free_port "$ui" "$base" $((base + 1))); menv=$(free_port "$ui" "$base" $((base + 1)) "$mfile")
    pids=()
    cleanup_secrets() {
      kill -TERM "${pids[@]}" 2>/dev/null || true
      wait "${pids[@]}" 2>/dev/null || true
      q "DROP ROLE IF EXISTS $role" > /dev/null 2>&1 || true
    }
    trap cleanup_secrets EXIT
    DATAFLOW_HOME=$out/home DATAFLOW_UI_PORT=$ui DATAFLOW_METRICS_BASE_PORT=$base \
      "$BUILD/jobs/dataflow" supervise > "$out/collected/supervisor.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 50); do [[ -S "$out/home/supervisor.sock" ]] && break; sleep 0.1; done
    DATAFLOW_HOME=$out/home "$BUILD/jobs/dataflow" submit --name secret_url stream_orders --pg-url "$url" \
      --query-name secrets-url --starting-offsets latest --kafka-option "sasl.password=$pw" > /dev/null
    (unset PG_URL PG_PASSWORD; PG_USER=$role PG_PASSWORD_FILE=$out/pgpass METRICS_PORT=$mfile QUERY_NAME=secrets-file \
      STARTING_OFFSETS=latest exec "$BUILD/jobs/stream_orders" > "$out/collected/file.log" 2>&1) &
    pids+=($!)
    (unset PG_URL; PG_USER=$role PG_PASSWORD=$pw METRICS_PORT=$menv QUERY_NAME=secrets-env \
      STARTING_OFFSETS=latest exec "$BUILD/jobs/stream_orders" > "$out/collected/env.log" 2>&1) &
    pids+=($!)
    sleep 3  # all three subscribed at the end of the topic
    "$SIM" --ops 200 --rate 400 --seed 41 > /dev/null 2>&1 || fail "the simulator failed"
    rows() {
      local n
      n=$(curl -sf "http://127.0.0.1:$1/metrics" | /usr/bin/python3 "$ROOT/tests/e2e/metric.py" /dev/stdin dataflow_input_rows_total 2>/dev/null) || true
      [[ "$n" =~ ^[0-9]+$ ]] && echo "$n" || echo 0
    }
    for port in "$base" "$mfile" "$menv"; do
      for _ in $(seq 1 150); do (( $(rows "$port") > 0 )) && break; sleep 0.2; done
      (( $(rows "$port") > 0 )) || fail "the job on metrics port $port processed nothing: $(tail -n 5 "$out"/collected/*.log)"
      for path in metrics progress source deadletters healthz; do
        curl -sf "http://127.0.0.1:$port/$path" > "$out/collected/$port-$path" || true
      done
    done
    DATAFLOW_HOME=$out/home "$BUILD/jobs/dataflow" list > "$out/collected/list.txt"
    DATAFLOW_HOME=$out/home "$BUILD/jobs/dataflow" logs secret_url > "$out/collected/secret_url.log"
    curl -sf "http://127.0.0.1:$ui/" > "$out/collected/status.html" || fail "the status page"
    curl -sf "http://127.0.0.1:$ui/api/jobs" > "$out/collected/api-jobs.json" || fail "/api/jobs"
    grep -q secrets-url "$out/collected/api-jobs.json" || fail "/api/jobs does not show the job"
    # Failures that name the connection: a server that is down, a SASL login the broker refuses.
    rc=0; PG_URL="postgresql://$role:$pw@127.0.0.1:$(free_port)/$PG_DB" timeout 60 "$BUILD/jobs/stream_orders" \
      --available-now --query-name secrets-down > "$out/collected/down.log" 2>&1 || rc=$?
    ((rc != 0)) || fail "a job whose warehouse is down exited 0"
    grep -q "cannot connect" "$out/collected/down.log" || fail "no connection error: $(tail -n 3 "$out/collected/down.log")"
    rc=0; PG_URL=$url timeout 30 "$BUILD/jobs/stream_orders" --available-now --query-name secrets-sasl \
      --kafka-option security.protocol=SASL_PLAINTEXT --kafka-option sasl.mechanism=PLAIN \
      --kafka-option sasl.username=$role --kafka-option "sasl.password=$pw" > "$out/collected/sasl.log" 2>&1 || rc=$?
    ((rc != 0)) || fail "a SASL login to a plaintext broker succeeded"
    # The checkpoint's rows of these queries (every table of it has checkpoint_name), and the DLQ's.
    for t in $(q "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'checkpoint_name'"); do
      psql -X -q -c "\\copy (SELECT * FROM public.$t WHERE checkpoint_name LIKE 'secrets-%') TO '$out/collected/table-$t.tsv'" > /dev/null
    done
    psql -X -q -c "\\copy (SELECT * FROM dlq_events WHERE query_name LIKE 'secrets-%') TO '$out/collected/table-dlq_events.tsv'" > /dev/null
    [[ -s "$out/collected/table-dataflow_offsets.tsv" ]] || fail "no checkpoint rows of the secrets queries"
    [[ $(ls "$out"/collected/table-* | wc -l) -ge 5 ]] || fail "the checkpoint tables were not all read"
    cleanup_secrets
    trap - EXIT
    # The one place it must be: the supervisor keeps the arguments to start the job again (0600).
    grep -qF -- "$pw" "$out/home/submitted.json" || fail "the search would not find the password"
    leaks=$(grep -rlF -- "$pw" "$out/collected" || true)
    [[ -z "$leaks" ]] || fail "the password shows in: $leaks"
    grep -q "***@" "$out/collected/list.txt" || fail "the list does not show the masked URL: $(cat "$out/collected/list.txt")"
    [[ $(stat -c %a "$out/home/submitted.json") == 600 ]] || fail "submitted.json is readable by others"
    echo "secrets: ok ($(ls "$out/collected" | wc -l) places checked)"
    ;;

  tls)
    # The warehouse over TLS, verified: the server gets a certificate from a CA made here, the job
    # connects with sslmode=verify-full and that CA, and its connections show as encrypted in
    # pg_stat_ssl; with another CA's root it refuses to connect, saying why.
    tls=$DATA/tls
    rm -rf "$tls"
    mkdir -p -m 700 "$tls"
    make_ca() {  # make_ca NAME: a self-signed CA in $tls/NAME.{key,crt}
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dataflow e2e $1" \
        -keyout "$tls/$1.key" -out "$tls/$1.crt" > /dev/null 2>&1 || fail "openssl: CA $1"
    }
    make_ca ca
    make_ca other
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" > /dev/null 2>&1
    printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\n' > "$tls/san.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 2 \
      -extfile "$tls/san.ext" -out "$tls/server.crt" > /dev/null 2>&1 || fail "openssl: server certificate"
    # The server reads its key as itself: a copy in its data directory, owned by it, mode 0600.
    pgdata=$(q "SHOW data_directory")
    owner=$(stat -c %U "$pgdata")
    install -m 600 -o "$owner" "$tls/server.key" "$pgdata/e2e-server.key"
    install -m 644 -o "$owner" "$tls/server.crt" "$pgdata/e2e-server.crt"
    reset_tls() {
      for setting in ssl ssl_cert_file ssl_key_file; do q "ALTER SYSTEM RESET $setting" > /dev/null 2>&1 || true; done
      q "SELECT pg_reload_conf()" > /dev/null 2>&1 || true
      rm -f "$pgdata/e2e-server.key" "$pgdata/e2e-server.crt"
    }
    trap 'reset_tls; kill -TERM "${job:-0}" 2>/dev/null || true' EXIT
    q "ALTER SYSTEM SET ssl_cert_file = 'e2e-server.crt'"
    q "ALTER SYSTEM SET ssl_key_file = 'e2e-server.key'"
    q "ALTER SYSTEM SET ssl = on"
    q "SELECT pg_reload_conf()" > /dev/null
    wait_sql "SHOW ssl" on 10
    tls_url="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB?sslmode=verify-full&sslrootcert=$tls/ca.crt"
    PG_URL=$tls_url QUERY_NAME=tls-e2e STARTING_OFFSETS=latest "$BUILD/jobs/stream_orders" > "$DATA/tls.log" 2>&1 &
    job=$!
    "$SIM" --ops 100 --rate 300 --seed 43 > /dev/null 2>&1 || fail "the simulator failed"
    wait_sql "SELECT count(*) > 0 FROM dataflow_commits WHERE checkpoint_name = 'tls-e2e'" t 60
    encrypted=$(q "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                   WHERE a.application_name = 'tls-e2e'")
    IFS='|' read -r enc all <<< "$encrypted"
    ((enc > 0 && enc == all)) || fail "the job's connections, encrypted|all: $encrypted"
    kill -TERM "$job"
    wait "$job" || fail "the job over TLS did not stop cleanly: $(tail -n 3 "$DATA/tls.log")"
    # Another CA's root: the server's certificate does not verify, and the job says so.
    rc=0; PG_URL="${tls_url/ca.crt/other.crt}" QUERY_NAME=tls-e2e timeout 60 "$BUILD/jobs/stream_orders" --available-now \
      > "$DATA/tls-refused.log" 2>&1 || rc=$?
    ((rc != 0)) || fail "a server certificate from an unknown CA was accepted"
    grep -q "certificate verify failed" "$DATA/tls-refused.log" || fail "no reason given: $(tail -n 3 "$DATA/tls-refused.log")"
    reset_tls
    trap - EXIT
    wait_sql "SHOW ssl" off 10
    echo "tls: ok (connections encrypted|all: $encrypted)"
    ;;

  kafka_sasl)
    # Kafka's SASL_SSL listener, for real (scripts/stack: a CA of its own, SCRAM-SHA-512 and PLAIN).
    # A job reads Debezium's orders topic through it, the broker's certificate verified against
    # the stack's CA, logged in with SCRAM-SHA-512 as a login made here, while the simulator
    # writes. The stack's PLAIN login works too. A wrong password and an unknown CA fail fast,
    # saying why.
    scram_user=e2e-scram-$$ scram_pw=$(openssl rand -hex 12)
    "$ROOT/scripts/stack" kafka-user "$scram_user" <<< "$scram_pw" 2> /dev/null || fail "scripts/stack kafka-user"
    tls=(--kafka-bootstrap "$KAFKA_SASL_BOOTSTRAP" --kafka-option security.protocol=SASL_SSL --source-health-interval-ms 0)
    scram=("${tls[@]}" --kafka-option sasl.mechanism=SCRAM-SHA-512 --kafka-option "sasl.username=$scram_user")
    name=kafka-sasl-e2e-$$
    trap 'kill -TERM "${job:-0}" 2>/dev/null || true' EXIT
    for _ in $(seq 1 10); do  # the new login reaches the broker through its metadata log
      QUERY_NAME=$name STARTING_OFFSETS=latest "$BUILD/jobs/stream_orders" "${scram[@]}" --kafka-option "ssl.ca.location=$KAFKA_CA_FILE" \
        --kafka-option "sasl.password=$scram_pw" > "$DATA/kafka_sasl.log" 2>&1 &
      job=$!
      sleep 3
      kill -0 "$job" 2>/dev/null && break
      grep -q "the broker refused" "$DATA/kafka_sasl.log" || fail "the job on SASL_SSL stopped: $(tail -n 3 "$DATA/kafka_sasl.log")"
    done
    wait_sql "SELECT count(*) FROM dataflow_checkpoints WHERE checkpoint_name = '$name'" 1 60
    sleep 2  # the query has its starting offsets (latest) before the changes below
    "$SIM" --ops 200 --rate 400 --seed 47 > /dev/null 2>&1 || fail "the simulator failed"
    wait_sql "SELECT count(*) > 0 FROM dataflow_commits WHERE checkpoint_name = '$name'" t 60
    for _ in $(seq 1 100); do
      grep -Eq "batch [0-9]+: [1-9][0-9]* rows in" "$DATA/kafka_sasl.log" && break
      sleep 0.2
    done
    grep -Eq "batch [0-9]+: [1-9][0-9]* rows in" "$DATA/kafka_sasl.log" || fail "no change read through SASL_SSL (SCRAM): $(tail -n 3 "$DATA/kafka_sasl.log")"
    kill -TERM "$job"
    wait "$job" || fail "the job on SASL_SSL did not stop cleanly: $(tail -n 3 "$DATA/kafka_sasl.log")"
    trap - EXIT
    grep -q "$scram_pw" "$DATA/kafka_sasl.log" && fail "the Kafka password is in the job's log"
    # PLAIN, the stack's `dataflow` login: a run to the end of what is there.
    pw=$(cat "$KAFKA_SASL_PASSWORD_FILE")
    plain=("${tls[@]}" --kafka-option sasl.mechanism=PLAIN --kafka-option "sasl.username=$KAFKA_SASL_USER")
    QUERY_NAME=$name timeout 120 "$BUILD/jobs/stream_orders" --available-now "${plain[@]}" --kafka-option "ssl.ca.location=$KAFKA_CA_FILE" \
      --kafka-option "sasl.password=$pw" > "$DATA/kafka_sasl-plain.log" 2>&1 || fail "PLAIN over SASL_SSL: $(tail -n 3 "$DATA/kafka_sasl-plain.log")"
    # A wrong password: the job stops at once with the broker's reason (not a retry loop, not a
    # bare "transport failure").
    t0=$(date +%s%N)
    rc=0; QUERY_NAME=$name timeout 60 "$BUILD/jobs/stream_orders" --available-now "${scram[@]}" \
      --kafka-option "ssl.ca.location=$KAFKA_CA_FILE" --kafka-option sasl.password=wrong > "$DATA/kafka_sasl-refused.log" 2>&1 || rc=$?
    refused_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    ((rc != 0 && rc != 124)) || fail "a wrong Kafka password: exit $rc"
    grep -q "the broker refused the connection: SASL authentication error" "$DATA/kafka_sasl-refused.log" \
      || fail "no reason given: $(tail -n 2 "$DATA/kafka_sasl-refused.log")"
    ((refused_ms < 5000)) || fail "a wrong password took $refused_ms ms to stop the job"
    # A CA that did not sign the broker's certificate.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another CA" -keyout "$DATA/other-ca.key" \
      -out "$DATA/other-ca.crt" > /dev/null 2>&1 || fail "openssl"
    rc=0; QUERY_NAME=$name timeout 60 "$BUILD/jobs/stream_orders" --available-now "${plain[@]}" \
      --kafka-option "ssl.ca.location=$DATA/other-ca.crt" --kafka-option "sasl.password=$pw" > "$DATA/kafka_sasl-ca.log" 2>&1 || rc=$?
    ((rc != 0 && rc != 124)) || fail "an unknown CA: exit $rc"
    grep -q "certificate verify failed" "$DATA/kafka_sasl-ca.log" || fail "no reason given: $(tail -n 2 "$DATA/kafka_sasl-ca.log")"
    echo "kafka_sasl: ok (changes read through SASL_SSL with SCRAM-SHA-512 and PLAIN; a wrong password refused in $refused_ms ms)"
    ;;

  least_privilege)
    # The job needs no more than it uses: a login role with the grants of sql/grants/stream_jobs.sql
    # (no superuser, no CREATE anywhere) runs stream_orders; with one grant taken away, the job
    # stops and its message names the table and the missing right. It reads a topic of its own
    # (recent order events copied from Debezium's topic, whose rows it finds already written,
    # then a malformed record), so no other query sees its records.
    role=dataflow_writer_e2e
    pw="w$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    topic=e2e.least_privilege.$$ query=least-privilege-e2e-$$
    q "DROP OWNED BY $role" > /dev/null 2>&1 || true
    q "DROP ROLE IF EXISTS $role"
    q "CREATE ROLE $role LOGIN PASSWORD '$pw' NOSUPERUSER NOCREATEDB NOCREATEROLE"
    trap 'q "DROP OWNED BY $role" > /dev/null 2>&1 || true; q "DROP ROLE IF EXISTS $role" > /dev/null 2>&1 || true' EXIT
    psql -X -q -v ON_ERROR_STOP=1 -v role="$role" -f "$ROOT/sql/grants/stream_jobs.sql" > /dev/null || fail "sql/grants/stream_jobs.sql failed"
    [[ $(q "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = '$role'") == f ]] || fail "the role has more than it should"
    [[ $(q "SELECT has_schema_privilege('$role', 'public', 'CREATE')") == f ]] || fail "the role may create in public"
    kcat -b "$KAFKA_BOOTSTRAP" -C -t dbserver1.public.orders -o -50 -e -q -f '%k\t%s\n' | awk -F '\t' '$2 != ""' > "$DATA/lp-events.tsv"
    [[ -s "$DATA/lp-events.tsv" ]] || fail "no order events to copy"
    kcat -b "$KAFKA_BOOTSTRAP" -P -t "$topic" -K $'\t' -l "$DATA/lp-events.tsv"
    printf '{"not json %s' "$query" > "$DATA/lp-bad.json"
    produce_file "$topic" '{"id":0}' "$DATA/lp-bad.json"
    run_lp() { PG_URL="postgresql://$role:$pw@$PG_HOST:$PG_PORT/$PG_DB" ORDERS_TOPIC=$topic QUERY_NAME=$query \
                 timeout 120 "$BUILD/jobs/stream_orders" --available-now >> "$DATA/least_privilege.log" 2>&1; }
    : > "$DATA/least_privilege.log"
    run_lp || fail "the job failed with the granted rights: $(tail -n 3 "$DATA/least_privilege.log")"
    grep -qi "permission denied" "$DATA/least_privilege.log" && fail "permission errors: $(grep -i "permission denied" "$DATA/least_privilege.log" | head -n 2)"
    bad="SELECT count(*) FROM dlq_events WHERE query_name = '$query' AND raw_payload = convert_to('{\"not json $query', 'UTF8')"
    [[ $(q "$bad") == 1 ]] || fail "the dead letter was not written"
    [[ $(q "SELECT count(*) FROM dataflow_commits WHERE checkpoint_name = '$query'") -ge 1 ]] || fail "nothing committed"
    # One right less: the next dead letter cannot be written; the job stops, naming what is missing.
    q "REVOKE INSERT ON public.dlq_events FROM $role"
    produce_file "$topic" '{"id":0}' "$DATA/lp-bad.json"
    run_lp && fail "the job went on without the right to write dead letters"
    grep -q "permission denied for table dlq_events" "$DATA/least_privilege.log" \
      || fail "the message does not name the table: $(tail -n 3 "$DATA/least_privilege.log")"
    [[ $(q "$bad") == 1 ]] || fail "a dead letter was written without the right"
    q "DROP OWNED BY $role" > /dev/null
    q "DROP ROLE $role"
    # A stateful table job with sql/grants/table_jobs.sql: its operator state, table and checkpoint
    # in the warehouse, from the beginning of Debezium's topics, without a permission error.
    q "CREATE ROLE $role LOGIN PASSWORD '$pw' NOSUPERUSER NOCREATEDB NOCREATEROLE"
    psql -X -q -v ON_ERROR_STOP=1 -v role="$role" -f "$ROOT/sql/grants/table_jobs.sql" > /dev/null || fail "sql/grants/table_jobs.sql failed"
    stats_query=least-privilege-stats-e2e-$$
    PG_URL="postgresql://$role:$pw@$PG_HOST:$PG_PORT/$PG_DB" QUERY_NAME=$stats_query timeout 180 \
      "$BUILD/jobs/customer_order_stats" --available-now > "$DATA/least_privilege-stats.log" 2>&1 \
      || fail "customer_order_stats failed with the granted rights: $(tail -n 3 "$DATA/least_privilege-stats.log")"
    grep -qi "permission denied" "$DATA/least_privilege-stats.log" && fail "permission errors in the table job"
    [[ $(q "SELECT count(*) FROM dataflow_state WHERE checkpoint_name = '$stats_query'") -gt 0 ]] || fail "the table job kept no state"
    q "DROP OWNED BY $role" > /dev/null
    q "DROP ROLE $role"
    trap - EXIT
    echo "least_privilege: ok"
    ;;

  metrics)
    # /metrics parses as Prometheus text and its counts match Kafka, the warehouse and the DLQ;
    # /healthz and /progress answer.
    port=$(cat "$DATAFLOW_STATE_DIR/jobs/stream_orders.port")
    url=http://127.0.0.1:$port
    for _ in $(seq 1 100); do curl -sf "$url/healthz" > /dev/null 2>&1 && break; sleep 0.1; done  # just (re)started
    curl -sf "$url/healthz" | grep -q ok || fail "/healthz"
    scrape() { curl -sf "$url/metrics" > "$DATA/metrics.txt" || fail "/metrics"; /usr/bin/python3 "$ROOT/tests/e2e/metric.py" "$DATA/metrics.txt" "$@"; }
    in0=$(scrape dataflow_input_rows_total); dead0=$(scrape dataflow_dead_letters_total)
    dlq0=$(dlq_count)
    end0=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t dbserver1.public.orders:0:-1 | awk '{print $NF}')
    printf '{"broken' > "$DATA/m1.json"; printf '{"op": "q", "source": {"lsn": 1}}' > "$DATA/m2.json"
    produce_file dbserver1.public.orders '{"id":0}' "$DATA/m1.json"
    produce_file dbserver1.public.orders '{"id":0}' "$DATA/m2.json"
    "$SIM" --ops 300 --rate 600 --seed 5 --insert-p 0.5 --update-p 0.5 --delete-p 0 > /dev/null 2>&1
    verify 60
    end1=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t dbserver1.public.orders:0:-1 | awk '{print $NF}')
    for _ in $(seq 1 50); do [[ $(scrape dataflow_input_rows_total) == $((in0 + end1 - end0)) ]] && break; sleep 0.2; done
    in1=$(scrape dataflow_input_rows_total); dead1=$(scrape dataflow_dead_letters_total)
    [[ $((in1 - in0)) == $((end1 - end0)) ]] || fail "input rows grew by $((in1 - in0)), Kafka by $((end1 - end0))"
    [[ $((dead1 - dead0)) == 2 && $(( $(dlq_count) - dlq0 )) == 2 ]] || fail "dead letters: metric +$((dead1 - dead0)), table +$(( $(dlq_count) - dlq0 ))"
    [[ $(scrape dataflow_dead_letters_total kind=truncated_json) -ge 1 ]] || fail "no truncated_json dead letter by kind"
    scrape dataflow_batch_duration_seconds_count > /dev/null
    [[ $(scrape dataflow_offsets_behind_latest stat=max) == 0 ]] || fail "lag not 0 after catching up"
    [[ $(scrape dataflow_partition_offsets_behind_latest partition=dbserver1.public.orders-0) == 0 ]] || fail "no per-partition lag"
    [[ $(scrape dataflow_job_restarts) == 0 ]] || fail "no restarts gauge"
    curl -sf "$url/progress" | jq -e 'length > 0 and .[-1].name == "orders-cdc-warehouse" and (.[-1].sources[0].metrics.maxOffsetsBehindLatest | length) > 0' > /dev/null \
      || fail "/progress"
    # Source-side health: slot lag and connector state, and a stopped connector reported.
    [[ $(scrape dataflow_source_slot_active slot=dataflow_cdc) == 1 ]] || fail "slot not reported active"
    [[ $(scrape dataflow_source_slot_lag_bytes slot=dataflow_cdc) -ge 0 ]] || fail "no slot lag"
    [[ $(scrape dataflow_source_connector_running connector=postgres-cdc) == 1 ]] || fail "connector not reported running"
    curl -sf -X PUT "$CONNECT_URL/connectors/postgres-cdc/pause" > /dev/null
    for _ in $(seq 1 50); do [[ $(scrape dataflow_source_connector_running connector=postgres-cdc) == 0 ]] && break; sleep 0.2; done
    [[ $(scrape dataflow_source_connector_running connector=postgres-cdc) == 0 ]] || fail "a paused connector is not reported"
    grep -q "connector 'postgres-cdc' is PAUSED" "$DATAFLOW_STATE_DIR/jobs/stream_orders.log" || fail "no warning for the paused connector"
    curl -sf -X PUT "$CONNECT_URL/connectors/postgres-cdc/resume" > /dev/null
    for _ in $(seq 1 100); do [[ $(scrape dataflow_source_connector_running connector=postgres-cdc) == 1 ]] && break; sleep 0.2; done
    [[ $(scrape dataflow_source_connector_running connector=postgres-cdc) == 1 ]] || fail "connector not running again"
    curl -sf "$url/source" | jq -e '.connectorState == "RUNNING" and .slot == "dataflow_cdc"' > /dev/null || fail "/source"
    echo "metrics: ok"
    ;;

  partitions)
    # The Debezium topics grow to 3 partitions mid-stream: the jobs discover the new partitions
    # and read them in parallel. Debezium keys records by primary key, but a key may now hash to
    # another partition than its older changes: the per-key LSN guard keeps the warehouse right
    # anyway (no older change overwrites a newer one, no delete is lost).
    start_dlq=$(dlq_count)
    for t in dbserver1.public.customers dbserver1.public.orders; do "$ROOT/scripts/stack" partitions "$t" 3; done
    # Connect's producer learns of new partitions when its metadata refreshes (5 min by default);
    # restarting the task gives it a fresh producer.
    curl -sf -X POST "$CONNECT_URL/connectors/postgres-cdc/restart?includeTasks=true" > /dev/null
    for _ in $(seq 1 100); do
      curl -sf "$CONNECT_URL/connectors/postgres-cdc/status" | jq -e '.connector.state == "RUNNING" and .tasks[0].state == "RUNNING"' > /dev/null && break
      sleep 0.2
    done
    "$SIM" --ops 3000 --rate 1500 --batch 3 --seed 41 > /dev/null 2>&1
    verify 90
    [[ $(dlq_count) == "$start_dlq" ]] || fail "dead letters after the partitions grew"
    port=$(cat "$DATAFLOW_STATE_DIR/jobs/stream_orders.port")
    used=$(curl -sf "http://127.0.0.1:$port/progress" | jq '[.[-1].sources[0].endOffset["dbserver1.public.orders"] | to_entries[] | select(.value > 0)] | length')
    [[ "$used" == 3 ]] || fail "the job read $used partitions, expected 3"
    echo "partitions: ok"
    ;;

  schema_change)
    # The original's own error test: the source schema changes while the jobs run.
    start_dlq=$(dlq_count)
    # New columns: ignored by the jobs (their mapping names the columns they need); nothing lost.
    q "ALTER TABLE customers ADD COLUMN loyalty_points int DEFAULT 0" > /dev/null
    q "ALTER TABLE orders ADD COLUMN channel text DEFAULT 'web'" > /dev/null
    "$SIM" --ops 500 --rate 1000 --seed 31 > /dev/null 2>&1
    verify 60
    [[ $(dlq_count) == "$start_dlq" ]] || fail "new columns produced dead letters"
    # A dropped optional column gives nulls.
    q "ALTER TABLE customers DROP COLUMN country" > /dev/null
    id=$(q "INSERT INTO customers (email) VALUES ('no-country-$$@example.com') RETURNING id")
    wait_sql "SELECT coalesce(country, '<null>') || ' ' || email FROM dim_customers WHERE customer_id = $id" "<null> no-country-$$@example.com" 20
    # A missing required column sends the event to the DLQ, with a clear error; the job keeps running.
    q "ALTER TABLE customers DROP COLUMN email" > /dev/null
    id2=$(q "INSERT INTO customers DEFAULT VALUES RETURNING id")
    wait_sql "SELECT count(*) FROM dlq_events WHERE source_topic = 'dbserver1.public.customers' AND error_kind = 'missing_field' AND error_message LIKE '%''email''%' AND record_key = convert_to('{\"id\":$id2}', 'UTF8')" 1 20
    oid=$(q "INSERT INTO orders (customer_id, amount) VALUES ($id, 5.00) RETURNING id")
    wait_sql "SELECT amount FROM fact_orders WHERE order_id = $oid" 5.00 20
    # Restore the source schema for the tests that follow; the backfilled values flow through.
    q "ALTER TABLE customers ADD COLUMN email text, ADD COLUMN country text" > /dev/null
    q "UPDATE customers SET email = 'user' || id || '@example.com'" > /dev/null
    q "ALTER TABLE customers ALTER COLUMN email SET NOT NULL, ADD CONSTRAINT customers_email_key UNIQUE (email)" > /dev/null
    q "ALTER TABLE customers DROP COLUMN loyalty_points" > /dev/null
    q "ALTER TABLE orders DROP COLUMN channel" > /dev/null
    verify 90
    "$JOBS" status | grep -c running | grep -q 2 || fail "a job stopped during the schema changes"
    echo "schema_change: ok"
    ;;

  toasted_values)
    # A value large enough for PostgreSQL to store out of line (TOAST) is not logged again by an
    # update that leaves it unchanged (REPLICA IDENTITY DEFAULT): Debezium sends a placeholder
    # instead. The warehouse keeps the stored value; it neither writes NULL nor dead-letters.
    "$JOBS" start > /dev/null
    start_dlq=$(dlq_count)
    big="(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 400) i)"  # 12.8 kB
    id=$(q "INSERT INTO customers (email, country) VALUES ('toast-$$@example.com', $big) RETURNING id")
    oid=$(q "INSERT INTO orders (customer_id, amount, status) VALUES ($id, 12.00, $big) RETURNING id")
    wait_sql "SELECT count(*) FROM fact_orders WHERE order_id = $oid" 1 30
    q "UPDATE customers SET email = 'toast-updated-$$@example.com' WHERE id = $id" > /dev/null
    q "UPDATE orders SET amount = 13.00 WHERE id = $oid" > /dev/null
    wait_sql "SELECT email FROM dim_customers WHERE customer_id = $id" "toast-updated-$$@example.com" 30
    wait_sql "SELECT amount FROM fact_orders WHERE order_id = $oid" 13.00 30
    last=$(kcat -b "$KAFKA_BOOTSTRAP" -C -t dbserver1.public.orders -o beginning -e -q -f '%k\t%s\n' | grep -F "{\"id\":$oid}" | tail -n 1)
    [[ "$last" == *__debezium_unavailable_value* ]] || fail "the update event carried the status: not a TOAST test"
    [[ $(q "SELECT length(country) FROM dim_customers WHERE customer_id = $id") == 12800 ]] || fail "the customer's country was not kept"
    [[ $(q "SELECT length(status) FROM fact_orders WHERE order_id = $oid") == 12800 ]] || fail "the order's status was not kept"
    verify 30
    [[ $(dlq_count) == "$start_dlq" ]] || fail "unchanged TOASTed values produced dead letters"
    echo "toasted_values: ok"
    ;;

  source_role)
    # Debezium needs no superuser either: a login role with only what sql/grants/debezium_source.sql
    # grants (REPLICATION, SELECT on customers and orders; the publication made by an owner) runs a
    # connector of its own. It snapshots both tables and streams a change made afterwards; the role
    # can read no other table and create nothing.
    role=cdc_source_e2e conn=source-role-e2e slot=source_role_e2e pub=source_role_e2e prefix=srcrole$$
    pw="s$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    cleanup_source_role() {
      curl -s -X DELETE "$CONNECT_URL/connectors/$conn" > /dev/null 2>&1 || true
      for _ in $(seq 1 100); do [[ -z $(q "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$slot' AND active") ]] && break; sleep 0.2; done
      q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot'" > /dev/null 2>&1 || true
      q "DROP PUBLICATION IF EXISTS $pub" > /dev/null 2>&1 || true
      q "DROP OWNED BY $role" > /dev/null 2>&1 || true
      q "DROP ROLE IF EXISTS $role" > /dev/null 2>&1 || true
    }
    cleanup_source_role
    trap cleanup_source_role EXIT
    q "CREATE ROLE $role LOGIN PASSWORD '$pw'" > /dev/null
    psql -X -q -v ON_ERROR_STOP=1 -v role="$role" -v publication="$pub" -f "$ROOT/sql/grants/debezium_source.sql" > /dev/null \
      || fail "sql/grants/debezium_source.sql failed"
    [[ $(q "SELECT rolsuper || ' ' || rolreplication || ' ' || rolcreatedb FROM pg_roles WHERE rolname = '$role'") == "false true false" ]] \
      || fail "the source role has other attributes than REPLICATION"
    for t in dim_customers fact_orders dlq_events dataflow_offsets; do
      [[ $(q "SELECT has_table_privilege('$role', 'public.$t', 'SELECT')") == f ]] || fail "the source role can read $t"
    done
    jq --arg port "$PGPORT" --arg user "$role" --arg pw "$pw" --arg prefix "$prefix" --arg slot "$slot" --arg pub "$pub" \
       '.config + {"topic.prefix": $prefix, "slot.name": $slot, "publication.name": $pub, "publication.autocreate.mode": "disabled",
         "database.hostname": "127.0.0.1", "database.port": $port, "database.user": $user, "database.password": $pw,
         "database.dbname": "appdb"}' "$ROOT/scripts/cdc/debezium-connector.json" |
      curl -sf -X PUT -H 'Content-Type: application/json' --data @- "$CONNECT_URL/connectors/$conn/config" > /dev/null \
      || fail "Connect refused the connector"
    # The snapshot: every row of both tables (streaming starts after it).
    for table in customers orders; do
      rows=$(q "SELECT count(*) FROM $table")
      for _ in $(seq 1 600); do
        n=$(kcat -b "$KAFKA_BOOTSTRAP" -C -t "$prefix.public.$table" -o beginning -e -q -f 'x\n' 2>/dev/null | wc -l) || true
        ((n >= rows)) && break
        state=$(curl -sf "$CONNECT_URL/connectors/$conn/status" | jq -r '.tasks[0].state // "none"') || true
        [[ "$state" == FAILED ]] && fail "the connector failed: $(curl -sf "$CONNECT_URL/connectors/$conn/status" | jq -r '.tasks[0].trace' | head -n 3)"
        sleep 0.2
      done
      ((n >= rows)) || fail "the snapshot gave $n of $rows $table"
      [[ $table == customers ]] && customers=$n
    done
    [[ $(q "SELECT usename FROM pg_stat_replication WHERE application_name = '$conn' OR usename = '$role' LIMIT 1") == "$role" ]] \
      || fail "the connector's replication connection is not the source role's"
    email="source-role-$$@example.com"
    q "INSERT INTO customers (email, country) VALUES ('$email', 'FI')" > /dev/null
    for _ in $(seq 1 300); do
      grep -q "$email" <<< "$(kcat -b "$KAFKA_BOOTSTRAP" -C -t "$prefix.public.customers" -o -20 -e -q 2>/dev/null)" && break
      sleep 0.2
    done
    grep -q "$email" <<< "$(kcat -b "$KAFKA_BOOTSTRAP" -C -t "$prefix.public.customers" -o -20 -e -q 2>/dev/null)" \
      || fail "a change after the snapshot did not arrive"
    cleanup_source_role
    trap - EXIT
    echo "source_role: ok ($customers customers snapshotted and a new one streamed by a REPLICATION-only role)"
    ;;

  scale_out)
    # Scale-out across processes: three processes of stream_orders join one consumer group and
    # share the 3 partitions of its topic, with offsets per partition in the warehouse checkpoint
    # (continuing from the single-instance runs before). Mid-stream one is killed (-9) and a new
    # one started, and one is paused past the group's session timeout (a zombie) and resumed.
    # The warehouse ends equal to the source, with no dead letters and no offset skipped. Then a
    # single process takes over again from the per-partition offsets.
    "$JOBS" stop > /dev/null
    "$JOBS" start stream_customers > /dev/null
    start_dlq=$(dlq_count)
    orders_partitions
    export CONSUMER_GROUP=orders-scaled KAFKA_OPTIONS=session.timeout.ms=6000,heartbeat.interval.ms=500
    logs=$DATAFLOW_STATE_DIR/jobs
    for i in 1 2 3; do rm -f "$logs/stream_orders@$i.log"; done
    "$JOBS" start stream_orders@1 stream_orders@2 stream_orders@3 > /dev/null
    # The group settles with every process owning a partition.
    for _ in $(seq 1 150); do
      owners=0
      for i in 1 2 3; do grep -q "partitions assigned" "$logs/stream_orders@$i.log" 2>/dev/null && owners=$((owners + 1)); done
      ((owners == 3)) && break
      sleep 0.2
    done
    ((owners == 3)) || fail "only $owners of 3 processes were assigned partitions"
    "$SIM" --ops 12000 --rate 800 --batch 2 --seed 61 > "$DATA/scale_out_sim.log" 2>&1 &
    sim=$!
    # Malformed records in every partition, before the kill and during the pause: each must reach
    # the DLQ exactly once, whichever process held its partition.
    malformed() {
      for p in $(seq 0 $((partitions - 1))); do
        printf '{"broken-scale-out-%s-%s' "$$" "$1" | kcat -b "$KAFKA_BOOTSTRAP" -P -t dbserver1.public.orders -p "$p" -k '{"id":0}'
      done
    }
    sleep 2
    malformed 1
    "$JOBS" kill stream_orders@2 > /dev/null
    sleep 1
    rm -f "$logs/stream_orders@4.log"
    "$JOBS" start stream_orders@4 > /dev/null
    sleep 1
    "$JOBS" pause stream_orders@3 > /dev/null
    malformed 2
    sleep 10  # > session.timeout.ms: the group evicts it and gives its partitions to the others
    "$JOBS" resume stream_orders@3 > /dev/null
    wait "$sim" || fail "the simulator failed: $(tail -n 3 "$DATA/scale_out_sim.log")"
    verify 120
    expected=$((2 * partitions))
    wait_sql "SELECT count(*) FROM dlq_events WHERE position(convert_to('{\"broken-scale-out-$$-', 'UTF8') in raw_payload) = 1" "$expected" 60
    [[ $(q "SELECT count(DISTINCT (source_partition, source_offset)) FROM dlq_events WHERE position(convert_to('{\"broken-scale-out-$$-', 'UTF8') in raw_payload) = 1") == "$expected" ]] ||
      fail "the malformed records are not each in the DLQ once"
    [[ $(dlq_count) == $((start_dlq + expected)) ]] || fail "dead letters other than the malformed records while scaled out"
    # Every partition's stored offset reaches the end of the topic: nothing skipped, nothing left.
    for p in $(seq 0 $((partitions - 1))); do
      end=$(kcat -b "$KAFKA_BOOTSTRAP" -Q -t "dbserver1.public.orders:$p:-1" | awk '{print $NF}')
      wait_sql "SELECT next_offset FROM dataflow_partition_offsets WHERE checkpoint_name = 'orders-cdc-warehouse' AND topic = 'dbserver1.public.orders' AND kafka_partition = $p" "$end" 60
    done
    # The paused process learnt it had been replaced (its partitions were lost, or its batch
    # refused) and kept running; the new one took over partitions.
    grep -qE "consumer group 'orders-scaled' lost|abandoned, nothing committed" "$logs/stream_orders@3.log" ||
      fail "the paused process did not notice its eviction: $(tail -n 5 "$logs/stream_orders@3.log")"
    grep -q "partitions assigned" "$logs/stream_orders@4.log" || fail "the process started later got no partition"
    for i in 1 3 4; do "$JOBS" status "stream_orders@$i" | grep -q running || fail "stream_orders@$i stopped"; done
    leases=$(q "SELECT max(lease_epoch) FROM dataflow_partition_offsets WHERE checkpoint_name = 'orders-cdc-warehouse'")
    "$JOBS" stop stream_orders@1 stream_orders@3 stream_orders@4 > /dev/null
    # Scaling back in: one process without the group continues from the per-partition offsets.
    unset CONSUMER_GROUP
    : > "$logs/stream_orders.log"
    "$JOBS" start stream_orders > /dev/null
    "$SIM" --ops 300 --rate 600 --seed 62 > /dev/null 2>&1
    verify 60
    grep -q "scaled in: continuing from the stored offsets of $partitions partition(s)" "$logs/stream_orders.log" ||
      fail "the single instance did not continue from the partition offsets: $(tail -n 3 "$logs/stream_orders.log")"
    [[ $(dlq_count) == $((start_dlq + expected)) ]] || fail "scaling in reprocessed records into the DLQ"
    echo "scale_out: ok ($partitions partitions, 4 processes, highest lease epoch $leases, scaled back in)"
    ;;

  windows_scale_out)
    # orders_per_minute scaled out: two processes in one consumer group share the partitions of
    # the orders topic. Each partition closes its windows on its own watermark, kept and moved with
    # its state; a minute's row is the sum of the partitions' partial rows, each written once in its
    # batch's transaction. Orders created at chosen times in 2031 arrive while the processes run;
    # one process is killed (-9) mid-stream and started again. Every minute ends with the source's
    # count and revenue: nothing lost, nothing counted twice.
    "$JOBS" stop > /dev/null
    orders_partitions
    q "TRUNCATE orders_per_minute" > /dev/null
    cust=$(q "INSERT INTO customers (email, country) VALUES ('scaled-windows-$$@example.com', 'NL') RETURNING id")
    export CONSUMER_GROUP=windows-scaled KAFKA_OPTIONS=session.timeout.ms=6000,heartbeat.interval.ms=500
    member() { group_member orders_per_minute windows-scaled windows_scale_out "$1"; }
    rm -f "$DATA"/windows_scale_out-*.log
    member 1; first=$member_pid
    member 2; second=$member_pid
    for chunk in $(seq 0 19); do
      q "INSERT INTO orders (customer_id, amount, status, created_at)
         SELECT $cust, (i % 97) / 4.0 + 0.25, 'so' || (i % 3), '2031-01-01 00:00:00+00'::timestamptz + i * interval '173 ms'
         FROM generate_series($((chunk * 100)), $((chunk * 100 + 99))) i" > /dev/null
      sleep 0.3
      if ((chunk == 8)); then
        kill -9 "$second" 2>/dev/null || true
        wait "$second" 2>/dev/null || true
        member 2; second=$member_pid
      fi
    done
    # Orders far ahead, in every partition: their watermarks pass every window above.
    q "INSERT INTO orders (customer_id, amount, status, created_at)
       SELECT $cust, 0.01, 'soflush', '2031-01-02 00:00:00+00' FROM generate_series(1, 40)" > /dev/null
    source="SELECT string_agg(to_char(m AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || status || ' ' || n || ' ' || r, ', ' ORDER BY m, status)
              FROM (SELECT date_trunc('minute', created_at) m, status, count(*) n, sum(amount) r FROM orders
                    WHERE customer_id = $cust AND status LIKE 'so_' GROUP BY 1, 2) x"
    rows="SELECT string_agg(to_char(window_start AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || status || ' ' || order_count || ' ' || revenue, ', '
            ORDER BY window_start, status) FROM orders_per_minute WHERE window_start >= '2031-01-01' AND status LIKE 'so_'"
    expected=$(q "$source")
    [[ $(q "SELECT count(*) FROM orders WHERE customer_id = $cust AND status LIKE 'so_'") == 2000 ]] || fail "the orders were not written"
    for _ in $(seq 1 600); do
      [[ $(q "$rows") == "$expected" ]] && break
      kill -0 "$first" "$second" 2>/dev/null || fail "a process of the group stopped: $(tail -n 3 "$DATA"/windows_scale_out-*.log)"
      sleep 0.2
    done
    [[ $(q "$rows") == "$expected" ]] || fail "orders_per_minute scaled out: '$(q "$rows")', expected '$expected'"
    # The order with a 12 kB status (toasted_values) cannot key a row: a dead letter, not a crash.
    (($(q "SELECT count(*) FROM dlq_events WHERE query_name = 'windows-scaled' AND error_message LIKE '%too long to group by%'") >= 1)) ||
      fail "the order whose status is too long to group by is not in dlq_events"
    for i in 1 2; do
      grep -q "partitions assigned" "$DATA/windows_scale_out-$i.log" || fail "process $i got no partition: $(tail -n 3 "$DATA/windows_scale_out-$i.log")"
    done
    kill -0 "$first" "$second" || fail "a process of the group stopped: $(tail -n 3 "$DATA"/windows_scale_out-*.log)"
    kill "$first" "$second"
    wait "$first" "$second" || fail "a process did not stop cleanly"
    unset CONSUMER_GROUP
    echo "windows_scale_out: ok ($partitions partitions, $(q "SELECT count(*) FROM orders_per_minute WHERE window_start >= '2031-01-01' AND status LIKE 'so_'") windows)"
    ;;

  table_scale_out)
    # The table jobs scaled out. customer_order_stats: with CONSUMER_GROUP its groupBy regroups
    # the orders by customer through an internal topic (REPARTITION=kafka), sized like the orders
    # topic, so that three processes share both the orders' partitions and the customers' groups,
    # each group's state moving with its partition of the internal topic. orders_enriched: both
    # tables go through one internal topic by customer, so that a customer and its orders meet in
    # one partition; its rows carry their order's LSN as version, so an order moved to a customer
    # of another partition is not removed by the old partition's owner, however late it writes.
    # Three processes of each, under the simulator (new orders, amounts changed, customers changed
    # and deleted with their orders) and orders moved between customers; one process of each is
    # killed (-9) and started again and one is paused past the session timeout (a zombie that may
    # still write to the internal topic). The tables then equal the SQL aggregation and join of the
    # source, computed from the beginning of the topics by the new queries.
    orders_partitions
    # Written by table_stats' and table_enriched's queries before; these start afresh.
    q "TRUNCATE customer_order_stats, orders_enriched" > /dev/null
    export KAFKA_OPTIONS=session.timeout.ms=6000,heartbeat.interval.ms=500
    member() {
      CONSUMER_GROUP=stats-scaled group_member customer_order_stats stats-scaled table_scale_out "$1"
      stats[$1]=$member_pid
      CONSUMER_GROUP=enriched-scaled group_member orders_enriched enriched-scaled table_scale_out-enriched "$1"
      enriched[$1]=$member_pid
    }
    declare -a stats enriched
    rm -f "$DATA"/table_scale_out-*.log
    member 1; member 2; member 3
    trap 'kill -CONT "${stats[3]}" "${enriched[3]}" 2>/dev/null; kill -9 "${stats[@]}" "${enriched[@]}" 2>/dev/null || true' EXIT  # a failure leaves no job behind
    "$SIM" --ops 3000 --rate 500 --batch 2 --seed 81 > "$DATA/table_scale_out-sim.log" 2>&1 &
    sim=$!
    a=$(q "INSERT INTO customers (email, country) VALUES ('scaled-stats-a-$$@example.com', 'NL') RETURNING id")
    b=$(q "INSERT INTO customers (email, country) VALUES ('scaled-stats-b-$$@example.com', 'DE') RETURNING id")
    moved=$(q "INSERT INTO orders (customer_id, amount) SELECT $a, i + 0.5 FROM generate_series(1, 30) i RETURNING id" | head -n 10 | paste -sd, -)
    sleep 2
    q "UPDATE orders SET customer_id = $b WHERE id IN ($moved)" > /dev/null   # ten orders move to another group
    kill -9 "${stats[2]}" "${enriched[2]}" 2>/dev/null || true
    wait "${stats[2]}" "${enriched[2]}" 2>/dev/null || true
    member 2
    sleep 1
    kill -STOP "${stats[3]}" "${enriched[3]}"
    q "UPDATE orders SET amount = amount + 1 WHERE id IN ($moved)" > /dev/null
    q "UPDATE orders SET customer_id = $a WHERE id IN ($(cut -d, -f1-3 <<< "$moved"))" > /dev/null  # three move back
    q "UPDATE customers SET email = 'scaled-stats-b2-$$@example.com' WHERE id = $b" > /dev/null   # all of b's orders
    sleep 10  # > session.timeout.ms: the group evicts it and gives its partitions to the others
    kill -CONT "${stats[3]}" "${enriched[3]}"
    wait "$sim" || fail "the simulator failed: $(tail -n 3 "$DATA/table_scale_out-sim.log")"
    for _ in $(seq 1 600); do
      [[ $(q "$STATS_ORACLE") == 0 && $(q "$ENRICHED_ORACLE") == 0 ]] && break
      kill -0 "${stats[@]}" "${enriched[@]}" 2>/dev/null || fail "a process of a group stopped: $(tail -n 3 "$DATA"/table_scale_out-*.log)"
      sleep 0.2
    done
    [[ $(q "$STATS_ORACLE") == 0 ]] || fail "customer_order_stats scaled out differs from the SQL aggregation in $(q "$STATS_ORACLE") customers"
    [[ $(q "$ENRICHED_ORACLE") == 0 ]] || fail "orders_enriched scaled out differs from the SQL join in $(q "$ENRICHED_ORACLE") orders"
    # (Unless the simulator deleted the customer, which the oracles cover as well.)
    if [[ $(q "SELECT count(*) FROM orders WHERE customer_id = $b") == 7 ]]; then
      [[ $(q "SELECT order_count FROM customer_order_stats WHERE customer_id = $b AND NOT is_deleted") == 7 ]] ||
        fail "customer $b: the moved orders are not counted where they went"
      [[ $(q "SELECT count(*) FROM orders_enriched e JOIN customers c ON c.id = e.customer_id
              WHERE e.customer_id = $b AND e.email = c.email AND NOT e.is_deleted") == 7 ]] ||
        fail "customer $b: the moved orders do not carry its new email"
    fi
    for topic in stats-scaled-groupBy-1 enriched-scaled-join-1; do
      internal=$(kcat -b "$KAFKA_BOOTSTRAP" -L -t "$topic" | grep -c 'partition [0-9]*,') || true
      [[ $internal == "$partitions" ]] || fail "the internal topic $topic has $internal partitions, expected $partitions"
    done
    for log in table_scale_out table_scale_out-enriched; do
      for i in 1 2 3; do
        grep -q "partitions assigned" "$DATA/$log-$i.log" || fail "process $i got no partition: $(tail -n 3 "$DATA/$log-$i.log")"
      done
    done
    (($(q "SELECT count(DISTINCT topic) FROM dataflow_partition_offsets WHERE checkpoint_name = 'stats-scaled'") == 2)) ||
      fail "the offsets of the orders topic and the internal topic are not both kept per partition"
    (($(q "SELECT count(DISTINCT topic) FROM dataflow_partition_offsets WHERE checkpoint_name = 'enriched-scaled'") == 3)) ||
      fail "the offsets of the two topics and the internal topic are not all kept per partition"
    trap - EXIT
    kill "${stats[@]}" "${enriched[@]}"
    wait "${stats[@]}" "${enriched[@]}" || fail "a process did not stop cleanly"
    echo "table_scale_out: ok ($partitions partitions, $(q "SELECT count(*) FROM customer_order_stats WHERE NOT is_deleted") customers, $(q "SELECT count(*) FROM orders_enriched WHERE NOT is_deleted") orders)"
    ;;

  direct_source)
    # The same pipeline without Kafka or Debezium: stream_customers and stream_orders read the
    # source's replication stream directly (--source=postgres) into a second warehouse database,
    # while the Kafka path keeps running into the first. Edge cases and the simulator's load go
    # through both; the direct jobs are killed (-9) twice, their walsender is terminated, and
    # PostgreSQL is restarted mid-stream. Afterwards both warehouses equal the source, and no slot
    # has confirmed more than its warehouse committed.
    "$JOBS" start > /dev/null
    direct_db=appdb_direct
    q "DROP DATABASE IF EXISTS $direct_db WITH (FORCE)" > /dev/null
    for slot in $(q "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'dataflow_direct_%'"); do
      q "SELECT pg_drop_replication_slot('$slot')" > /dev/null
    done
    q "DROP PUBLICATION IF EXISTS dataflow_direct_customers" > /dev/null
    q "DROP PUBLICATION IF EXISTS dataflow_direct_orders" > /dev/null
    q "CREATE DATABASE $direct_db" > /dev/null
    direct_url="postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$direct_db"
    PG_URL=$direct_url "$ROOT/scripts/migrate.sh" > /dev/null
    dq() { psql "$direct_url" -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
    direct() {  # direct JOB QUERY: starts a direct job; its pid in direct_pid
      CDC_SOURCE=postgres SOURCE_PG_URL=$ADMIN_PG_URL PG_URL=$direct_url QUERY_NAME=$2 SOURCE_HEALTH_INTERVAL_MS=0 \
        "$BUILD/jobs/$1" >> "$DATA/direct-$2.log" 2>&1 &
      direct_pid=$!
    }
    rm -f "$DATA"/direct-*.log
    direct stream_customers direct-customers; customers_pid=$direct_pid
    direct stream_orders direct-orders; orders_pid=$direct_pid
    trap 'kill -9 "$customers_pid" "$orders_pid" 2>/dev/null || true' EXIT  # a failure leaves no job behind
    "$SIM" --ops 3000 --rate 600 --batch 3 --seed 41 > "$DATA/direct-sim.log" 2>&1 &
    sim=$!
    # Edge cases, through both paths.
    c=$(q "INSERT INTO customers (email, country) VALUES ('direct-ünïcødé-😀-$$@example.com', NULL) RETURNING id")
    q "UPDATE customers SET id = id + 5000000 WHERE id = $c" > /dev/null  # a primary-key change
    big="(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 400) i)"
    t=$(q "INSERT INTO customers (email, country) VALUES ('direct-toast-$$@example.com', $big) RETURNING id")
    q "UPDATE customers SET email = 'direct-toast-updated-$$@example.com' WHERE id = $t" > /dev/null  # TOASTed country unchanged
    o=$(q "INSERT INTO orders (customer_id, amount, status) VALUES ($t, 1.00, 'direct') RETURNING id")
    q "DO \$\$ BEGIN FOR i IN 1..50 LOOP UPDATE orders SET amount = amount + 1 WHERE id = $o; END LOOP; END \$\$" > /dev/null
    sleep 1
    kill -9 "$orders_pid"; wait "$orders_pid" 2>/dev/null || true
    direct stream_orders direct-orders; orders_pid=$direct_pid
    bulk=$(q "INSERT INTO customers (email, country) VALUES ('direct-bulk-$$@example.com', 'SE') RETURNING id")
    q "INSERT INTO orders (customer_id, amount, status) SELECT $bulk, (i % 1000) / 10.0, 'bulk' FROM generate_series(1, 100000) i" > /dev/null
    sleep 1
    q "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'dataflow_direct_orders' AND active" > /dev/null
    kill -9 "$customers_pid"; wait "$customers_pid" 2>/dev/null || true
    direct stream_customers direct-customers; customers_pid=$direct_pid
    q "DELETE FROM customers WHERE id = $bulk" > /dev/null  # cascades to its 100 000 orders
    sleep 1
    "$ROOT/scripts/stack" restart postgres
    echo "PostgreSQL restarted"
    wait "$sim" || fail "the simulator failed: $(tail -n 3 "$DATA/direct-sim.log")"
    verify 240
    customers="SELECT id, email, country, created_at, updated_at FROM customers ORDER BY 1"
    orders="SELECT id, customer_id, amount, status, created_at, updated_at FROM orders ORDER BY 1"
    direct_customers="SELECT customer_id, email, country, created_at, updated_at FROM dim_customers WHERE NOT is_deleted ORDER BY 1"
    direct_orders="SELECT order_id, customer_id, amount, status, created_at, updated_at FROM fact_orders WHERE NOT is_deleted ORDER BY 1"
    for _ in $(seq 1 600); do
      [[ $(q "$customers" | md5sum) == $(dq "$direct_customers" | md5sum) && $(q "$orders" | md5sum) == $(dq "$direct_orders" | md5sum) ]] && break
      kill -0 "$customers_pid" "$orders_pid" 2>/dev/null || fail "a direct job stopped: $(tail -n 5 "$DATA"/direct-*.log)"
      sleep 0.5
    done
    diff <(q "$customers") <(dq "$direct_customers") > "$DATA/direct-customers.diff" ||
      fail "dim_customers of the direct path differs from the source: $(head -n 5 "$DATA/direct-customers.diff")"
    diff <(q "$orders") <(dq "$direct_orders") > "$DATA/direct-orders.diff" ||
      fail "fact_orders of the direct path differs from the source: $(head -n 5 "$DATA/direct-orders.diff")"
    [[ $(dq "SELECT length(country) FROM dim_customers WHERE customer_id = $t") == 12800 ]] || fail "the TOASTed country was not kept"
    [[ $(dq "SELECT count(*) FROM fact_orders WHERE customer_id = $bulk AND is_deleted") == 100000 ]] || fail "the cascaded deletes did not arrive"
    [[ $(dq "SELECT count(*) FROM dlq_events") == 0 ]] || fail "the direct path wrote dead letters: $(dq "SELECT error_message FROM dlq_events LIMIT 3")"
    # Exactly once: a slot never confirms more than its warehouse committed. The slot is read
    # first: the jobs still run, and an idle source's batch (every 10 s) may commit and then
    # confirm between the two reads; read the other way round, that looked like a violation.
    for query in direct-customers direct-orders; do
      slot=dataflow_${query//-/_}
      confirmed=$(q "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '$slot'")
      committed=$(dq "SELECT entry FROM dataflow_offsets o JOIN dataflow_commits c USING (checkpoint_name, batch_id)
                      WHERE checkpoint_name = '$query' ORDER BY batch_id DESC LIMIT 1" |
                  python3 -c "import re,sys; print(re.findall(r'\"$slot\":\{\"0\":(\d+)', sys.stdin.read())[-1])")  # the batch's end
      ((confirmed <= committed - 1)) || fail "slot $slot confirmed $confirmed, its warehouse committed only $((committed - 1))"
    done
    trap - EXIT
    kill "$customers_pid" "$orders_pid"
    wait "$customers_pid" "$orders_pid" || fail "a direct job did not stop cleanly"
    for slot in dataflow_direct_customers dataflow_direct_orders; do q "SELECT pg_drop_replication_slot('$slot')" > /dev/null; done
    echo "direct_source: ok ($(dq "SELECT count(*) FROM fact_orders") orders, $(grep -c 'rows in' "$DATA"/direct-direct-orders.log) batches of direct-orders)"
    ;;

  *) echo "usage: $0 backfill|manual_checks|malformed|mixed_workload|faults|warehouse_faults|multi_table|metrics|partitions|schema_change|toasted_values|schema_on|signals|scale_out|windows_scale_out|table_scale_out|direct_source" >&2; exit 2 ;;
esac
