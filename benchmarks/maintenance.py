"""The whole ``weekly-maintenance`` flow against a steady writer (``python -m benchmarks.maintenance``).

Run on demand, never in the tests. It brings up a private sandbox (the services of ``runbooks sandbox up`` that the
flow reads, from a temporary home, on free ports: its own PostgreSQL cluster, an embedded redis-server, moto S3, the
platform double, the receivers, a Kubernetes control plane, cert-manager and the Ingress stand-ins) and a Prefect
server of its own (Prefect's test harness), so nothing of a developer's sandbox or of other runs on the machine is
touched; all of it is stopped and deleted at the end. It runs the recovery target too (a second PostgreSQL cluster
and redis-server, the environment block ``bench-maint-recovery``), where step 7's verification restores: never the
application's server. To stand for "another server" on one machine, the application's cluster (its postmaster and
every backend, which inherit it) and the writer are pinned to one CPU, the recovery cluster and this process (the
flow, its pg_restore and Great Expectations) to the other (``--no-pin`` leaves all unpinned); the disk, the page
cache and the memory bus are still shared, and so are the Prefect server and the other services.

On that PostgreSQL it creates ``rb_bench_maint``, filled to ``--size`` MiB (a table of realistic rows, a third of
them deleted so the bloat estimate has something to find, plus a duplicate index). The environment ``bench-maint``
is the sandbox's with that database; before the run, a daily
backup of the sandbox's own small database is taken under that name (not timed), so the backups step finds one and
its verification (never verified: it runs) restores a small dump. A writer inserts and updates rows at ``--rate``
operations per second, open loop (a latency counts from when the operation was due, so a stall shows in full), on
its own connection, in a process of its own (the flow's Python work in this process never holds it back). In one run:

baseline        the writer alone for ``--phase-s`` seconds;
flow            ``weekly-maintenance`` of ``bench-maint``, every step (``--skip`` leaves one out): its total time,
                each step's time and verdict, and the writer's figures over each step's task run (Prefect's start
                and end times), so a step that stalls the writer is named;
baseline_after  the writer alone again (the machine's load moves);
verify_on_recovery / verify_on_source
                ``verify-backup`` alone, as step 7 runs it: its restore on the recovery target (the default), then
                on the application's own server (``restore_target=source``, what step 7 did before), for contrast
                in the same run (``--skip-verify-phases`` leaves them out);
step_once       the flow's database step alone, as the flow runs it (``tasks.postgres.analyze_database`` then
                ``inspect_database``), the writer measured over it and 0.5 s after;
step            the same step back to back for ``--phase-s`` seconds (a stress);
seed_psql       the seed's ``psql -c "ANALYZE; SELECT pg_size_pretty(...); SELECT ... FROM pg_stats ..."`` (the raw
                tool), repeated the same way (``--skip-step-phases`` leaves these three out);
vacuum_full     what the step never does: ``VACUUM FULL`` of the table, once, to show what a write-blocking lock
                does to the same writer (``--skip-vacuum-full`` leaves it out).

Beside the latencies, a sampler reads the writer's backend in ``pg_stat_activity`` every 5 ms: ``lock waits`` is
how many samples found it waiting on a lock (``wait_event_type = 'Lock'``), which tells a stall caused by a lock
from one caused by busy cores. ``--no-flow`` runs only the database-step phases on the server of ``--admin-dsn``.

The goal (issue 13): the writer's max latency during the maintenance <= 2x its baseline max, and no lock wait. The
last line printed is one JSON object with every figure.

    uv run python -m benchmarks.maintenance --size 64      # a quick one (about 5 minutes with the sandbox)
    uv run python -m benchmarks.maintenance                # 2 GiB, as the issue asks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from benchmarks import private
from blocks.postgres import PostgresDatabase
from tasks.postgres import analyze_database, inspect_database

DATABASE = "rb_bench_maint"
BENCH_ENVIRONMENT = "bench-maint"
#: what tests/conftest.py's session sandbox runs: every service the weekly maintenance reads, and the recovery
#: target (its ``recovery_environment`` fixture), where the backups step's verification restores
SANDBOX_SERVICES = [
    "postgres",
    "redis",
    "s3",
    "platform",
    "receivers",
    "kubernetes",
    "cert-manager",
    "ingress",
    "recovery-postgres",
    "recovery-redis",
]
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_SQL = (
    f"ANALYZE; SELECT pg_size_pretty(pg_database_size('{DATABASE}')) AS db_size; "
    "SELECT schemaname,tablename,attname,n_distinct,correlation FROM pg_stats ORDER BY n_distinct DESC LIMIT 10;"
)


@dataclass
class Writer:
    """Inserts and updates at a steady rate; ``latencies`` are (due time, seconds late + run) per operation.

    It runs in a process of its own (:class:`WriterProcess`), so that the flow's Python work in the benchmark's
    process (compression, TLS, the Prefect client) never holds the writer back: what it measures is the database.
    Times are ``time.perf_counter()`` (CLOCK_MONOTONIC, the same in every process of the machine)."""

    dsn: str
    rate: float
    max_id: int
    latencies: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    stop: Any = field(default_factory=threading.Event)
    pid: int | None = None
    #: (time, waiting on a lock?) of the writer's backend, sampled every few ms from pg_stat_activity
    lock_samples: list[tuple[float, bool]] = field(default_factory=list)

    def sample_locks(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                if self.pid is not None:
                    row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (self.pid,))
                    found = row.fetchone()
                    self.lock_samples.append((time.perf_counter(), bool(found and found[0] == "Lock")))
                time.sleep(0.005)

    def lock_waits(self, start: float, end: float) -> tuple[int, int]:
        """(samples the writer was waiting on a lock, samples) between ``start`` and ``end``."""
        window = [waiting for t, waiting in self.lock_samples if start <= t < end]
        return sum(window), len(window)

    def run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            self.pid = int(row[0]) if row else None
            interval = 1.0 / self.rate
            due = time.perf_counter()
            n = 0
            while not self.stop.is_set():
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                try:
                    if n % 2 == 0:
                        conn.execute(
                            "INSERT INTO bench_events (user_id, model, body, n) VALUES (%s, %s, %s, %s)",
                            (rng.randrange(1000), f"model-{rng.randrange(7)}", "x" * rng.randrange(80, 400), n),
                        )
                    else:
                        conn.execute(
                            "UPDATE bench_events SET n = n + 1 WHERE id = %s", (rng.randrange(1, self.max_id),)
                        )
                except psycopg.Error:
                    self.errors += 1
                self.latencies.append((due, time.perf_counter() - due))
                n += 1
                due += interval

    def between(self, start: float, end: float) -> list[float]:
        return [lat for due, lat in self.latencies if start <= due < end]


def _writer_main(
    dsn: str, rate: float, max_id: int, stop: Any, ready: Any, out: str, cpus: list[int] | None = None
) -> None:
    """The writer process: the writer and its lock sampler until ``stop``, then every figure to ``out`` (JSON);
    on ``cpus`` when given (before its threads start: they inherit it)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    writer = Writer(dsn, rate, max_id, stop=stop)
    sampler = threading.Thread(target=writer.sample_locks, name="lock-sampler", daemon=True)
    sampler.start()
    thread = threading.Thread(target=writer.run, name="writer", daemon=True)
    thread.start()
    ready.set()
    thread.join()
    sampler.join(timeout=10)
    with open(out, "w") as f:
        json.dump({"latencies": writer.latencies, "lock_samples": writer.lock_samples, "errors": writer.errors}, f)


