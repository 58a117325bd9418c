#!/usr/bin/env python3
"""A seeded fault campaign over the whole pipeline (ctest label `chaos`).

The simulator writes to the source at a steady rate while a schedule drawn from the seed injects
faults, one at a time or overlapping: kill -9 and SIGSTOP/SIGCONT of each job, of the Kafka
broker, of Kafka Connect and of the PostgreSQL server (crash recovery, not a clean restart);
pg_terminate_backend of the jobs' warehouse connections mid-transaction; a warehouse table locked
longer than a batch; the checkpoint filesystem of a job full; a topic's partitions increased.

Nobody helps the jobs: they run under `dataflow supervise`, which restarts a job that exits, as in
production. After each fault clears, a probe (a new customer and an order of theirs) measures how
long until changes flow end to end again. The schedule runs in phases; at the end of each phase
(a quiescent point: the simulator done, every fault cleared) the invariants are checked:
  - the warehouse equals the source (scripts/verify-warehouse);
  - every malformed record injected so far is in dlq_events exactly once with its exact bytes,
    and nothing else is (faults never make dead letters);
  - no job is in a crash loop (both running, same pid and restart count over a quiet interval).

The seed, the schedule and each invariant's result are printed; the same seed gives the same
schedule. A JSON report (--report) keeps the counts: faults by kind, recoveries, time to recover
(p50/max), invariant checks passed.

Runs against a stack that is up (scripts/stack up with DATAFLOW_STATE_DIR) and the jobs built in
DATAFLOW_BUILD_DIR; tests/chaos/chaos_test.sh does both for ctest.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
JOBS = ("stream_customers", "stream_orders")
TOPICS = ("dbserver1.public.customers", "dbserver1.public.orders")
# Every kind of fault, and the components it occupies while active: faults on distinct components
# overlap freely; faults on one component follow each other.
KINDS = {
    "kill_job": ("job",),
    "pause_job": ("job",),
    "kill_kafka": ("kafka",),
    "pause_kafka": ("kafka",),
    "kill_connect": ("connect",),
    "pause_connect": ("connect",),
    "kill_postgres": ("postgres",),
    "pause_postgres": ("postgres",),
    "terminate_backends": ("postgres",),
    "lock_table": ("postgres",),
    "disk_full": ("disk",),
    "add_partitions": ("kafka", "connect"),
}
MAX_PARTITIONS = 6


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CampaignError(Exception):
    pass


# ------------------------------------------------------------------------------------ schedule
def make_schedule(seed, duration, phase_seconds, mean_gap, pause, down, kinds):
    """The faults, from the seed alone: (start offset, kind, target, seconds active). The first
    len(kinds) faults are every kind once, in a random order, so even a short run covers them."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    faults, t, partitions = [], 2.0, {topic: 1 for topic in TOPICS}
    while t < duration:
        kind = order.pop(0) if order else rng.choice(kinds)
        target, seconds = "", 0.0
        if kind in ("kill_job", "pause_job"):
            target = rng.choice(JOBS)
        elif kind == "lock_table":
            target = rng.choice(("dim_customers", "fact_orders"))
        elif kind == "add_partitions":
            topic = rng.choice(TOPICS)
            if partitions[topic] >= MAX_PARTITIONS:
                continue
            partitions[topic] += 1
            target = f"{topic}={partitions[topic]}"
        if kind.startswith("pause_"):
            seconds = rng.uniform(*pause)
        elif kind in ("kill_kafka", "kill_connect", "kill_postgres"):
            seconds = rng.uniform(*down)
        elif kind == "lock_table":
            seconds = rng.uniform(3, 12)
        elif kind == "disk_full":
            seconds = rng.uniform(3, 15)
        # Faults start inside a phase, so each phase ends at a quiescent point.
        phase_end = (int(t // phase_seconds) + 1) * phase_seconds
        if t + seconds > phase_end - 1:
            t = phase_end + 2.0
            continue
        faults.append({"id": len(faults) + 1, "at": round(t, 1), "kind": kind, "target": target,
                       "seconds": round(seconds, 1)})
        t += rng.expovariate(1.0 / mean_gap)
    return faults


# ------------------------------------------------------------------------------------ the stack
class Stack:
    def __init__(self, state, build):
        self.state, self.build = state, build
        out = subprocess.run(["bash", "-c", f'eval "$("{ROOT}/scripts/stack" env)" && env -0'],
                             check=True, capture_output=True, env=dict(os.environ, DATAFLOW_STATE_DIR=state)).stdout
        self.env = dict(os.environ)
        self.env.update(kv.split("=", 1) for kv in out.decode().split("\0") if "=" in kv)
        self.env.update(DATAFLOW_STATE_DIR=state, PGCONNECT_TIMEOUT="3",
                        PGOPTIONS="-c client_min_messages=warning")

    def run(self, args, timeout=300, check=True, **kw):
        r = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise CampaignError(f"{' '.join(args)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-600:]}")
        return r

    def sql(self, query, timeout=15):
        return self.run(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", query], timeout=timeout).stdout.strip()

    def try_sql(self, query, timeout=15):
        try:
            return self.sql(query, timeout)
        except (CampaignError, subprocess.TimeoutExpired):
            return None

    def pid(self, component):
        if component == "postgres":
            data = os.path.join(os.path.realpath(os.path.join(self.state, "pg")), "data", "postmaster.pid")
            with open(data) as f:
                return int(f.readline())
        with open(os.path.join(self.state, component, "pid")) as f:
            return int(f.read().strip())

    def postgres_pids(self):
        """The postmaster and its children: SIGSTOP of the postmaster alone would leave the
        backends serving."""
        pm = self.pid("postgres")
        children = self.run(["pgrep", "-P", str(pm)], check=False).stdout.split()
        return [pm] + [int(c) for c in children]

    def restart(self, component, attempts=10):
        """Starts a component again (after kill -9: the postmaster's orphans may hold its shared
        memory for a moment, so PostgreSQL is retried)."""
        for attempt in range(attempts):
            r = self.run([f"{ROOT}/scripts/stack", "restart", component], check=False, timeout=400)
            if r.returncode == 0:
                return
            log(f"  restart {component} failed (attempt {attempt + 1}): {r.stderr.strip()[-300:]}")
            time.sleep(2)
        raise CampaignError(f"{component} did not start again after {attempts} attempts")

    def partitions(self, topic):
        r = self.run(["kcat", "-b", self.env["KAFKA_BOOTSTRAP"], "-L", "-J", "-t", topic], timeout=30)
        return len(json.loads(r.stdout)["topics"][0]["partitions"])


def as_root(argv):
    """mount and umount need root: sudo without a password prompt when not root already."""
    return argv if os.geteuid() == 0 else ["sudo", "-n"] + argv


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------ campaign
class Campaign:
    def __init__(self, args):
        self.args = args
        self.stack = Stack(args.state_dir, args.build_dir)
        self.work = os.path.join(args.state_dir, "chaos")
        self.home = os.path.join(self.work, "home")
        self.ckpt = os.path.join(self.work, "checkpoint")
        self.dataflow = os.path.join(args.build_dir, "jobs", "supervisor", "dataflow")
        if not os.access(self.dataflow, os.X_OK):
            self.dataflow = shutil.which("dataflow", path=os.path.join(args.build_dir, "jobs")) or self.dataflow
        self.lock = threading.Lock()
        self.results = []        # one entry per fault: what happened, when it cleared, recovery time
        self.checks = []         # invariant checks: (phase, name, passed, detail)
        self.malformed = []      # (topic, md5 of the bytes) of every malformed record injected
        self.sim_reports = []
        self.failed = threading.Event()
        self.supervisor = None
        self.sim = None
        self.mounted = False
        self.probe_seq = 0
        self.run_id = time.strftime("%Y%m%d%H%M%S")  # probe rows of an earlier run on the same stack differ

    # ---- set-up and tear-down
    def stop_earlier_supervisors(self):
        """A supervisor of an earlier run on this home (one that was killed before its teardown)
        would keep its jobs running beside this run's: stop it, and they stop with it."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"/dataflow") and b"supervise" in argv and f"DATAFLOW_HOME={self.home}".encode() in environ:
                log(f"stopping the supervisor of an earlier run (pid {pid})")
                os.kill(int(pid), signal.SIGTERM)
                for _ in range(300):
                    if not os.path.exists(f"/proc/{pid}"):
                        break
                    time.sleep(0.1)

    def setup(self):
        # A campaign starts its jobs afresh: a supervisor home left by an earlier run would resume
        # that run's jobs (the stack and the jobs' warehouse checkpoint are kept: replays are no-ops).
        self.stop_earlier_supervisors()
        shutil.rmtree(self.home, ignore_errors=True)
        if os.path.ismount(self.ckpt):
            subprocess.run(as_root(["umount", "-l", self.ckpt]), check=False)
        os.makedirs(self.home, exist_ok=True)
        os.makedirs(self.ckpt, exist_ok=True)
        if "disk_full" in self.args.kinds:
            # The job's checkpoint on a small filesystem of its own, so that filling it hurts
            # nothing else.
            r = subprocess.run(as_root(["mount", "-t", "tmpfs", "-o", f"size=16m,mode=0700,uid={os.getuid()},gid={os.getgid()}",
                                        "chaos-checkpoint", self.ckpt]), capture_output=True, text=True)
            if r.returncode != 0:
                raise CampaignError(f"disk_full needs a small filesystem for the checkpoint and mount failed "
                                    f"({r.stderr.strip()}); run as root (or with sudo) or leave disk_full out of --kinds")
            self.mounted = True
        # The jobs log in as the stack's warehouse role, as scripts/jobs starts them.
        env = dict(self.stack.env, PG_URL=self.stack.env["JOBS_PG_URL"], DATAFLOW_HOME=self.home,
                   DATAFLOW_JOBS_DIR=os.path.join(self.args.build_dir, "jobs"))
        self.sup_log = open(os.path.join(self.work, "supervisor.log"), "a")
        self.supervisor = subprocess.Popen([self.dataflow, "supervise"], env=env, stdout=self.sup_log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        self.sup_env = env
        for _ in range(100):
            if os.path.exists(os.path.join(self.home, "supervisor.sock")):
                break
            time.sleep(0.1)
        self.df(["submit", "stream_customers"])
        self.df(["submit", "stream_orders", "--checkpoint-dir", os.path.join(self.ckpt, "orders")])
        self.dlq_base = int(self.stack.sql("SELECT count(*) FROM dlq_events"))
        self.probe(0, "start", time.time(), bound=180)

    def teardown(self):
        if self.sim and self.sim.poll() is None:
            self.sim.kill()
        if self.supervisor and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.supervisor.pid, signal.SIGKILL)
        if self.mounted:
            subprocess.run(as_root(["umount", "-l", self.ckpt]), check=False)

    def df(self, args, timeout=60):
        r = subprocess.run([self.dataflow] + args, env=self.sup_env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise CampaignError(f"dataflow {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def jobs(self):
        """name -> (state, pid, restarts), from `dataflow list`."""
        out = {}
        for line in self.df(["list"]).splitlines()[1:]:
            f = line.split()
            if len(f) >= 4:
                out[f[0]] = (f[1], int(f[2]), int(f[3]))
        return out

    def running_pid(self, job, wait=120):
        """The job's pid once the supervisor has it running (it may be waiting out a backoff)."""
        deadline = time.time() + wait
        while True:
            state, pid, _ = self.jobs().get(job, ("missing", 0, 0))
            if state == "running" and pid > 0:
                return pid
            if time.time() > deadline:
                raise CampaignError(f"{job} is {state}, not running, {wait} s after its last fault cleared")
            time.sleep(0.2)

    # ---- probes: is the pipeline flowing again?
    def probe(self, fault_id, what, cleared_at, bound=None):
        """Inserts a customer and an order and waits until both are in the warehouse; returns the
        seconds from cleared_at."""
        bound = bound or self.args.recover_bound
        deadline = cleared_at + bound
        with self.lock:
            self.probe_seq += 1
            email = f"chaos-probe-{self.args.seed}-{self.run_id}-{self.probe_seq}@example.com"
        ids = None
        while ids is None and time.time() < deadline:
            out = self.stack.try_sql(
                f"WITH c AS (INSERT INTO customers (email, country) VALUES ('{email}', 'NL') RETURNING id), "
                f"o AS (INSERT INTO orders (customer_id, amount, status) SELECT id, 1.00, 'probe' FROM c RETURNING id) "
                f"SELECT (SELECT id FROM c) || ' ' || (SELECT id FROM o)")
            if out:
                ids = out.split()
            else:
                time.sleep(0.5)
        while ids and time.time() < deadline:
            got = self.stack.try_sql(
                f"SELECT (SELECT count(*) FROM dim_customers WHERE customer_id = {ids[0]}) + "
                f"(SELECT count(*) FROM fact_orders WHERE order_id = {ids[1]})", timeout=5)
            if got == "2":
                return time.time() - cleared_at
            time.sleep(0.2)
        raise CampaignError(f"fault {fault_id} ({what}): changes did not reach the warehouse within {bound:.0f} s "
                            f"of the fault clearing ({'probe rows ' + ' '.join(ids) if ids else 'could not even write the probe'})")

    # ---- faults
    def inject(self, f):
        kind, target, seconds = f["kind"], f["target"], f["seconds"]
        st = self.stack
        if kind == "kill_job":
            os.kill(self.running_pid(target), signal.SIGKILL)
        elif kind == "pause_job":
            pid = self.running_pid(target)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(seconds)
            os.kill(pid, signal.SIGCONT)
        elif kind in ("kill_kafka", "kill_connect", "kill_postgres"):
            component = kind.split("_")[1]
            os.kill(st.pid(component), signal.SIGKILL)
            time.sleep(seconds)
            st.restart(component)
        elif kind in ("pause_kafka", "pause_connect", "pause_postgres"):
            component = kind.split("_")[1]
            pids = st.postgres_pids() if component == "postgres" else [st.pid(component)]
            signal_all(pids, signal.SIGSTOP)
            time.sleep(seconds)
            signal_all(pids, signal.SIGCONT)
        elif kind == "terminate_backends":
            n = st.sql("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name IN ('customers-cdc-warehouse', 'orders-cdc-warehouse')) t")
            f["detail"] = f"{n} connections terminated"
        elif kind == "lock_table":
            st.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                    f"BEGIN; LOCK TABLE {target} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT;"],
                   timeout=seconds + 60)
        elif kind == "disk_full":
            filler = os.path.join(self.ckpt, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                chunk = b"\0" * 65536
                while True:  # unbuffered writes, smaller and smaller: every last byte taken
                    try:
                        os.write(fd, chunk)
                    except OSError:
                        if len(chunk) == 1:
                            break
                        chunk = chunk[: len(chunk) // 2]
            finally:
                os.close(fd)
            free = shutil.disk_usage(self.ckpt).free
            f["detail"] = f"{free} bytes left"
            time.sleep(seconds)
            os.unlink(filler)
        elif kind == "add_partitions":
            topic, count = target.split("=")
            count = max(int(count), st.partitions(topic) + 1)
            st.run([f"{ROOT}/scripts/stack", "partitions", topic, str(count)], timeout=120)
            # Connect's producer learns of new partitions when its metadata is refreshed (5 min by
            # default); restarting the task, as an operator would, gives it a fresh producer.
            st.run(["curl", "-sf", "-X", "POST",
                    f"{st.env['CONNECT_URL']}/connectors/postgres-cdc/restart?includeTasks=true"], timeout=60)
            f["detail"] = f"{topic} now has {count} partitions"
        else:
            raise CampaignError(f"unknown fault kind {kind}")

    def run_fault(self, f):
        started = time.time()
        f["t_start"] = started
        try:
            self.inject(f)
            cleared = time.time()
            f["t_cleared"] = cleared
            f["active_s"] = round(cleared - started, 1)
            f["recovery_s"] = round(self.probe(f["id"], f"{f['kind']} {f['target']}".strip(), cleared), 2)
            log(f"fault {f['id']} {f['kind']} {f['target']}: cleared after {f['active_s']} s, "
                f"changes flowing {f['recovery_s']} s later{' (' + f['detail'] + ')' if 'detail' in f else ''}")
        except Exception as e:  # noqa: BLE001 -- any failure of a fault ends the campaign, reported
            f["error"] = str(e)
            log(f"fault {f['id']} {f['kind']} {f['target']}: FAILED: {e}")
            self.failed.set()
        finally:
            with self.lock:
                self.results.append(f)

    # ---- load and malformed records
    def start_simulator(self, phase):
        """The load of a phase: runs until the phase's faults are done (SIGTERM stops it cleanly)."""
        log_path = os.path.join(self.work, f"sim-{phase}.log")
        sim = subprocess.Popen([os.path.join(self.args.build_dir, "jobs", "simulate_writes"), "--ops", "0",
                                "--rate", str(self.args.rate), "--batch", "2", "--seed", str(self.args.seed * 1000 + phase)],
                               env=self.stack.env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        return sim, log_path

    def inject_malformed(self, phase):
        """Three bad records, unique to this run and phase, onto the Debezium topics."""
        rng = random.Random(self.args.seed * 7919 + phase)
        tag = f"{self.args.seed}-{self.run_id}-{phase}"
        bodies = [b'{"op": "c", "after": {"id": 1, "chaos": "' + tag.encode() + b'"',
                  b"chaos " + tag.encode() + b" is not json",
                  b'{"op": "c", "after": {"id": "chaos-' + tag.encode() + b'", "customer_id": 1}, "source": {"lsn": 1}}']
        for body in bodies:
            topic = rng.choice(TOPICS)
            path = os.path.join(self.work, "malformed.bin")
            with open(path, "wb") as out:
                out.write(body)
            for attempt in range(20):
                r = self.stack.run(["kcat", "-b", self.stack.env["KAFKA_BOOTSTRAP"], "-P", "-t", topic, "-p", "0",
                                    "-k", '{"id":0}', path], check=False, timeout=60)
                if r.returncode == 0:
                    break
                time.sleep(1)
            else:
                raise CampaignError(f"could not produce a malformed record to {topic}: {r.stderr.strip()}")
            self.malformed.append((topic, hashlib.md5(body).hexdigest()))

    # ---- invariants at a quiescent point
    def check(self, phase, name, passed, detail):
        self.checks.append({"phase": phase, "check": name, "passed": passed, "detail": detail})
        log(f"phase {phase} check {name}: {'PASS' if passed else 'FAIL'} ({detail})")

    def quiescent_checks(self, phase):
        r = self.stack.run([f"{ROOT}/scripts/verify-warehouse", "--wait", str(self.args.verify_wait)], check=False,
                           timeout=self.args.verify_wait + 60)
        self.check(phase, "warehouse_equals_source", r.returncode == 0, (r.stdout + r.stderr).strip().replace("\n", "; "))

        deadline = time.time() + 60
        while True:
            missing = []
            for topic, md5 in self.malformed:
                n = self.stack.try_sql(f"SELECT count(*) FROM dlq_events WHERE source_topic = '{topic}' "
                                       f"AND md5(raw_payload) = '{md5}'")
                if n != "1":
                    missing.append(f"{topic}/{md5[:8]}: {n}")
            total = int(self.stack.sql("SELECT count(*) FROM dlq_events")) - self.dlq_base
            if (not missing and total == len(self.malformed)) or time.time() > deadline:
                break
            time.sleep(1)
        self.check(phase, "dead_letters_exactly_once", not missing and total == len(self.malformed),
                   f"{len(self.malformed)} injected, {total} in dlq_events" + (f"; not once: {missing}" if missing else ""))

        before = self.jobs()
        time.sleep(self.args.quiet_seconds)
        after = self.jobs()
        running = all(after.get(j, ("missing",))[0] == "running" for j in JOBS)
        stable = all(before.get(j) == after.get(j) for j in JOBS)
        self.check(phase, "no_crash_loop", running and stable,
                   ", ".join(f"{j}: {after.get(j, ('missing', 0, 0))[0]}, restarts {after.get(j, (0, 0, 0))[2]}" for j in JOBS))

    # ---- the run
    def run(self):
        a = self.args
        schedule = make_schedule(a.seed, a.duration, a.phase_seconds, a.mean_gap, a.pause, a.down, a.kinds)
        log(f"seed {a.seed}: {len(schedule)} faults over {a.duration} s in phases of {a.phase_seconds} s, "
            f"load {a.rate} changes/s")
        for f in schedule:
            log(f"  schedule: {f['at']:7.1f} s  #{f['id']:<3} {f['kind']:<18} {f['target']:<34} {f['seconds']} s")
        self.setup()
        busy = {}  # component -> thread
        phases = int((a.duration + a.phase_seconds - 1) // a.phase_seconds)
        pending = list(schedule)
        for phase in range(1, phases + 1):
            # A phase's faults are placed relative to its start: a phase that ran long (faults
            # waiting for their component, slow recoveries) delays the next, never crowds it.
            t0 = time.time() - (phase - 1) * a.phase_seconds
            phase_end = phase * a.phase_seconds
            self.inject_malformed(phase)
            sim, sim_log = self.start_simulator(phase)
            self.sim = sim
            threads = []
            while pending and pending[0]["at"] < phase_end and not self.failed.is_set():
                f = pending[0]
                now = time.time() - t0
                if now < f["at"]:
                    time.sleep(min(0.1, f["at"] - now))
                    continue
                comps = [c if c != "job" else f"job:{f['target']}" for c in KINDS[f["kind"]]]
                if any(busy.get(c) and busy[c].is_alive() for c in comps):
                    time.sleep(0.1)  # the component is still busy with an earlier fault: this one waits
                    continue
                pending.pop(0)
                f["started_at"] = round(now, 1)
                log(f"fault {f['id']} {f['kind']} {f['target']} for {f['seconds']} s")
                th = threading.Thread(target=self.run_fault, args=(f,), daemon=True)
                th.start()
                threads.append(th)
                for c in comps:
                    busy[c] = th
            for th in threads:
                th.join()
            while time.time() - t0 < phase_end and not self.failed.is_set():
                time.sleep(0.2)  # the load runs the whole phase
            sim.send_signal(signal.SIGTERM)
            try:
                rc = sim.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sim.kill()
                rc = "did not stop within 60 s of SIGTERM"
            with open(sim_log) as fh:
                report = "; ".join(line for line in fh.read().strip().splitlines()[-2:] if line.startswith("simulate_writes"))
            self.sim_reports.append({"phase": phase, "exit": rc, "report": report})
            self.check(phase, "simulator_survived", rc == 0, f"exit {rc}: {report}")
            if self.failed.is_set():
                break
            log(f"phase {phase}: quiescent point")
            self.quiescent_checks(phase)
            if not all(c["passed"] for c in self.checks):
                break
        return self.report(schedule)

    def report(self, schedule):
        done = [f for f in self.results if "recovery_s" in f]
        rec = sorted(f["recovery_s"] for f in done)
        # A fault recovers "alone" when no other fault was active while it waited for changes to flow:
        # the recovery times of overlapping faults include each other's outages.
        for f in done:
            window = (f["t_cleared"], f["t_cleared"] + f["recovery_s"])
            f["alone"] = not any(g is not f and "t_start" in g and g["t_start"] < window[1]
                                 and g.get("t_cleared", float("inf")) > window[0] for g in self.results)
        alone = sorted(f["recovery_s"] for f in done if f["alone"])
        for f in self.results:
            for k in ("t_start", "t_cleared"):
                f.pop(k, None)
        by_kind = {}
        for f in self.results:
            k = by_kind.setdefault(f["kind"], {"injected": 0, "recovered": 0, "recovery_max_s": 0.0,
                                               "recovered_alone": 0, "recovery_alone_max_s": None})
            k["injected"] += 1
            if "recovery_s" in f:
                k["recovered"] += 1
                k["recovery_max_s"] = max(k["recovery_max_s"], f["recovery_s"])
                if f["alone"]:
                    k["recovered_alone"] += 1
                    k["recovery_alone_max_s"] = max(k["recovery_alone_max_s"] or 0.0, f["recovery_s"])
        restarts = {j: s[2] for j, s in self.jobs().items()} if self.supervisor.poll() is None else {}
        passed = sum(c["passed"] for c in self.checks)
        ok = not self.failed.is_set() and passed == len(self.checks) and len(self.results) == len(schedule)
        report = {
            "seed": self.args.seed, "duration_s": self.args.duration, "rate": self.args.rate, "ok": ok,
            "faults_scheduled": len(schedule), "faults_injected": len(self.results), "recoveries": len(done),
            "recovery_p50_s": round(statistics.median(rec), 2) if rec else None,
            "recovery_max_s": max(rec) if rec else None,
            "recoveries_alone": len(alone), "recovery_alone_p50_s": round(statistics.median(alone), 2) if alone else None,
            "recovery_alone_max_s": max(alone) if alone else None, "by_kind": by_kind,
            "checks_passed": passed, "checks": len(self.checks), "job_restarts": restarts,
            "simulator": self.sim_reports, "invariants": self.checks,
            "faults": sorted(self.results, key=lambda f: f["id"]),
        }
        log(f"seed {self.args.seed}: {len(self.results)}/{len(schedule)} faults injected, {len(done)} recovered, "
            f"recovery p50 {report['recovery_p50_s']} s, max {report['recovery_max_s']} s "
            f"(alone: {len(alone)}, p50 {report['recovery_alone_p50_s']} s, max {report['recovery_alone_max_s']} s); "
            f"invariant checks {passed}/{len(self.checks)} passed; job restarts {restarts}")
        for kind, k in sorted(by_kind.items()):
            alone_max = f"{k['recovery_alone_max_s']:.1f} s" if k["recovery_alone_max_s"] is not None else "-"
            log(f"  {kind:<20} injected {k['injected']:>3}  recovered {k['recovered']:>3}  max {k['recovery_max_s']:5.1f} s"
                f"  alone {k['recovered_alone']:>3}, max {alone_max}")
        if self.args.report:
            with open(self.args.report, "w") as out:
                json.dump(report, out, indent=1)
        return ok


def seconds_range(text):
    lo, hi = (float(x) for x in text.split(":"))
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"'{text}': expected LOW:HIGH seconds")
    return lo, hi


def kinds_list(text):
    kinds = [k for k in text.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kind(s) {unknown}; known: {', '.join(KINDS)}")
    return kinds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1, help="seeds the schedule, the load and the malformed records (default 1)")
    p.add_argument("--duration", type=float, default=150, help="seconds of faults (default 150)")
    p.add_argument("--phase-seconds", type=float, default=75, help="seconds between quiescent points (default 75)")
    p.add_argument("--mean-gap", type=float, default=6, help="mean seconds between fault starts (default 6)")
    p.add_argument("--pause", type=seconds_range, default=(12, 35),
                   help="SIGSTOP lasts LOW:HIGH seconds (default 12:35: past Connect's 10 s session and the 30 s request timeout)")
    p.add_argument("--down", type=seconds_range, default=(1, 8), help="a killed server stays down LOW:HIGH seconds (default 1:8)")
    p.add_argument("--rate", type=float, default=200, help="simulator changes per second (default 200)")
    p.add_argument("--kinds", type=kinds_list, default=list(KINDS), help="comma-separated fault kinds (default all)")
    p.add_argument("--recover-bound", type=float, default=240, help="seconds a fault may take to recover before the run fails (default 240)")
    p.add_argument("--verify-wait", type=int, default=240, help="seconds the warehouse may take to match at a quiescent point (default 240)")
    p.add_argument("--quiet-seconds", type=float, default=8, help="a job must keep its pid this long at a quiescent point (default 8)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--schedule-only", action="store_true", help="print the schedule for the seed and exit")
    p.add_argument("--state-dir", default=os.environ.get("DATAFLOW_STATE_DIR"), help="the stack's state folder (DATAFLOW_STATE_DIR)")
    p.add_argument("--build-dir", default=os.environ.get("DATAFLOW_BUILD_DIR", os.path.join(ROOT, "build", "release")),
                   help="where the jobs are built (DATAFLOW_BUILD_DIR)")
    args = p.parse_args()
    if args.schedule_only:
        for f in make_schedule(args.seed, args.duration, args.phase_seconds, args.mean_gap, args.pause, args.down, args.kinds):
            print(json.dumps(f))
        return 0
    if not args.state_dir:
        p.error("--state-dir (or DATAFLOW_STATE_DIR) is required: the stack to run against")
    campaign = Campaign(args)
    # SIGTERM (ctest's timeout, a Ctrl-C in another form) still tears down: supervisor, jobs, mount.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ok = campaign.run()
    except CampaignError as e:
        log(f"FAILED: {e}")
        ok = False
    finally:
        campaign.teardown()
    if not ok:
        log(f"FAILED; reproduce with: {' '.join(sys.argv)}  (seed {args.seed})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
