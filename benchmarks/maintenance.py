"""The weekly maintenance's database step against a steady writer (``python -m benchmarks.maintenance``).

Run on demand, never in the tests. Needs a PostgreSQL server (the sandbox's: ``RUNBOOKS_SANDBOX_POSTGRES_ADMIN_DSN``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``, or ``--admin-dsn``). It creates the database
``rb_bench_maint`` (and nothing else), fills it to ``--size`` MiB (a table of realistic rows, a third of them deleted
so the bloat estimate has something to find, plus a duplicate index), and drops it at the end unless
``--keep-data``. A writer thread inserts and updates rows at ``--rate`` operations per second, open loop (a
latency counts from when the operation was due, so a stall shows in full), on its own connection. In one run:

baseline        the writer alone for ``--phase-s`` seconds;
step_once       the flow's database step once, as the flow runs it (``tasks.postgres.analyze_database`` then
                ``inspect_database``: ANALYZE with a lock timeout, size, largest relations, bloat estimate, XID age,
                unused and duplicate indexes, the seed's pg_stats query), the writer measured over it and 0.5 s after;
step            the same step back to back for ``--phase-s`` seconds (a stress: ANALYZE's sampling competes with
                the writer for the CPU and the disk);
seed_psql       the seed's ``psql -c "ANALYZE; SELECT pg_size_pretty(...); SELECT ... FROM pg_stats ..."`` (the raw
                tool), repeated the same way;
vacuum_full     what the step never does: ``VACUUM FULL`` of the table, once, to show what a write-blocking lock
                does to the same writer (``--skip-vacuum-full`` leaves it out).

Beside the latencies, a sampler reads the writer's backend in ``pg_stat_activity`` every 5 ms: ``lock waits`` is
how many samples found it waiting on a lock (``wait_event_type = 'Lock'``), which tells a stall caused by a lock
from one caused by two busy cores.

The goal (issue 13): the writer's max latency during the step ≤ 2× its baseline max, and no lock wait. The last line
printed is one JSON object with every figure.

    uv run python -m benchmarks.maintenance --size 64      # a quick one
    uv run python -m benchmarks.maintenance                # 2 GiB, as the issue asks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from blocks.postgres import PostgresDatabase
from tasks.postgres import analyze_database, inspect_database

DATABASE = "rb_bench_maint"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_SQL = (
    f"ANALYZE; SELECT pg_size_pretty(pg_database_size('{DATABASE}')) AS db_size; "
    "SELECT schemaname,tablename,attname,n_distinct,correlation FROM pg_stats ORDER BY n_distinct DESC LIMIT 10;"
)


@dataclass
class Writer:
    """Inserts and updates at a steady rate; ``latencies`` are (due time, seconds late + run) per operation."""

    dsn: str
    rate: float
    max_id: int
    latencies: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
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


def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_dsn = args.admin_dsn or os.environ.get("RUNBOOKS_SANDBOX_POSTGRES_ADMIN_DSN") or DEFAULT_ADMIN_DSN
    dsn = prepare(admin_dsn, args.size, args.keep_data)
    db = PostgresDatabase(dsn=SecretStr(dsn))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT max(id), pg_database_size(current_database()) FROM bench_events").fetchone()
    assert row is not None
    max_id, size = int(row[0]), int(row[1])
    writer = Writer(dsn, args.rate, max_id)
    thread = threading.Thread(target=writer.run, name="writer", daemon=True)
    sampler = threading.Thread(target=writer.sample_locks, name="lock-sampler", daemon=True)
    thread.start()
    sampler.start()
    result: dict[str, Any] = {"database_mib": round(size / 2**20, 1), "rate_per_s": args.rate, "phase_s": args.phase_s}
    try:
        time.sleep(1.0)  # warm-up, not counted
        t0 = time.perf_counter()
        time.sleep(args.phase_s)
        t1 = time.perf_counter()
        result["baseline"] = figures(writer.between(t0, t1), writer, (t0, t1))

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

        # once, as the flow runs it, and the writer over the same span after it as the baseline
        s0 = time.perf_counter()
        step()
        s1 = time.perf_counter()
        time.sleep(max(1.0, s1 - s0))
        result["step_once"] = {**figures(writer.between(s0, s1 + 0.5), writer, (s0, s1)), "step_s": round(s1 - s0, 3)}
        t1 = time.perf_counter()
        durations = repeat_for(args.phase_s, step)
        t2 = time.perf_counter()
        result["step"] = {
            **figures(writer.between(t1, t2), writer, (t1, t2)),
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
                    [psql, "-X", "-q", "-o", os.devnull, "-d", dsn, "-c", SEED_SQL], check=True, env=env, timeout=600
                ),
            )
            t3 = time.perf_counter()
            result["seed_psql"] = {
                **figures(writer.between(t2, t3), writer, (t2, t3)),
                "runs": len(durations),
                "run_s_median": round(statistics.median(durations), 3),
            }
        else:
            t3 = t2
        time.sleep(1.0)
        if not args.skip_vacuum_full:
            t4 = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM FULL bench_events")
            t5 = time.perf_counter()
            time.sleep(1.0)  # the writes queued behind the lock complete (and count) after it
            result["vacuum_full"] = {**figures(writer.between(t4, t5), writer, (t4, t5)), "run_s": round(t5 - t4, 3)}
    finally:
        writer.stop.set()
        thread.join(timeout=10)
        sampler.join(timeout=10)
    result["writer_errors"] = writer.errors
    base_max = result["baseline"]["max_ms"] or 0.001
    result["step_max_vs_baseline_max"] = round(result["step"]["max_ms"] / base_max, 2)
    result["step_p99_vs_baseline_p99"] = round(result["step"]["p99_ms"] / (result["baseline"]["p99_ms"] or 0.001), 2)
    if "vacuum_full" in result:
        result["vacuum_full_max_vs_baseline_max"] = round(result["vacuum_full"]["max_ms"] / base_max, 2)
    result["step_once_max_vs_baseline_max"] = round(result["step_once"]["max_ms"] / base_max, 2)
    result["goals_met"] = {
        "writer_max_during_step_le_2x_baseline": result["step_once_max_vs_baseline_max"] <= 2.0,
        "writer_max_during_repeated_steps_le_2x_baseline": result["step_max_vs_baseline_max"] <= 2.0,
        "writer_never_waited_on_a_lock_during_the_step": result["step"]["lock_wait_samples"] == 0
        and result["step_once"]["lock_wait_samples"] == 0,
    }
    if not args.keep_data:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    return result


def report(r: dict[str, Any]) -> None:
    print(f"database {r['database_mib']} MiB; writer {r['rate_per_s']:g} ops/s (half INSERT, half UPDATE), open loop")
    rows = [("baseline", r["baseline"]), ("step_once", r["step_once"]), ("step", r["step"])]
    rows += [(name, r[name]) for name in ("seed_psql", "vacuum_full") if name in r]
    print(f"{'phase':<12} {'ops':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'lock waits':>12}")
    for name, f in rows:
        waits = f"{f['lock_wait_samples']}/{f['samples']}"
        print(f"{name:<12} {f['ops']:>6} {f['p50_ms']:>8} {f['p99_ms']:>8} {f['max_ms']:>8} {waits:>12}")
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
        f"step back to back {r['step_max_vs_baseline_max']}x (goal ≤ 2x)"
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
    parser.add_argument("--admin-dsn", help="a superuser DSN of the server (default: the sandbox's)")
    parser.add_argument("--keep-data", action="store_true", help=f"keep {DATABASE} for the next run")
    parser.add_argument("--skip-vacuum-full", action="store_true", help="leave the VACUUM FULL comparison out")
    args = parser.parse_args(argv)
    result = bench(args)
    report(result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