class WriterProcess:
    """The :class:`Writer` in a spawned process; :meth:`finish` stops it and hands back its figures."""

    def __init__(self, dsn: str, rate: float, max_id: int, cpus: list[int] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, ready = ctx.Event(), ctx.Event()
        fd, self.out = tempfile.mkstemp(prefix="rb-bench-maint-writer-", suffix=".json")
        os.close(fd)
        self.process = ctx.Process(
            target=_writer_main,
            args=(dsn, rate, max_id, self.stop, ready, self.out, cpus),
            name="writer",
            daemon=True,
        )
        self.process.start()
        if not ready.wait(60):
            raise RuntimeError("the writer process did not start within 60 s")

    def finish(self) -> Writer:
        self.stop.set()
        self.process.join(timeout=60)
        try:
            with open(self.out) as f:
                data = json.load(f)
        finally:
            os.unlink(self.out)
        writer = Writer("", 1.0, 1, errors=int(data["errors"]))
        writer.latencies = [(float(t), float(lat)) for t, lat in data["latencies"]]
        writer.lock_samples = [(float(t), bool(w)) for t, w in data["lock_samples"]]
        return writer


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def figures(
    values: list[float], writer: Writer | None = None, window: tuple[float, float] | None = None
) -> dict[str, float]:
    waits = writer.lock_waits(*window) if writer is not None and window is not None else (0, 0)
    return {
        "lock_wait_samples": waits[0],
        "samples": waits[1],
        "ops": len(values),
        "p50_ms": round(1000 * percentile(values, 0.50), 2),
        "p99_ms": round(1000 * percentile(values, 0.99), 2),
        "max_ms": round(1000 * max(values, default=0.0), 2),
        "mean_ms": round(1000 * statistics.fmean(values), 2) if values else 0.0,
    }


def prepare(admin_dsn: str, size_mib: int, keep: bool) -> str:
    """``rb_bench_maint`` filled to ``size_mib`` (reused when --keep-data left one at least that big)."""
    dsn = make_conninfo(**{**conninfo_to_dict(admin_dsn), "dbname": DATABASE})
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists and keep:
            with psycopg.connect(dsn) as conn:
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                table = conn.execute("SELECT to_regclass('bench_events')").fetchone()
            if size and table and table[0] and size[0] >= size_mib * 2**20 * 0.9:
                print(f"reusing {DATABASE} ({size[0] / 2**20:.0f} MiB)")
                return dsn
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_events (id bigserial PRIMARY KEY, user_id int NOT NULL, model text NOT NULL, "
            "body text, n int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("CREATE INDEX bench_events_user ON bench_events (user_id)")
        conn.execute("CREATE INDEX bench_events_user_again ON bench_events (user_id)")  # a duplicate to find
        conn.execute("CREATE INDEX bench_events_created ON bench_events (created_at)")
        batch = 50_000
        while True:
            conn.execute(
                "INSERT INTO bench_events (user_id, model, body, n) "
                "SELECT (random() * 1000)::int, 'model-' || (random() * 7)::int, "
                "repeat(md5(random()::text), 3 + (random() * 6)::int), g FROM generate_series(1, %s) g",
                (batch,),
            )
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            if row and row[0] >= size_mib * 2**20 * 1.3:  # a third goes below
                break
        conn.execute("DELETE FROM bench_events WHERE id % 3 = 0")
        conn.execute("VACUUM bench_events")  # dead rows become free space: bloat, as a busy table has
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    print(f"filled {DATABASE} to {row[0] / 2**20 if row else 0:.0f} MiB in {time.perf_counter() - started:.1f}s")
    return dsn


def repeat_for(seconds: float, work: Callable[[], None]) -> list[float]:
    """Run ``work`` back to back until ``seconds`` passed (at least once); its durations."""
    durations: list[float] = []
    end = time.perf_counter() + seconds
    while not durations or time.perf_counter() < end:
        t = time.perf_counter()
        work()
        durations.append(time.perf_counter() - t)
    return durations


# ------------------------------------------------------------------------------------------- the private sandbox
class PrivateSandbox:
    """The sandbox's services (the production code of ``runbooks sandbox up``, without its Prefect server and
    worker) from a temporary home, on free ports: its own PostgreSQL cluster, an embedded redis-server, moto S3,
    the platform double, the receivers, a Kubernetes control plane, cert-manager and the Ingress stand-ins. Nothing
    of a developer's sandbox or of other runs on the machine is touched."""

    def __init__(self) -> None:
        from sandbox.manager import Sandbox

        self.settings = private.private_settings(
            "rb-bench-maint-", recovery_cluster=True, environment=BENCH_ENVIRONMENT
        )
        self.box = Sandbox(self.settings)

    def up(self) -> str:
        """Start the services; the admin DSN of its PostgreSQL."""
        private.up(self.box, SANDBOX_SERVICES)
        record = self.box.state.get("postgres")
        if record.get("bin_dir"):
            os.environ["RUNBOOKS_PG_BIN_DIR"] = str(record["bin_dir"])
        return str(record.get("admin_dsn") or self.settings.postgres_admin_dsn)

    def down(self) -> None:
        private.destroy(self.box, SANDBOX_SERVICES)

    def postmasters(self) -> dict[str, int]:
        """The postmaster pid of the application's cluster and of the recovery target's."""
        from sandbox.components import RecoveryPostgresComponent

        pgdata = {
            "application": self.settings.postgres_data_dir,
            "recovery": RecoveryPostgresComponent(self.settings, self.box.state).cluster().pgdata,
        }
        return {name: int((Path(str(d)) / "postmaster.pid").read_text().split()[0]) for name, d in pgdata.items()}


def pin_tree(pid: int, cpus: list[int]) -> int:
    """``pid`` and every descendant (each thread) on ``cpus``; a postmaster's later backends inherit it. How many
    processes were pinned."""
    import psutil

    root = psutil.Process(pid)
    pinned = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, cpus)
            pinned += 1
        except (psutil.Error, OSError):
            pass  # one that has just ended
    return pinned


def pin_self(cpus: list[int]) -> None:
    """Every thread of this process on ``cpus`` (threads and children started later inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that has just ended


def split_cpus(sandbox: PrivateSandbox | None, enabled: bool) -> dict[str, Any]:
    """The application's cluster and the writer on the first allowed CPU; the recovery cluster and this process
    (the flow, the restore's client, the validation) on the others. Nothing pinned with fewer than two CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if sandbox is None or not enabled or len(allowed) < 2:
        return {"pinned": False, "application_and_writer": None, "recovery_and_flow": None}
    app, rest = allowed[:1], allowed[1:]
    pids = sandbox.postmasters()
    counts = {"application": pin_tree(pids["application"], app), "recovery": pin_tree(pids["recovery"], rest)}
    counts["the rest of the sandbox"] = pin_others(sandbox.settings.home, keep=app, cpus=rest)
    pin_self(rest)
    return {
        "pinned": True,
        "application_and_writer": app,
        "recovery_and_flow": rest,
        "processes": counts,
        "note": "CPUs only: the disk and the page cache are shared; the sandbox's other processes (Kubernetes, the "
        "platform double, S3, the Prefect server) are on the recovery side, as another machine's would be",
    }


def pin_others(home: Path, keep: list[int], cpus: list[int]) -> int:
    """The private sandbox's other processes (their command line names its home) and this process's children on
    ``cpus``, except those already pinned to ``keep`` (the writer). How many were pinned."""
    import psutil

    me = psutil.Process()
    ours = {p.pid for p in me.children(recursive=True)}
    pinned = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != me.pid and (proc.pid in ours or str(home) in " ".join(proc.info["cmdline"] or [])):
                if sorted(os.sched_getaffinity(proc.pid)) == keep:
                    continue
                pinned += pin_tree(proc.pid, cpus)
        except (psutil.Error, OSError):
            pass  # one that has just ended
    return pinned


async def save_environments(sandbox: PrivateSandbox, bench_dsn: str) -> None:
    """``bench-maint``: the private sandbox's environment, first with its own small database for a daily backup
    (so that the backups step finds one, and its verification restores a small dump), then with the benchmark's;
    and ``bench-maint-recovery``, the recovery target, where that verification restores."""
    from blocks.registry import register_block_types, save_environment
    from flows.backup import RetentionSettings, daily_backup
    from sandbox.blocks import recovery_environment, sandbox_environment

    await register_block_types()
    env = sandbox_environment(sandbox.settings, sandbox.box.state)
    await save_environment(env, BENCH_ENVIRONMENT)
    recovery = recovery_environment(sandbox.settings, sandbox.box.state)
    if recovery is None:
        raise RuntimeError("the private sandbox's recovery target did not come up")
    await save_environment(recovery, f"{BENCH_ENVIRONMENT}-recovery")
    await daily_backup(environment=BENCH_ENVIRONMENT, retention=RetentionSettings(enabled=False))
    env.postgres = PostgresDatabase(dsn=SecretStr(bench_dsn))
    await save_environment(env, BENCH_ENVIRONMENT)


async def run_flow(skip: list[str]) -> dict[str, Any]:
    """``weekly-maintenance`` of ``bench-maint``, every step (but ``skip``); its verdicts, each step's seconds and
    its task run's window (perf_counter times, from Prefect's task runs), and the flow's wall time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.maintenance import weekly_maintenance
    from tasks.maintenance.report import MaintenanceReport

    offset = time.time() - time.perf_counter()
    started = time.perf_counter()
    state = await weekly_maintenance(environment=BENCH_ENVIRONMENT, skip=skip or None, return_state=True)
    ended = time.perf_counter()
    report = state.data if isinstance(state.data, MaintenanceReport) else await state.aresult(raise_on_failure=False)
    windows: dict[str, tuple[float, float]] = {}
    flow_run_id = state.state_details.flow_run_id
    ran = [s.name for s in getattr(report, "steps", []) if s.status != "skipped" or s.duration_s]
    deadline = time.monotonic() + 30  # the server records the last task runs' ends a moment after the flow returns
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            for run in runs:
                name = run.name.rsplit("-", 1)[0]  # "04-database-0" -> "04-database"
                if name[:2].isdigit() and name[2:3] == "-" and run.start_time and run.end_time:
                    windows[name[3:]] = (run.start_time.timestamp() - offset, run.end_time.timestamp() - offset)
            if all(n in windows for n in ran) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    steps = [
        {
            "step": s.name,
            "status": s.status,
            "s": s.duration_s,
            "summary": s.summary[:160],
            **_restored_on(s.details),
            "window": windows.get(s.name),
        }
        for s in getattr(report, "steps", [])
    ]
    return {"state": state.type.value, "flow_s": round(ended - started, 2), "window": (started, ended), "steps": steps}


def _restored_on(details: list[str]) -> dict[str, str]:
    """The backups step's line that says which server its verification restored on (empty for other steps)."""
    lines = [d.strip(" -") for d in details if "RESTORED ON" in d or "restored on" in d]
    return {"restored_on": lines[0][:240]} if lines else {}


async def run_verification(restore_target: str | None) -> dict[str, Any]:
    """``verify-backup`` of ``bench-maint`` (the backups step's work) with ``restore_target``; its window and where
    it restored."""
    from flows.verify import verify_backup

    started = time.perf_counter()
    report = await verify_backup(environment=BENCH_ENVIRONMENT, restore_target=restore_target, notify_on_failure=False)
    ended = time.perf_counter()
    return {
        "window": (started, ended),
        "run_s": round(ended - started, 2),
        "status": report.status,
        "restore_where": report.restore_where,
        "restore_server": report.restore_server,
        "restore_jobs": report.restore_jobs,
    }


# ------------------------------------------------------------------------------------------------------- the run
def bench(args: argparse.Namespace) -> dict[str, Any]:
    sandbox: PrivateSandbox | None = None
    if args.flow:
        sandbox = PrivateSandbox()
        print(f"bringing up a private sandbox under {sandbox.settings.home} ...", flush=True)
        try:
            admin_dsn = sandbox.up()
        except BaseException:
            sandbox.down()
            raise
    else:
        admin_dsn = args.admin_dsn or os.environ.get("RUNBOOKS_SANDBOX_POSTGRES_ADMIN_DSN") or DEFAULT_ADMIN_DSN
    try:
        return _bench(args, admin_dsn, sandbox)
    finally:
        if sandbox is not None:
            print("stopping the private sandbox ...", flush=True)
            sandbox.down()


def _bench(args: argparse.Namespace, admin_dsn: str, sandbox: PrivateSandbox | None) -> dict[str, Any]:
    dsn = prepare(admin_dsn, args.size, args.keep_data and sandbox is None)
    db = PostgresDatabase(dsn=SecretStr(dsn))
    if sandbox is not None:
        print("a daily backup of the sandbox's own small database, for the backups step (not timed) ...", flush=True)
        asyncio.run(save_environments(sandbox, dsn))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT max(id), pg_database_size(current_database()) FROM bench_events").fetchone()
    assert row is not None
    max_id, size = int(row[0]), int(row[1])
    result: dict[str, Any] = {
        "database_mib": round(size / 2**20, 1),
        "rate_per_s": args.rate,
        "phase_s": args.phase_s,
        "cpus": os.cpu_count(),
        "load_before": round(os.getloadavg()[0], 2),
    }
    windows: dict[str, tuple[float, float]] = {}
    extra: dict[str, dict[str, Any]] = {}
    result["cpus_pinned"] = split_cpus(sandbox, args.pin)
    writer_process = WriterProcess(dsn, args.rate, max_id, result["cpus_pinned"]["application_and_writer"])
    try:
        time.sleep(1.0)  # warm-up, not counted
        t0 = time.perf_counter()
        time.sleep(args.phase_s)
        windows["baseline"] = (t0, time.perf_counter())

        if sandbox is not None:
            print("weekly-maintenance, every step, against the writer ...", flush=True)
            flow = asyncio.run(run_flow(args.skip))
            f0, f1 = flow.pop("window")
            windows["flow"] = (f0, f1)
            extra["flow"] = flow
            time.sleep(1.0)
            t0 = time.perf_counter()
            time.sleep(args.phase_s)
            windows["baseline_after"] = (t0, time.perf_counter())
            if not args.skip_verify_phases:
                for phase, target in (("verify_on_recovery", None), ("verify_on_source", "source")):
                    print(f"verify-backup alone, restore_target={target} ...", flush=True)
                    found = asyncio.run(run_verification(target))
                    windows[phase] = found.pop("window")
                    extra[phase] = found
                    time.sleep(1.0)

        if not args.skip_step_phases:
            found: dict[str, Any] = {}

            def step() -> None:
                async def both() -> None:
                    analyzed = await analyze_database.fn(db)
                    inspection = await inspect_database.fn(db)
                    found["analyze_s"] = analyzed.duration_s
                    found["bloat_mib"] = round(inspection.bloat_bytes / 2**20, 1)
                    found["duplicates"] = len(inspection.duplicate_indexes)
                    found["xid_percent"] = inspection.worst_xid.percent if inspection.worst_xid else None

                asyncio.run(both())

            # once, as the flow runs it, the writer measured over it and 0.5 s after
            s0 = time.perf_counter()
            step()
            s1 = time.perf_counter()
            time.sleep(max(1.0, s1 - s0))
            windows["step_once"] = (s0, s1 + 0.5)
            extra["step_once"] = {"step_s": round(s1 - s0, 3)}
            t1 = time.perf_counter()
            durations = repeat_for(args.phase_s, step)
            t2 = time.perf_counter()
            windows["step"] = (t1, t2)
            extra["step"] = {
                "runs": len(durations),
                "step_s_median": round(statistics.median(durations), 3),
                "step_s_max": round(max(durations), 3),
                **found,
            }
            psql = shutil.which("psql")
            if psql:
                env = dict(os.environ)
                durations = repeat_for(
                    args.phase_s,
                    lambda: subprocess.run(
                        [psql, "-X", "-q", "-o", os.devnull, "-d", dsn, "-c", SEED_SQL],
                        check=True,
                        env=env,
                        timeout=600,
                    ),
                )
                windows["seed_psql"] = (t2, time.perf_counter())
                extra["seed_psql"] = {"runs": len(durations), "run_s_median": round(statistics.median(durations), 3)}
        time.sleep(1.0)
        if not args.skip_vacuum_full:
            t4 = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM FULL bench_events")
            t5 = time.perf_counter()
            time.sleep(1.0)  # the writes queued behind the lock complete (and count) after it
            windows["vacuum_full"] = (t4, t5)
            extra["vacuum_full"] = {"run_s": round(t5 - t4, 3)}
    finally:
        writer = writer_process.finish()
    result["load_after"] = round(os.getloadavg()[0], 2)
    for name, (start, end) in windows.items():
        # the step once counts the writes due up to 0.5 s after it; its lock waits, the step itself
        lock_end = end - 0.5 if name == "step_once" else end
        result[name] = {**figures(writer.between(start, end), writer, (start, lock_end)), **extra.get(name, {})}
    result["writer_errors"] = writer.errors
    base_max = result["baseline"]["max_ms"] or 0.001
    base_p99 = result["baseline"]["p99_ms"] or 0.001
    goals: dict[str, bool] = {}
    if "flow" in result:
        flow = result["flow"]
        f0, f1 = windows["flow"]
        spans = [s["window"] for s in flow["steps"] if s["window"] is not None]
        if spans:  # the flow's own work outside the steps: loading the environment, last week's figures, the end
            first, last = min(a for a, _ in spans), max(b for _, b in spans)
            flow["steps"].insert(
                0, {"step": "(before 1)", "status": "", "s": round(first - f0, 3), "window": (f0, first)}
            )
            flow["steps"].append({"step": "(after 10)", "status": "", "s": round(f1 - last, 3), "window": (last, f1)})
        for s in flow["steps"]:
            window = s.pop("window")
            if window is not None:
                start, end = window
                s["writer"] = figures(writer.between(start, end), writer, (start, end))
                s["writer_max_vs_baseline_max"] = round(s["writer"]["max_ms"] / base_max, 2)
        result["flow_max_vs_baseline_max"] = round(flow["max_ms"] / base_max, 2)
        result["flow_p99_vs_baseline_p99"] = round(flow["p99_ms"] / base_p99, 2)
        goals["writer_max_during_the_flow_le_2x_baseline"] = result["flow_max_vs_baseline_max"] <= 2.0
        goals["writer_never_waited_on_a_lock_during_the_flow"] = flow["lock_wait_samples"] == 0
    if "step" in result:
        result["step_max_vs_baseline_max"] = round(result["step"]["max_ms"] / base_max, 2)
        result["step_p99_vs_baseline_p99"] = round(result["step"]["p99_ms"] / base_p99, 2)
        result["step_once_max_vs_baseline_max"] = round(result["step_once"]["max_ms"] / base_max, 2)
        goals["writer_max_during_step_le_2x_baseline"] = result["step_once_max_vs_baseline_max"] <= 2.0
        goals["writer_max_during_repeated_steps_le_2x_baseline"] = result["step_max_vs_baseline_max"] <= 2.0
        goals["writer_never_waited_on_a_lock_during_the_step"] = (
            result["step"]["lock_wait_samples"] == 0 and result["step_once"]["lock_wait_samples"] == 0
        )
    for phase in ("verify_on_recovery", "verify_on_source"):
        if phase in result:
            result[f"{phase}_max_vs_baseline_max"] = round(result[phase]["max_ms"] / base_max, 2)
    if "vacuum_full" in result:
        result["vacuum_full_max_vs_baseline_max"] = round(result["vacuum_full"]["max_ms"] / base_max, 2)
    result["goals_met"] = goals
    if not args.keep_data or sandbox is not None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    return result


def report(r: dict[str, Any]) -> None:
    print(f"database {r['database_mib']} MiB; writer {r['rate_per_s']:g} ops/s (half INSERT, half UPDATE), open loop")
    print(f"load average (1 min) before {r['load_before']}, after {r['load_after']}, on {r['cpus']} cores")
    pins = r.get("cpus_pinned") or {}
    if pins.get("pinned"):
        print(
            f"pinned: the application's cluster and the writer on CPU {pins['application_and_writer']}, the recovery "
            f"target's cluster and the flow on CPU {pins['recovery_and_flow']} ({pins['note']})"
        )
    names = (
        "baseline",
        "flow",
        "baseline_after",
        "verify_on_recovery",
        "verify_on_source",
        "step_once",
        "step",
        "seed_psql",
        "vacuum_full",
    )
    print(f"{'phase':<19} {'ops':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'lock waits':>12}")
    for name in names:
        if name in r:
            f = r[name]
            waits = f"{f['lock_wait_samples']}/{f['samples']}"
            print(f"{name:<19} {f['ops']:>6} {f['p50_ms']:>8} {f['p99_ms']:>8} {f['max_ms']:>8} {waits:>12}")
    if "flow" in r:
        flow = r["flow"]
        print(f"weekly-maintenance: {flow['state']} in {flow['flow_s']}s")
        print(f"  {'step':<14} {'status':<8} {'s':>8} {'writer p99':>11} {'writer max':>11} {'x base':>7} {'locks':>8}")
        for s in flow["steps"]:
            w = s.get("writer") or {}
            waits = f"{w.get('lock_wait_samples', '-')}/{w.get('samples', '-')}"
            print(
                f"  {s['step']:<14} {s['status']:<8} {s['s']:>8} {w.get('p99_ms', '-'):>11} "
                f"{w.get('max_ms', '-'):>11} {s.get('writer_max_vs_baseline_max', '-'):>7} {waits:>8}"
            )
        print(
            f"writer during the flow: p99 {flow['p99_ms']} ms ({r['flow_p99_vs_baseline_p99']}x baseline), "
            f"max {flow['max_ms']} ms ({r['flow_max_vs_baseline_max']}x baseline; goal <= 2x)"
        )
    for phase in ("verify_on_recovery", "verify_on_source"):
        if phase in r:
            v = r[phase]
            print(
                f"{phase}: {v['run_s']}s, restored on {v['restore_where']} {v['restore_server']} "
                f"(pg_restore -j {v['restore_jobs']}): writer max {r[f'{phase}_max_vs_baseline_max']}x baseline"
            )
    if "step" in r:
        s = r["step"]
        print(
            f"step: {s['runs']} run(s), median {s['step_s_median']}s, max {s['step_s_max']}s "
            f"(ANALYZE {s.get('analyze_s')}s); "
            f"found ~{s.get('bloat_mib')} MiB bloat, {s.get('duplicates')} duplicate index set(s)"
        )
        if "seed_psql" in r:
            print(f"seed psql: {r['seed_psql']['runs']} run(s), median {r['seed_psql']['run_s_median']}s")
        print(
            f"writer max / baseline max: step once {r['step_once_max_vs_baseline_max']}x, "
            f"step back to back {r['step_max_vs_baseline_max']}x (goal <= 2x)"
        )
    if "vacuum_full" in r:
        print(
            f"VACUUM FULL ({r['vacuum_full']['run_s']}s): writer max {r['vacuum_full_max_vs_baseline_max']}x baseline"
        )
    print(f"goals: {json.dumps(r['goals_met'])}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.maintenance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", type=int, default=2048, help="MiB of pg_database_size (default 2048)")
    parser.add_argument("--rate", type=float, default=100.0, help="writer operations per second")
    parser.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase")
    parser.add_argument(
        "--no-flow",
        dest="flow",
        action="store_false",
        help="the database step's phases only, on the server of --admin-dsn (no sandbox, no flow)",
    )
    parser.add_argument("--skip", action="append", default=[], help="a step the flow skips (repeatable)")
    parser.add_argument("--skip-step-phases", action="store_true", help="leave the step/seed_psql phases out")
    parser.add_argument(
        "--skip-verify-phases", action="store_true", help="leave verify_on_recovery / verify_on_source out"
    )
    parser.add_argument("--admin-dsn", help="with --no-flow: a superuser DSN of the server (default: the sandbox's)")
    parser.add_argument("--keep-data", action="store_true", help=f"with --no-flow: keep {DATABASE} for the next run")
    parser.add_argument("--skip-vacuum-full", action="store_true", help="leave the VACUUM FULL comparison out")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave the clusters, the writer and the flow unpinned (default: application + writer on one CPU, "
        "recovery target + flow on the other)",
    )
    args = parser.parse_args(argv)
    if args.flow:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.pop("KUBECONFIG", None)  # the private sandbox's cluster only
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            result = bench(args)
    else:
        result = bench(args)
    report(result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
