"""db-diagnostics and redis-diagnostics at size, against a concurrent client (``python -m benchmarks.datastores``).

Run on demand, never in the tests. Self-contained: it starts what it measures and removes it at the end.

- PostgreSQL: a cluster of its own (:mod:`sandbox.pgcluster`, the machine's binaries, ``pg_stat_statements``
  preloaded) in a temporary directory, one database filled by :mod:`sandbox.datagen` to ``--size`` MiB
  (pg_database_size), then ANALYZE and a few hundred statements of twenty patterns so that pg_stat_statements has
  something to rank;
- Redis: a redis-server of its own (:class:`benchmarks.backup.BenchRedis`) filled to ``--redis-mib`` of used_memory
  (default: half of ``--size``, the issue's 2 GB / 1 GB).

In one run, for each of the two:

diagnostics_s       the flow's reads once, as the flow runs them (db-diagnostics: connections, sessions,
                    pg_stat_statements and relations in one read-only snapshot on one connection, then the blocking
                    tree and the verdicts; redis-diagnostics: INFO, commandstats and CLIENT LIST concurrently, then
                    the policy's latency sampling beside the bounded SCAN with MEMORY USAGE of a sample); the tasks'
                    functions are called directly, without a Prefect server;
raw_s               the raw tool for the same questions: ``psql -c`` with the seed's monitoring queries (with the
                    column names of 13+, as the seed's fail on 15); ``redis-cli --scan | wc -l`` plus ``INFO``;
client p99          a client on its own connection, open loop at ``--rate`` operations a second (a latency counts from
                    when the operation was due): primary-key SELECTs / GETs of random string keys. Its p99 over
                    ``--phase-s`` seconds alone (baseline), then while the diagnostics run back to back for
                    ``--phase-s`` seconds; the ratio is what the issue bounds (<= 1.5). Then paced: one run every
                    ``--pace-s`` for 3 x ``--phase-s``, the client's p99 over the operations due while a run was in
                    flight and over the whole phase (see :func:`measure`; back to back keeps the machine busy with
                    diagnostics the whole window, which short runs like db-diagnostics' never do). The client runs in a
                    process of its own pinned to the last CPU, the diagnostics (this process, its threads) to the
                    others (``cpus``; the servers unpinned); the CPU seconds of each (``client_cpu_s``,
                    ``diagnostics_cpu_s``) and the load average before and after (``load_average``);
server_baseline,    what the server itself saw in each phase, to tell a stalled server from a busy machine:
server_during       PostgreSQL's pg_stat_statements (the client's statement's mean and max execution time, the
                    statements that ran longest); Redis's INFO commandstats ``usec_per_call`` (the client's GET, the
                    scan's SCAN, PTTL, MEMORY USAGE, TYPE), SLOWLOG (commands over 1 ms) and LATENCY LATEST (events
                    over 2 ms). A client p99 far above the server's own figures is time spent outside the server.

And ``lock_to_cancel_s``: a session holding a row lock with a waiter behind it, and db-performance's steps (sessions,
blocking tree, plan with the policy's thresholds, cancel) run once a second as in auto mode, from the chain's start
to its root cancelled. It includes the policy's ``min_blocked_s`` (a root is a target once a waiter has waited that
long); it does not include an alert's delay, the sandbox having no PostgreSQL metric to alert on.

Goals (issue 15): diagnostics under 10 s each at 2 GB / 1 GB; the client's p99 <= 1.5x its baseline; lock chain to
cancel < 15 s. The last line printed is one JSON object with every figure.

    uv run python -m benchmarks.datastores --size 128        # a quick one (a few minutes on 2 cores)
    uv run python -m benchmarks.datastores --size 2048       # the issue's size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from benchmarks.backup import BenchRedis, MiB, free_port, say
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from tasks.diagnostics.policy import ScanBounds, load_policy
from tasks.diagnostics.postgres import (
    judge_postgres,
    lock_tree,
    plan_targets,
    read_sessions,
    read_snapshot,
    stop_backend,
)
from tasks.diagnostics.redis import (
    read_clients,
    read_command_stats,
    read_redis_info,
    sample_latency,
    scan_keyspace,
)

DATABASE = "rb_bench_datastores"
SEED_SQL = (
    "SELECT count(*), state FROM pg_stat_activity GROUP BY state; "
    "SELECT query, calls, total_exec_time, mean_exec_time FROM pg_stat_statements WHERE mean_exec_time > 1000 "
    "ORDER BY total_exec_time DESC LIMIT 10; "
    "SELECT schemaname, tablename, attname, n_distinct, correlation FROM pg_stats "
    "WHERE tablename IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public') ORDER BY n_distinct DESC; "
    "SELECT blocked_locks.pid, blocking_locks.pid FROM pg_catalog.pg_locks blocked_locks "
    "JOIN pg_catalog.pg_stat_activity blocked_activity ON blocked_activity.pid = blocked_locks.pid "
    "JOIN pg_catalog.pg_locks blocking_locks ON blocking_locks.locktype = blocked_locks.locktype "
    "JOIN pg_catalog.pg_stat_activity blocking_activity ON blocking_activity.pid = blocking_locks.pid "
    "WHERE NOT blocked_locks.granted;"
)


#: the concurrent client, in a process of its own (in this one it would share the GIL with the diagnostics' Python
#: work and measure that instead of the server): open loop, a latency counts from when the operation was due
CLIENT = r"""
import json, os, random, sys, time
kind, url, rate, stop, keys = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
cpus = json.loads(sys.argv[6])
if cpus:
    os.sched_setaffinity(0, cpus)
