#!/usr/bin/env bash
# The job supervisor outside Docker (label unit): submit, list, logs, stop, restart of a crashing
# job with backoff, and SIGTERM to the supervisor stopping every job gracefully.
set -euo pipefail
DATAFLOW=${1:?path to the dataflow program}
HERE=$(cd "$(dirname "$0")" && pwd)
export DATAFLOW_HOME=$(mktemp -d)
export DATAFLOW_JOBS_DIR=$HERE
trap 'kill -9 "$sup" 2>/dev/null || true; rm -rf "$DATAFLOW_HOME"' EXIT
fail() { echo "FAIL: $*" >&2; cat "$DATAFLOW_HOME/supervisor.log" >&2; "$DATAFLOW" list >&2 || true; exit 1; }

"$DATAFLOW" list > /dev/null 2>&1 && fail "list without a supervisor should fail"
"$DATAFLOW" supervise > "$DATAFLOW_HOME/supervisor.log" 2>&1 &
sup=$!
for _ in $(seq 1 50); do [[ -S "$DATAFLOW_HOME/supervisor.sock" ]] && break; sleep 0.1; done

"$DATAFLOW" submit fake_job.sh | grep -q "submitted fake_job.sh" || fail "submit"
"$DATAFLOW" submit --name second fake_job.sh | grep -q "submitted second" || fail "submit --name"
out=$("$DATAFLOW" submit fake_job.sh 2>&1) && fail "a second submit of a running job must be refused"
[[ "$out" == *"already running"* ]] || fail "message: $out"
out=$("$DATAFLOW" submit no_such_job 2>&1) && fail "an unknown job must be refused"
[[ "$out" == *"no job program"* ]] || fail "message: $out"
"$DATAFLOW" list | grep -Eq "^fake_job.sh +running" || fail "list"
sleep 0.5
grep -q "batch 2" <<< "$("$DATAFLOW" logs fake_job.sh)" || fail "logs"

"$DATAFLOW" stop fake_job.sh | grep -q "stopped fake_job.sh" || fail "stop"
"$DATAFLOW" logs fake_job.sh | tail -n 1 | grep -q "committed batch" || fail "stop was not graceful"
"$DATAFLOW" list | grep -Eq "^fake_job.sh +stopped" || fail "state after stop"

"$DATAFLOW" submit --name crasher fake_job.sh crash > /dev/null
sleep 4
restarts=$("$DATAFLOW" list | awk '$1 == "crasher" {print $4}')
((restarts >= 1 && restarts <= 3)) || fail "a crashing job should be restarted with backoff (restarts=$restarts)"
grep -q "crasher exited with 3; restarting in 1 s" "$DATAFLOW_HOME/supervisor.log" || fail "no backoff message"

# Secrets in a job's arguments are not shown (list, status page) and the remembered arguments are
# readable by the owner only.
"$DATAFLOW" submit --name secretive fake_job.sh --pg-url 'postgresql://etl:Sh0wN0t@db:5432/wh' \
  --kafka-option sasl.password=Sh0wN0t 'host=db password=Sh0wN0t dbname=wh' --pg-password Sh0wN0t \
  'postgresql://db/wh?user=etl&password=Sh0wN0t&sslmode=require' > /dev/null
shown=$("$DATAFLOW" list)
[[ "$shown" == *"postgresql://etl:***@db:5432/wh --kafka-option sasl.password=*** host=db password=*** dbname=wh --pg-password *** postgresql://db/wh?user=etl&password=***&sslmode=require"* ]] \
  || fail "the secret arguments are not masked: $shown"
[[ "$shown" != *Sh0wN0t* ]] || fail "a secret is shown: $shown"
[[ $(stat -c %a "$DATAFLOW_HOME/submitted.json") == 600 ]] || fail "submitted.json is $(stat -c %a "$DATAFLOW_HOME/submitted.json")"
"$DATAFLOW" stop secretive > /dev/null

kill -TERM "$sup"
rc=0; wait "$sup" || rc=$?
((rc == 0)) || fail "supervisor exit code $rc after SIGTERM"
"$DATAFLOW" logs second | tail -n 1 | grep -q "committed batch" || fail "SIGTERM did not stop the jobs gracefully"
[[ ! -S "$DATAFLOW_HOME/supervisor.sock" ]] || fail "socket left behind"

# Started again (docker start): the jobs that were running come back, the stopped one does not.
"$DATAFLOW" supervise >> "$DATAFLOW_HOME/supervisor.log" 2>&1 &
sup=$!
for _ in $(seq 1 50); do [[ -S "$DATAFLOW_HOME/supervisor.sock" ]] && break; sleep 0.1; done
sleep 0.3
"$DATAFLOW" list | grep -Eq "^second +running" || fail "a job running at SIGTERM was not resumed"
"$DATAFLOW" list | grep -Eq "^crasher +(running|restarting)" || fail "a restarting job was not resumed"
"$DATAFLOW" list | grep -q "^fake_job.sh " && fail "a job stopped with 'dataflow stop' was started again"
grep -q "resuming second" "$DATAFLOW_HOME/supervisor.log" || fail "no resume message"
"$DATAFLOW" stop crasher > /dev/null
kill -TERM "$sup"
wait "$sup" || fail "supervisor exit code after the second SIGTERM"
echo "supervisor: ok"
