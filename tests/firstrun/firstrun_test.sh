#!/usr/bin/env bash
# A new user's first run (ctest label `firstrun`), each case on a stack of its own:
#   private_clone       the work tree copied into a 0700 folder (as a clone into a private home is),
#                       as root: `scripts/stack up --only=postgres`, then the whole stack and a
#                       short end-to-end run of both jobs, then `reset` leaves nothing behind
#   private_clone_user  the same for a non-root user with a 0700 home (created for the test, then
#                       removed): `scripts/stack up --only=postgres`, env, psql, reset
#   port_taken          a remembered Kafka port held by a listening socket, then by a connected
#                       one: `up` moves Kafka away and says so; a port held by the stack's own
#                       running broker is kept; a port named by STACK_*_PORT is never moved
#   broker_killed       the broker killed while it starts: `up` fails naming Kafka, the signal and
#                       the log file
#   pipeline_direct     the README's `scripts/run-pipeline --direct` (no JVM) with this build's jobs:
#                       a short simulator run while both jobs read their slots and write as
#                       etl_jobs, then SIGTERM (as Ctrl-C); the warehouse matches the source
# DATAFLOW_BUILD_DIR is set by ctest (the jobs are taken from that build).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${DATAFLOW_BUILD_DIR:?set by ctest}
unset DATAFLOW_STATE_DIR PG_URL PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD KAFKA_BOOTSTRAP CONNECT_URL
export PGOPTIONS="-c client_min_messages=warning"

fail() { echo "FAIL: $*" >&2; exit 1; }
# Any other failing command says where it failed (set -e alone would exit without a word).
trap 'echo "FAIL: line $LINENO: \`$BASH_COMMAND\` exited with status $?" >&2' ERR
# copy_tree DEST: the repository as it is on disk (tracked and new files, not the ignored ones),
# like a clone of the current work.
copy_tree() {
  mkdir -p "$1"
  (cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -cf - -T -) | (cd "$1" && tar -xf -)
}
# expect_failure OUT_VAR CMD...: runs CMD, which must fail; its stderr goes into OUT_VAR.
expect_failure() {
  local _var=$1; shift
  local _out _rc=0
  _out=$("$@" 2>&1) || _rc=$?
  ((_rc != 0)) || { echo "$_out" >&2; fail "$* succeeded"; }
  printf -v "$_var" '%s' "$_out"
}
contains() { grep -qF -- "$2" <<< "$1" || { echo "$1" >&2; fail "the message lacks '$2'"; }; }