if kind == "postgres":
    import psycopg
    conn = psycopg.connect(url, autocommit=True)
    query = "SELECT id, model FROM ai_queries WHERE id = %s"
    op = lambda rng: conn.execute(query, (rng.randrange(1, keys + 1),)).fetchone()
else:
    import redis
    conn = redis.Redis.from_url(url)
    op = lambda rng: conn.get(keys[rng.randrange(len(keys))])
rng, interval, out, errors = random.Random(7), 1.0 / rate, [], 0
op(rng)
print("ready", flush=True)
due = time.time()
while not os.path.exists(stop):
    now = time.time()
    if now < due:
        time.sleep(due - now)
    try:
        op(rng)
    except Exception:
        errors += 1
    out.append((due, time.time() - due))
    due += interval
t = os.times()
print(json.dumps({"latencies": out, "errors": errors, "cpu_s": round(t.user + t.system, 3)}))
"""


def split_cpus() -> tuple[list[int], list[int]]:
    """The client's CPU and the diagnostics' (this process's) CPUs: the last allowed CPU for the client, the others
    for the diagnostics, where there are at least two (the servers are left unpinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[-1:], cpus[:-1]) if len(cpus) >= 2 else ([], cpus)


@dataclass
class Client:
    """The concurrent client's process: ``kind`` postgres (primary-key SELECTs of ai_queries up to ``keys``) or
    redis (GETs of the string keys ``keys``)."""

    kind: str
    url: str
    keys: Any
    rate: float
    workdir: Path
    cpus: list[int] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    cpu_s: float = 0.0
    _proc: subprocess.Popen[str] | None = None

    @property
    def _stop(self) -> Path:
        return self.workdir / f"client-{self.kind}.stop"

    def start(self) -> None:
        self._stop.unlink(missing_ok=True)
        argv = [sys.executable, "-c", CLIENT, self.kind, self.url, str(self.rate), str(self._stop)]
        argv += [json.dumps(self.keys), json.dumps(self.cpus)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {self.kind} client did not start")

    def finish(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        self._stop.touch()
        out = json.loads(self._proc.stdout.read())
        self._proc.wait(30)
        self.latencies = [(due, lat) for due, lat in out["latencies"]]
        self.errors = out["errors"]
        self.cpu_s = out["cpu_s"]

    def p99_ms(self, start: float, end: float) -> float | None:
        return self.p99_ms_in([(start, end)])

    def in_windows(self, windows: list[tuple[float, float]]) -> list[float]:
        return [lat for due, lat in self.latencies if any(start <= due < end for start, end in windows)]

    def p99_ms_in(self, windows: list[tuple[float, float]]) -> float | None:
        """The p99 of the operations that were due inside one of ``windows`` (None under 20 of them)."""
        window = sorted(self.in_windows(windows))
        if len(window) < 20:
            return None
        return round(1000 * statistics.quantiles(window, n=100)[98], 3)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


@dataclass
class ServerSide:
    """What the server itself saw in a phase: ``reset()`` at the phase's start, ``read()`` at its end."""

    reset: Callable[[], None]
    read: Callable[[], dict[str, Any]]


def pin(cpus: Any) -> None:
    """Every thread of this process on ``cpus`` (threads started later inherit it from their starter)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that has just ended


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def measure(
    client: Client,
    diagnose: Callable[[], Any],
    phase_s: float,
    raw: Callable[[], None],
    server: ServerSide,
    pace_s: float = 0.0,
) -> dict[str, Any]:
    """Baseline, the diagnostics once, back to back for ``phase_s``, paced (below), then the raw tool once (wall
    clock: the client stamps its operations with ``time.time()`` in its own process). The client runs pinned to one
    CPU and this process (the diagnostics and their threads) to the others, where there are two; the server's own
    figures of the baseline and the back-to-back phases come from ``server``.

    Paced (when ``pace_s`` and one run is shorter than it): one run every ``pace_s`` seconds for ``3 * phase_s``,
    as separate runs of the flow would come, each with the machine idle before it; the client's p99 over the
    operations due while a run was in flight (``client_p99_paced_in_run_ms``: the latency a client sees during a
    run) and over the whole paced phase. Back to back measures a machine kept busy by the diagnostics the whole
    window (a run every few tens of milliseconds), which no schedule does."""
    client_cpus, own_cpus = split_cpus()
    client.cpus = client_cpus
    allowed = os.sched_getaffinity(0)
    client.start()
    load = [os.getloadavg()[0]]
    try:
        pin(own_cpus)
        server.reset()
        base_start = time.time()
        await asyncio.sleep(phase_s)
        base_end = time.time()
        server_baseline = server.read()
        t = time.perf_counter()
        await diagnose()
        once_s = time.perf_counter() - t
        server.reset()
        cpu, start, runs = _cpu_s(), time.time(), 0
        while time.time() - start < phase_s:
            await diagnose()
            runs += 1
        end = time.time()
        own_cpu_s = _cpu_s() - cpu
        server_during = server.read()
        windows: list[tuple[float, float]] = []
        paced_start = paced_end = time.time()
        if pace_s and once_s < pace_s:
            while time.time() - paced_start < 3 * phase_s:
                t0 = time.time()
                await diagnose()
                windows.append((t0, time.time()))
                await asyncio.sleep(max(0.0, pace_s - (time.time() - t0)))
            paced_end = time.time()
        load.append(os.getloadavg()[0])
        t = time.perf_counter()
        await asyncio.to_thread(raw)
        raw_s = time.perf_counter() - t
    finally:
        pin(allowed)
        client.finish()
    baseline, during = client.p99_ms(base_start, base_end), client.p99_ms(start, end)
    in_run = client.p99_ms_in(windows) if windows else None
    paced = client.p99_ms(paced_start, paced_end) if windows else None
    return {
        "diagnostics_s": round(once_s, 3),
        "raw_s": round(raw_s, 3),
        "back_to_back_runs": runs,
        "client_p99_baseline_ms": baseline,
        "client_p99_during_ms": during,
        "client_p99_ratio": ratio(during, baseline),
        "paced_runs": len(windows),
        "paced_every_s": pace_s if windows else None,
        "client_ops_in_paced_runs": len(client.in_windows(windows)) if windows else 0,
        "client_p99_paced_in_run_ms": in_run,
        "client_p99_paced_in_run_ratio": ratio(in_run, baseline),
        "client_p99_paced_phase_ms": paced,
        "client_p99_paced_phase_ratio": ratio(paced, baseline),
        "client_errors": client.errors,
        "client_cpu_s": client.cpu_s,
        "diagnostics_cpu_s": round(own_cpu_s, 3),
        "cpus": {"client": client_cpus, "diagnostics": own_cpus},
        "load_average": load,
        "server_baseline": server_baseline,
        "server_during": server_during,
    }


# --------------------------------------------------------------------------------------------------- PostgreSQL


def fill_postgres(dsn: str, mib: int) -> dict[str, Any]:
    from sandbox.datagen import generate_postgres

    say(f"PostgreSQL: generating {mib} MiB ...")
    started = time.perf_counter()
    counts = generate_postgres(dsn, mib * MiB, seed=42)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
        conn.execute("SELECT pg_stat_statements_reset()")
        tables = [r[0] for r in conn.execute("SELECT relname FROM pg_stat_user_tables ORDER BY relname").fetchall()]
        for i in range(20):  # twenty patterns, a few hundred statements
            table = tables[i % len(tables)]
            for j in range(15):
                conn.execute(f'SELECT count(*) FROM (SELECT * FROM "{table}" LIMIT {100 * (i + 1) + j}) s')
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return {"rows": counts, "bytes": size[0] if size else 0, "fill_s": round(time.perf_counter() - started, 1)}


def wait_for_sleep(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = "SELECT wait_event FROM pg_stat_activity WHERE pid = %s"
        while (found := conn.execute(query, (pid,)).fetchone()) is None or found[0] != "PgSleep":
            time.sleep(0.02)


CLIENT_SQL = "SELECT id, model FROM ai_queries WHERE id = $1"


def postgres_server_side(dsn: str) -> ServerSide:
    """pg_stat_statements of a phase: the client's statement's execution time on the server (mean, max), and the
    statements that ran longest (which query of the diagnostics holds the server)."""

    def reset() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def read() -> dict[str, Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT query, calls, mean_exec_time, max_exec_time, total_exec_time FROM pg_stat_statements"
                " WHERE query NOT ILIKE '%%pg_stat_statements%%' ORDER BY total_exec_time DESC"
            ).fetchall()
        mine = [r for r in rows if r[0] == CLIENT_SQL]
        return {
            "client_calls": mine[0][1] if mine else 0,
            "client_mean_ms": round(mine[0][2], 3) if mine else None,
            "client_max_ms": round(mine[0][3], 3) if mine else None,
            "top_statements": [
                {
                    "query": " ".join(r[0].split())[:90],
                    "calls": r[1],
                    "mean_ms": round(r[2], 3),
                    "max_ms": round(r[3], 3),
                }
                for r in rows
                if r[0] != CLIENT_SQL
            ][:5],
        }

    return ServerSide(reset, read)


async def lock_to_cancel(db: PostgresDatabase, dsn: str) -> float:
    """From a lock chain's start to its root cancelled by db-performance's steps, run once a second."""
    spec = load_policy().postgres.performance
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_lock (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO bench_lock VALUES (1, 0)")
    holder = psycopg.connect(dsn, autocommit=True, application_name="bench-holder")
    waiter = psycopg.connect(dsn, autocommit=True, application_name="bench-waiter")
    row = holder.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid = row[0]

    def hold() -> None:
        try:
            holder.execute("SELECT pg_sleep(600) FROM (SELECT id FROM bench_lock WHERE id = 1 FOR UPDATE) s")
        except psycopg.Error:
            pass  # cancelled: what is measured

    def wait() -> None:
        waiter.execute("UPDATE bench_lock SET v = v + 1 WHERE id = 1")

    started = time.perf_counter()
    threads = [threading.Thread(target=hold, daemon=True)]
    threads[0].start()
    wait_for_sleep(dsn, pid)  # the holder has its lock before the waiter comes
    threads.append(threading.Thread(target=wait, daemon=True))
    threads[1].start()
    cancelled_at: float | None = None
    while cancelled_at is None and time.perf_counter() - started < 120:
        sessions = await read_sessions.fn(db)
        tree = lock_tree(sessions)
        targets = plan_targets(
            sessions,
            tree,
            long_query_s=spec.long_query_s,
            min_blocked_s=spec.min_blocked_s,
            protected_applications=spec.protected_applications,
        )
        for target in targets:
            if target.session.pid == pid and target.protected is None:
                done = await stop_backend.fn(db, target.session, cancel_wait_s=spec.cancel_wait_s, terminate=True)
                if done.outcome in ("cancelled", "terminated"):
                    cancelled_at = time.perf_counter()
        if cancelled_at is None:
            await asyncio.sleep(1)
    for t in threads:
        t.join(10)
    holder.close()
    waiter.close()
    if cancelled_at is None:
        raise RuntimeError("the lock chain's root was not cancelled within 120 s")
    return round(cancelled_at - started, 3)


async def bench_postgres(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sandbox.pgcluster import PostgresCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (Debian's postgresql): nothing to benchmark db-diagnostics on")
    cluster = PostgresCluster(
        bin_dir=bin_dir,
        pgdata=workdir / "pg" / "main",
        host="127.0.0.1",
        port=free_port(),
        log_path=workdir / "pg.log",
        settings={"shared_preload_libraries": "pg_stat_statements"},
    )
    cluster.start()
    try:
        with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/{DATABASE}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        data = fill_postgres(dsn, args.size)
        db = PostgresDatabase(dsn=SecretStr(dsn))
        policy = load_policy().postgres
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT max(id) FROM ai_queries").fetchone()
        max_id = int(row[0] if row and row[0] else 1)

        async def diagnose() -> None:
            reads = policy.reads
            snap = await read_snapshot.fn(
                db,
                top=reads.top,
                large_table_bytes=reads.large_table_bytes,
                statement_timeout_s=reads.statement_timeout_s,
            )
            sessions = snap.sessions
            judge_postgres(snap.connections, snap.slow, snap.relations, sessions, lock_tree(sessions), policy.limits)

        def raw() -> None:
            subprocess.run(["psql", dsn, "-q", "-c", SEED_SQL], check=True, capture_output=True, timeout=600)

        say("PostgreSQL: baseline, db-diagnostics, psql ...")
        client = Client("postgres", dsn, max_id, args.rate, workdir)
        figures = await measure(client, diagnose, args.phase_s, raw, postgres_server_side(dsn), args.pace_s)
        say("PostgreSQL: lock chain to cancel ...")
        figures["lock_to_cancel_s"] = await lock_to_cancel(db, dsn)
        return {**figures, "database_bytes": data["bytes"], "fill_s": data["fill_s"]}
    finally:
        cluster.destroy()


# -------------------------------------------------------------------------------------------------------- Redis


#: the commands whose server time is reported: the client's GET, and what the diagnostics send
REDIS_COMMANDS = ("get", "scan", "pttl", "memory|usage", "type", "info", "client|list", "dbsize", "ping")


def redis_server_side(server: BenchRedis) -> ServerSide:
    """The server's own figures of a phase: INFO commandstats' usec_per_call (the client's GET, the scan's
    commands), SLOWLOG (commands over 1 ms) and LATENCY LATEST (events over 2 ms)."""

    def reset() -> None:
        r = server.client()
        r.config_set("slowlog-log-slower-than", 1000)
        r.config_set("latency-monitor-threshold", 2)
        r.slowlog_reset()
        r.execute_command("LATENCY", "RESET")
        r.config_resetstat()

    def read() -> dict[str, Any]:
        r = server.client()
        stats = r.info("commandstats")
        slow = r.slowlog_get(128)
        latest = r.execute_command("LATENCY", "LATEST")
        return {
            "usec_per_call": {
                c: float(stats[f"cmdstat_{c}"]["usec_per_call"]) for c in REDIS_COMMANDS if f"cmdstat_{c}" in stats
            },
            "calls": {c: int(stats[f"cmdstat_{c}"]["calls"]) for c in REDIS_COMMANDS if f"cmdstat_{c}" in stats},
            "slowlog_over_1ms": len(slow),
            "slowlog_max_us": max((int(e["duration"]) for e in slow), default=0),
            "slowlog_commands": sorted({_first(e["command"]) for e in slow})[:8],
            "latency_latest_max_ms": {_text(e[0]): int(e[3]) for e in latest},
        }

    return ServerSide(reset, read)


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _first(command: Any) -> str:
    return _text(command).split(" ", 1)[0].lower()


async def bench_redis(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = BenchRedis(workdir / "redis" / "data")
    server.start()
    try:
        fill_s = server.fill(args.redis_mib)
        cache = RedisDatabase(url=SecretStr(server.url))
        policy = load_policy().redis
        sample = server.client()
        keys = [k.decode() for k in sample.scan(0, count=2000)[1] if sample.type(k) == b"string"] or ["missing"]

        def diagnose_with(bounds: ScanBounds, result: dict[str, Any]) -> Callable[[], Any]:
            async def diagnose() -> None:
                await asyncio.gather(read_redis_info.fn(cache), read_command_stats.fn(cache), read_clients.fn(cache))
                _, scan = await asyncio.gather(  # as the flow: the latency sampling beside the scan
                    sample_latency.fn(cache, policy.latency),
                    scan_keyspace.fn(cache, policy.patterns, bounds, policy.big_keys, policy.latency.interval_ms),
                )
                result.update(
                    scanned=scan.scanned,
                    dbsize=scan.dbsize,
                    scan_complete=scan.complete,
                    scan_fraction=scan.fraction,
                    scan_s=scan.seconds,
                    scan_backoffs=scan.backoffs,
                    keys_per_s=round(scan.scanned / scan.seconds) if scan.seconds else None,
                )

            return diagnose

        def raw() -> None:
            cli = shutil.which("redis-cli") or "redis-cli"
            scan = subprocess.Popen([cli, "-u", server.url, "--scan"], stdout=subprocess.PIPE)
            assert scan.stdout is not None
            sum(1 for _ in scan.stdout)
            scan.wait(600)
            subprocess.run([cli, "-u", server.url, "INFO", "all"], check=True, capture_output=True, timeout=60)

        say("Redis: baseline, redis-diagnostics, redis-cli ...")
        result: dict[str, Any] = {}
        client = Client("redis", server.url, keys, args.rate, workdir)
        figures = await measure(
            client, diagnose_with(policy.scan, result), args.phase_s, raw, redis_server_side(server)
        )
        variants = []
        for spec in args.redis_scan or []:  # other scan settings on the same data, for tuning the policy
            count, pace = spec.split(":")
            bounds = policy.scan.model_copy(update={"count": int(count), "pace": float(pace)})
            say(f"Redis: scan variant count {count}, pace {pace} ...")
            found: dict[str, Any] = {}
            client = Client("redis", server.url, keys, args.rate, workdir)
            v = await measure(
                client, diagnose_with(bounds, found), args.phase_s, lambda: None, redis_server_side(server)
            )
            variants.append(
                {
                    "count": int(count),
                    "pace": float(pace),
                    **{k: v[k] for k in ("diagnostics_s", "client_p99_baseline_ms", "client_p99_during_ms")},
                    "client_p99_ratio": v["client_p99_ratio"],
                    "load_average": v["load_average"],
                    **found,
                }
            )
        return {
            **figures,
            **result,
            "scan_count": policy.scan.count,
            "scan_pace": policy.scan.pace,
            "variants": variants,
            "used_memory": server.used_memory(),
            "fill_s": fill_s,
        }
    finally:
        server.stop(keep=False)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rb-bench-datastores-"))  # a cluster run as postgres reaches it
    out: dict[str, Any] = {"size_mib": args.size, "redis_mib": args.redis_mib, "rate": args.rate}
    try:
        if not args.skip_postgres:
            out["postgres"] = await bench_postgres(args, workdir)
        if not args.skip_redis:
            out["redis"] = await bench_redis(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.datastores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", type=int, default=128, help="PostgreSQL data, MiB of pg_database_size (2048: issue)")
    parser.add_argument("--redis-mib", type=int, help="Redis data, MiB of used_memory (default: half of --size)")
    parser.add_argument("--rate", type=float, default=200, help="the concurrent client's operations a second")
    parser.add_argument("--phase-s", type=float, default=10, help="seconds of baseline and of diagnostics")
    parser.add_argument(
        "--pace-s", type=float, default=0.5, help="paced phase: one diagnostics run every this many seconds (0: none)"
    )
    parser.add_argument(
        "--redis-scan",
        action="append",
        metavar="COUNT:PACE",
        help="also measure redis-diagnostics with this SCAN count and pace (repeatable; tuning the policy)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-redis", action="store_true")
    args = parser.parse_args(argv)
    if args.redis_mib is None:
        args.redis_mib = max(1, args.size // 2)
    result = asyncio.run(bench(args))
    for system in ("postgres", "redis"):
        if system in result:
            r = result[system]
            say(
                f"{system:9} diagnostics {r['diagnostics_s']} s (raw tool {r['raw_s']} s); client p99 "
                f"{r['client_p99_baseline_ms']} -> {r['client_p99_during_ms']} ms (x{r['client_p99_ratio']}) back "
                f"to back; paced ({r['paced_runs']} runs, one every {r['paced_every_s']} s): in a run "
                f"{r['client_p99_paced_in_run_ms']} ms (x{r['client_p99_paced_in_run_ratio']}, "
                f"{r['client_ops_in_paced_runs']} ops), over the phase {r['client_p99_paced_phase_ms']} ms "
                f"(x{r['client_p99_paced_phase_ratio']})"
                + (f"; lock chain to cancel {r['lock_to_cancel_s']} s" if "lock_to_cancel_s" in r else "")
            )
            say(
                f"{system:9} server side, baseline -> during: {json.dumps(r['server_baseline'])} -> "
                f"{json.dumps(r['server_during'])}; load average {r['load_average']}"
            )
    for v in result.get("redis", {}).get("variants", []):
        say(
            f"redis scan count {v['count']} pace {v['pace']}: {v['diagnostics_s']} s, {v.get('scanned')} keys "
            f"({v.get('scan_fraction')}), {v.get('keys_per_s')} keys/s; client p99 {v['client_p99_baseline_ms']} -> "
            f"{v['client_p99_during_ms']} ms (x{v['client_p99_ratio']})"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
