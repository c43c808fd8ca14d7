"""A lock chain on a real PostgreSQL for the db-diagnostics and db-performance tests: one session holding a row
lock while its query runs (``pg_sleep`` over ``SELECT ... FOR UPDATE``), and sessions waiting to update that row,
each on a thread of its own, as an application's connections would be."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import psycopg
from psycopg import sql


def psql(dsn: str, query: str) -> str:
    """What the on-call engineer would type: ``psql -tAc``."""
    out = subprocess.run(["psql", dsn, "-tAc", query], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


class LockChain:
    """``holder`` locks row 1 of a table of its own and sleeps; ``waiters`` sessions then queue to update it."""

    def __init__(self, dsn: str, *, holder_app: str = "api-worker", waiters: int = 2, sleep_s: int = 600) -> None:
        self.dsn = dsn
        self.table = f"lock_chain_{uuid.uuid4().hex[:8]}"
        self.holder_app = holder_app
        self.waiter_count = waiters
        self.sleep_s = sleep_s
        self.holder_pid = 0
        self.waiter_pids: list[int] = []
        self.errors: dict[int, BaseException | None] = {}  # pid -> how its statement ended (None: it completed)
        self._threads: list[threading.Thread] = []

    def _session(self, app: str, statement: sql.Composable, pids: list[int], ready: threading.Event) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name=app) as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                pids.append(row[0])
                ready.set()
                try:
                    conn.execute(statement)
                    self.errors[row[0]] = None
                except psycopg.Error as err:
                    self.errors[row[0]] = err
        finally:
            ready.set()

    def _start(self, app: str, statement: sql.Composable) -> int:
        pids: list[int] = []
        ready = threading.Event()
        thread = threading.Thread(target=self._session, args=(app, statement, pids, ready), daemon=True)
        thread.start()
        ready.wait(30)
        assert pids, f"session {app} did not connect"
        self._threads.append(thread)
        return pids[0]

    def _wait_for(self, query: str, expected: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while (got := psql(self.dsn, query)) != expected:
            assert time.monotonic() < deadline, f"{query!r} gave {got!r}, not {expected!r}, within {timeout_s}s"
            time.sleep(0.1)

    def start(self) -> LockChain:
        table = sql.Identifier(self.table)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int NOT NULL)").format(table))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 0)").format(table))
        self.holder_pid = self._start(
            self.holder_app,
            sql.SQL("SELECT pg_sleep({}) FROM (SELECT id FROM {} WHERE id = 1 FOR UPDATE) locked").format(
                sql.Literal(self.sleep_s), table
            ),
        )
        self._wait_for(f"SELECT wait_event FROM pg_stat_activity WHERE pid = {self.holder_pid}", "PgSleep")
        for i in range(self.waiter_count):
            pid = self._start(f"api-writer-{i}", sql.SQL("UPDATE {} SET v = v + 1 WHERE id = 1").format(table))
            self.waiter_pids.append(pid)
            self._wait_for(f"SELECT cardinality(pg_blocking_pids({pid})) > 0", "t")
        return self

    def value(self) -> int:
        return int(psql(self.dsn, f"SELECT v FROM {self.table} WHERE id = 1"))

    def join(self, timeout_s: float = 30) -> None:
        """Every session's statement ended (completed or failed)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), f"sessions of {self.table} still running"

    def close(self) -> None:
        pids = [self.holder_pid, *self.waiter_pids]
        psql(self.dsn, f"SELECT pg_terminate_backend(pid) FROM unnest(ARRAY{pids}::int[]) pid")
        self.join()
        psql(self.dsn, f"DROP TABLE IF EXISTS {self.table}")