case "${1:-}" in
  private_clone)
    [[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root (the non-root case is private_clone_user)"; exit 0; }
    home=$(mktemp -d /tmp/firstrun-home.XXXXXX)    # mode 0700, like /root or an adduser home
    clone=$home/dataflow
    cleanup() {
      [[ -x "$clone/scripts/stack" ]] && "$clone/scripts/jobs" stop > /dev/null 2>&1 || true
      [[ -x "$clone/scripts/stack" ]] && "$clone/scripts/stack" reset > /dev/null 2>&1 || true
      rm -rf "$home"
    }
    trap cleanup EXIT
    copy_tree "$clone"
    [[ $(stat -c %a "$home") == 700 ]] || fail "the home is not private"
    runuser -u postgres -- test -x "$home" && fail "postgres can enter $home: the test proves nothing"
    cd "$clone"

    scripts/stack up --only=postgres
    [[ $(stat -c %a "$home") == 700 ]] || fail "up changed the home's permissions to $(stat -c %a "$home")"
    data=$(readlink -f .state/stack/pg)
    [[ "$data" != "$home"/* ]] || fail "PostgreSQL's data is under the private home ($data)"
    eval "$(scripts/stack env)"
    [[ $(psql -X -tAc "SELECT count(*) FROM pg_tables WHERE tablename IN ('customers','orders','dim_customers','fact_orders','dlq_events')") == 5 ]] \
      || fail "the migrations did not run"
    grep -q "postgres: running" <<< "$(scripts/stack status || true)" || fail "status does not see PostgreSQL"

    # A state folder deleted without `reset` leaves the cluster outside the clone; a new state
    # folder at the same path must start empty, not with the old data.
    psql -X -qc "CREATE TABLE leftover_from_deleted_state (x int)"
    scripts/stack down
    rm -rf .state
    out=$(scripts/stack up --only=postgres 2>&1) || { echo "$out" >&2; fail "up after deleting the state folder"; }
    contains "$out" "removing PostgreSQL data left in $data"
    eval "$(scripts/stack env)"
    [[ -z $(psql -X -tAc "SELECT 1 FROM pg_tables WHERE tablename = 'leftover_from_deleted_state'") ]] \
      || fail "the deleted state folder's data came back"

    # The whole stack, then both jobs from the build on the clone's stack.
    scripts/stack up
    eval "$(scripts/stack env)"
    for i in 1 2 3; do
      cid=$(psql -X -q -tAc "INSERT INTO customers (email, country) VALUES ('firstrun-$i@example.com', 'SE') RETURNING id")
      psql -X -qc "INSERT INTO orders (customer_id, amount, status) VALUES ($cid, $i.50, 'pending')"
    done
    psql -X -qc "UPDATE orders SET status = 'paid' WHERE amount = 2.50"
    psql -X -qc "DELETE FROM orders WHERE amount = 3.50"
    DATAFLOW_BUILD_DIR=$BUILD scripts/jobs start
    scripts/verify-warehouse --wait 90 || { scripts/jobs logs stream_orders >&2; fail "the warehouse does not match the source"; }
    [[ $(psql -X -tAc "SELECT count(*) FROM fact_orders WHERE status = 'paid' AND amount = 2.50") == 1 ]] || fail "the update did not arrive"
    [[ $(psql -X -tAc "SELECT count(*) FROM fact_orders WHERE is_deleted") == 1 ]] || fail "the delete did not arrive"
    scripts/jobs stop

    scripts/stack reset
    [[ ! -e "$data" ]] || fail "reset left $data behind"
    [[ ! -e .state/stack ]] || fail "reset left .state/stack behind"
    pgrep -f "$clone" > /dev/null && fail "a process still runs from the clone"
    echo "private_clone: ok (data was in $data)"
    ;;

  private_clone_user)
    if [[ $(id -u) -ne 0 ]] || ! command -v useradd > /dev/null; then
      echo "SKIP: creating a user needs root and useradd"; exit 0
    fi
    user=dfrun$$
    useradd --create-home --home-dir "/home/$user" --shell /bin/bash "$user" || { echo "SKIP: useradd refused"; exit 0; }
    cleanup() {
      runuser -u "$user" -- bash -c "cd ~/dataflow 2>/dev/null && scripts/stack reset" > /dev/null 2>&1 || true
      pkill -u "$user" 2>/dev/null || true
      userdel -r "$user" > /dev/null 2>&1 || true
    }
    trap cleanup EXIT
    chmod 0700 "/home/$user"
    copy_tree "/home/$user/dataflow"
    chown -R "$user:" "/home/$user/dataflow"
    as_user() { runuser -u "$user" -- env -i HOME="/home/$user" PATH=/usr/local/bin:/usr/bin:/bin USER="$user" bash -c "cd ~/dataflow && $1"; }
    as_user "scripts/stack up --only=postgres"
    [[ $(stat -c %a "/home/$user") == 700 ]] || fail "up changed the home's permissions"
    out=$(as_user 'eval "$(scripts/stack env)" && psql -X -tAc "SELECT current_setting('"'"'wal_level'"'"') || '"'"' '"'"' || count(*) FROM dim_customers"')
    [[ "$out" == "logical 0" ]] || fail "psql on the user's stack returned '$out'"
    grep -q "postgres: running" <<< "$(as_user "scripts/stack status" || true)" || fail "status does not see PostgreSQL"
    ps -o user= -p "$(head -n 1 "/home/$user/dataflow/.state/stack/pg/data/postmaster.pid")" | grep -q "$user" \
      || fail "PostgreSQL does not run as $user"
    as_user "scripts/stack reset"
    [[ ! -e "/home/$user/dataflow/.state/stack" ]] || fail "reset left the state behind"
    # (A zombie is no process left running: this sandbox's init may not reap the server.)
    ps -u "$user" -o stat= | grep -qv '^Z' && { ps -fu "$user" >&2; fail "a process of $user is left"; }
    echo "private_clone_user: ok"
    ;;

  pipeline_direct)
    export DATAFLOW_STATE_DIR=$BUILD/firstrun-direct DATAFLOW_BUILD_DIR=$BUILD
    log=$BUILD/firstrun-direct.log
    pipeline=""
    cleanup() {
      [[ -n "$pipeline" ]] && kill -TERM "$pipeline" 2>/dev/null && wait "$pipeline" 2>/dev/null
      "$ROOT/scripts/jobs" stop > /dev/null 2>&1 || true
      "$ROOT/scripts/stack" reset > /dev/null 2>&1 || true
    }
    trap cleanup EXIT
    "$ROOT/scripts/stack" reset > /dev/null 2>&1 || true
    "$ROOT/scripts/run-pipeline" --direct --ops 400 --rate 200 --seed 11 > "$log" 2>&1 &
    pipeline=$!
    for _ in $(seq 1 900); do
      grep -q "simulator finished" "$log" && break
      kill -0 "$pipeline" 2>/dev/null || { cat "$log" >&2; pipeline=""; fail "run-pipeline --direct exited before the simulator finished"; }
      sleep 0.2
    done
    grep -q "simulator finished" "$log" || { tail -n 30 "$log" >&2; fail "the simulator did not finish within 180 s"; }
    eval "$("$ROOT/scripts/stack" env)"
    # While it runs: both jobs read the replication stream, each from a slot of its own, and write
    # to the warehouse as etl_jobs.
    slots=$(psql -X -tAc "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'dataflow_%'")
    ((slots >= 2)) || fail "$slots active slots of the jobs, expected 2"
    writers=$(psql -X -tAc "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity
                             WHERE application_name IN ('customers-cdc-warehouse', 'orders-cdc-warehouse') AND backend_type = 'client backend'")
    [[ "$writers" == etl_jobs ]] || fail "the jobs write as '$writers', not etl_jobs"
    kill -TERM "$pipeline"  # as Ctrl-C (a background job of a script ignores SIGINT)
    for _ in $(seq 1 300); do kill -0 "$pipeline" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pipeline" 2>/dev/null && { tail -n 30 "$log" >&2; fail "run-pipeline did not stop within 60 s of SIGTERM"; }
    rc=0; wait "$pipeline" || rc=$?
    pipeline=""
    ((rc == 0)) || { tail -n 30 "$log" >&2; fail "run-pipeline exited with $rc after SIGTERM"; }
    grep -q "verify-warehouse: orders: .* warehouse matches" "$log" || { tail -n 30 "$log" >&2; fail "the warehouse does not match the source"; }
    grep -q "verify-warehouse: customers: .* warehouse matches" "$log" || { tail -n 30 "$log" >&2; fail "the warehouse does not match the source"; }
    [[ $(psql -X -tAc "SELECT count(*) FROM dlq_events") == 0 ]] || fail "dead letters on a clean run"
    grep -qi "kafka\|connect" <<< "$("$ROOT/scripts/stack" status 2>&1 | grep running)" && fail "the direct pipeline started a JVM component"
    echo "pipeline_direct: ok"
    ;;

  port_taken)
    export DATAFLOW_STATE_DIR=$BUILD/firstrun-ports
    STACK=$ROOT/scripts/stack
    holder=""
    cleanup() { [[ -n "$holder" ]] && kill "$holder" 2>/dev/null; "$STACK" reset > /dev/null 2>&1 || true; }
    trap cleanup EXIT
    "$STACK" reset > /dev/null 2>&1 || true
    "$STACK" up --only=kafka
    port() { (source "$DATAFLOW_STATE_DIR/ports.env"; echo "${!1}"); }
    k0=$(port KAFKA_PORT)
    read -r low _ < /proc/sys/net/ipv4/ip_local_port_range
    for p in $k0 $(port CONTROLLER_PORT) $(port PG_PORT) $(port CONNECT_PORT) $(port KAFKA_SASL_PORT); do
      ((p < low)) || fail "port $p lies in the ephemeral range (from $low)"
    done
    # Up again while the broker runs: its own port is kept.
    out=$("$STACK" up --only=kafka 2>&1)
    [[ $(port KAFKA_PORT) == "$k0" ]] || fail "up moved the running broker's port"
    grep -q moving <<< "$out" && fail "up reported a move while the broker held its own port: $out"
    "$STACK" down

    # hold PORT MODE: a socket bound to PORT, listening or connected (as a client's source port).
    hold() {
      python3 - "$1" "$2" <<'PY' &
import socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
if mode == "listen":
    s.bind(("127.0.0.1", port)); s.listen()
else:  # a client connection whose source port is PORT, as Kafka Connect's was in the issue
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
    s.bind(("127.0.0.1", port)); s.connect(server.getsockname()); peer, _ = server.accept()
time.sleep(300)
PY
      holder=$!
      for _ in $(seq 1 50); do ss -tanH "( sport = :$1 )" | grep -q . && return; sleep 0.1; done
      fail "could not hold port $1"
    }
    for mode in listen connect; do
      before=$(port KAFKA_PORT)
      hold "$before" "$mode"
      out=$("$STACK" up --only=kafka 2>&1) || { echo "$out" >&2; fail "up failed with port $before held ($mode)"; }
      after=$(port KAFKA_PORT)
      [[ "$after" != "$before" ]] || fail "up kept port $before although another socket ($mode) holds it"
      contains "$out" "port $before of Kafka is now held by another socket"
      contains "$out" "moving Kafka to $after"
      kcat -b "127.0.0.1:$after" -L -m 10 > /dev/null || fail "the broker does not answer on $after"
      "$STACK" down
      kill "$holder"; wait "$holder" 2>/dev/null || true; holder=""
      echo "port_taken: $mode on $before -> moved to $after"
    done

    # A port the user named is not moved: up fails and says which setting names it.
    taken=$(port KAFKA_PORT)
    hold "$taken" listen
    expect_failure out env STACK_KAFKA_PORT="$taken" "$STACK" up --only=kafka
    contains "$out" "port $taken for Kafka (set by STACK_KAFKA_PORT) is held by another socket"
    echo "port_taken: ok"
    ;;

  broker_killed)
    export DATAFLOW_STATE_DIR=$BUILD/firstrun-killed
    STACK=$ROOT/scripts/stack
    trap '"$STACK" reset > /dev/null 2>&1 || true' EXIT
    "$STACK" reset > /dev/null 2>&1 || true
    pidfile=$DATAFLOW_STATE_DIR/kafka/pid
    # Kill the broker as soon as it runs, long before it is ready.
    (
      for _ in $(seq 1 600); do
        if [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
          sleep 0.5; kill -KILL "$(cat "$pidfile")"; exit 0
        fi
        sleep 0.05
      done
    ) &
    killer=$!
    expect_failure out "$STACK" up --only=kafka
    wait "$killer" || true
    contains "$out" "ERROR: Kafka exited while starting"
    contains "$out" "killed by SIGKILL"
    contains "$out" "full log: $DATAFLOW_STATE_DIR/logs/kafka.log"
    # A cause in the log is named: the broker cannot write its storage.
    "$STACK" down > /dev/null 2>&1 || true
    chmod 0500 "$DATAFLOW_STATE_DIR/kafka/data"
    if [[ $(id -u) -eq 0 ]]; then
      # root ignores file modes: make the storage path a file instead.
      chmod 0700 "$DATAFLOW_STATE_DIR/kafka/data"
      rm -rf "$DATAFLOW_STATE_DIR/kafka/data/__cluster_metadata-0"
      : > "$DATAFLOW_STATE_DIR/kafka/data/__cluster_metadata-0"
    fi
    expect_failure out "$STACK" up --only=kafka
    contains "$out" "ERROR: Kafka exited while starting"
    contains "$out" "cause:"
    grep -q "cause: nothing in its log" <<< "$out" && { echo "$out" >&2; fail "no cause named for a broker that cannot open its storage"; }
    echo "$out" | sed -n '/cause:/,/last lines/p'
    echo "broker_killed: ok"
    ;;

  *) echo "usage: $0 private_clone|private_clone_user|port_taken|broker_killed" >&2; exit 2 ;;
esac
