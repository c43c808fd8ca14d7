"""tasks/diagnostics/postgres.py: on a scratch database of the sandbox's own PostgreSQL 15 (``pg_stat_statements``
preloaded), and the pure parts (literal redaction, the blocking tree, the plan, the maintenance window) on values."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from blocks.postgres import PostgresDatabase
from sandbox.manager import Sandbox
from tasks.diagnostics.policy import MaintenanceWindow, load_policy
from tasks.diagnostics.postgres import (
    Session,
    lock_tree,
    plan_targets,
    read_index_bloat,
    read_sessions,
    read_slow_queries,
    read_snapshot,
    redact_literals,
    reindex_concurrently,
    stop_backend,
)
from tasks.postgres import LARGEST_RELATIONS_SQL
from tests.pglocks import psql


@pytest.fixture()
def scratch(sandbox: Sandbox) -> Iterator[PostgresDatabase]:
    """A database of its own on the sandbox's server, so its pg_stat_statements rows are this test's alone."""
    admin = str(sandbox.state.get("postgres")["admin_dsn"])
    name = f"rb_test_diag_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PostgresDatabase(dsn=SecretStr(make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_slow_pattern_run_hundreds_of_times_tops_the_slow_queries(scratch: PostgresDatabase) -> None:
    dsn = scratch.dsn.get_secret_value()
    missing = await read_slow_queries.fn(scratch)
    assert not missing.installed and "CREATE EXTENSION pg_stat_statements" in missing.detail

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO events (body) SELECT md5(g::text) FROM generate_series(1, 30000) g")
        for i in range(300):  # the pattern: a LIKE no index serves, with a different literal each time
            conn.execute(f"SELECT count(*) FROM events WHERE body LIKE '%{i:03x}ab%'")
        for i in range(300):  # a fast one, as often
            conn.execute(f"SELECT body FROM events WHERE id = {i + 1}")

    slow = await read_slow_queries.fn(scratch, top=5)
    assert slow.installed and slow.columns == "total_exec_time, mean_exec_time"  # PostgreSQL 13+ names
    assert "server 15" in slow.detail
    top = slow.queries[0]
    assert top.calls == 300 and "LIKE" in top.query and "ab%" not in top.query, slow.queries
    assert top.total_ms > max(q.total_ms for q in slow.queries[1:])


async def test_the_snapshot_reads_all_in_one_transaction_and_ranks_sizes_as_the_exact_query(
    scratch: PostgresDatabase,
) -> None:
    dsn = scratch.dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        for i in range(40):  # small tables, analyzed: their relpages are known
            rows = 20 * i + 1
            conn.execute(
                f"CREATE TABLE small_{i} AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, {rows}) g"
            )
            conn.execute(f"CREATE INDEX ON small_{i} (body)")
        conn.execute("ANALYZE")
        # the largest, never vacuumed nor analyzed: relpages 0 in the catalogue, yet it must rank first
        conn.execute("CREATE TABLE fresh AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 40000) g")
        # (no index on it: CREATE INDEX would set its relpages)
        assert psql(dsn, "SELECT relpages FROM pg_class WHERE relname = 'fresh'") == "0"
    top = 5
    snap = await read_snapshot.fn(scratch, top=top, large_table_bytes=0)
    # the exact query (pg_total_relation_size of every relation), as psql gives it
    exact = [line.split("|") for line in psql(dsn, LARGEST_RELATIONS_SQL.replace("%s", "{}").format(
        "'{r,m,p}'", top)).splitlines()]  # fmt: skip
    assert [(t.name, t.total_bytes) for t in snap.relations.tables] == [(r[1], int(r[3])) for r in exact]
    assert snap.relations.tables[0].name == "fresh"
    exact_indexes = [line.split("|") for line in psql(dsn, LARGEST_RELATIONS_SQL.replace("%s", "{}").format(
        "'{i}'", top)).splitlines()]  # fmt: skip
    assert [i.name for i in snap.relations.indexes] == [r[1] for r in exact_indexes]
    # the other reads, from the same snapshot
    assert snap.slow.installed and snap.connections.max_connections > 0
    assert snap.connections.total >= 1 and all(s.pid > 0 for s in snap.sessions)


async def test_reindex_concurrently_rebuilds_a_bloated_index(scratch: PostgresDatabase) -> None:
    with psycopg.connect(scratch.dsn.get_secret_value(), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int, n int)")
        conn.execute("INSERT INTO events SELECT g, g FROM generate_series(1, 60000) g")
        conn.execute("CREATE INDEX events_n ON events (n)")
        conn.execute("DELETE FROM events WHERE id % 10 <> 0")  # nine in ten index entries point at dead rows
        conn.execute("VACUUM ANALYZE events")  # the pages stay: the index is 90% empty

    [bloated] = [b for b in await read_index_bloat.fn(scratch, min_pages=16) if b.index == "events_n"]
    assert bloated.bloat_percent >= 60, bloated
    rebuilt = await reindex_concurrently.fn(scratch, bloated)
    assert rebuilt.index == "public.events_n" and rebuilt.bytes_after < bloated.bytes / 3, rebuilt


async def test_a_cancel_that_does_not_end_an_idle_transaction_is_followed_by_a_terminate(
    scratch: PostgresDatabase,
) -> None:
    """An idle transaction holding a row lock ignores pg_cancel_backend (it runs no query): after cancel_wait_s,
    pg_terminate_backend, and the session waiting on it goes on."""
    dsn = scratch.dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO t VALUES (1, 0)")
    holder = psycopg.connect(dsn, application_name="forgot-to-commit")
    holder.execute("UPDATE t SET v = 10 WHERE id = 1")  # and never commits
    holder_row = holder.execute("SELECT pg_backend_pid()").fetchone()
    assert holder_row is not None
    outcome: list[BaseException | None] = []

    def waiter() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            outcome.append(None)
        except psycopg.Error as err:
            outcome.append(err)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while psql(dsn, f"SELECT count(*) FROM pg_stat_activity WHERE {holder_row[0]} = ANY(pg_blocking_pids(pid))") != "1":
        assert time.monotonic() < deadline, "the waiter never queued behind the idle transaction"
        time.sleep(0.1)
    try:
        [session] = [s for s in await read_sessions.fn(scratch) if s.pid == holder_row[0]]
        assert session.state == "idle in transaction"
        stopped = await stop_backend.fn(scratch, session, cancel_wait_s=1, terminate=True)
        assert (stopped.action, stopped.outcome) == ("terminate", "terminated"), stopped
        thread.join(30)
        assert outcome == [None]
        assert psql(dsn, "SELECT v FROM t WHERE id = 1") == "1"  # the holder's update rolled back, the waiter's in
        assert psql(dsn, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {holder_row[0]}") == "0"
        again = await stop_backend.fn(scratch, session, cancel_wait_s=1, terminate=True)
        assert again.outcome == "gone"  # a re-run finds it gone, and never touches a new session of the same pid
    finally:
        holder.close()


def test_literals_are_removed_and_parameters_kept() -> None:
    query = "SELECT * FROM users WHERE email = 'a@b.c' AND id = 42 AND note = $$x$$ AND k = $1 AND t2.x = -3.5e2"
    assert (
        redact_literals(query) == "SELECT * FROM users WHERE email = ? AND id = ? AND note = ? AND k = $1 AND t2.x = ?"
    )
    assert redact_literals("SELECT 'it''s'") == "SELECT ?"


def _session(pid: int, blocked_by: list[int], app: str = "api", age: float = 10, state: str = "active") -> Session:
    return Session(
        pid=pid, backend_start=datetime(2026, 1, 1, tzinfo=UTC), usename="app", application_name=app,
        backend_type="client backend", client=None, state=state, wait_event_type=None, wait_event=None,
        query="UPDATE t SET v = ?", query_age_s=age, xact_age_s=age, state_age_s=age, blocked_by=blocked_by,
    )  # fmt: skip


def test_the_plan_targets_roots_and_long_queries_never_waiters_or_protected_sessions() -> None:
    sessions = [
        _session(10, [], age=30),
        _session(11, [10], age=20),
        _session(12, [11], age=8),  # waits on a waiter: the same tree
        _session(20, [], app="pg_dump", age=40),
        _session(21, [20], age=9),
        _session(30, [], age=900),  # long, blocks nobody
        _session(31, [], age=900, state="idle"),  # idle: not a query
    ]
    tree = lock_tree(sessions)
    assert [n.session.pid for n in tree] == [10, 20] and tree[0].pids() == [10, 11, 12]
    apps = load_policy().postgres.performance.protected_applications
    targets = plan_targets(sessions, tree, long_query_s=300, min_blocked_s=5, protected_applications=apps)
    assert [(t.session.pid, t.kind) for t in targets] == [(10, "blocking"), (20, "blocking"), (30, "long-running")]
    assert targets[0].waiters == [11, 12] and targets[0].protected is None
    assert targets[1].protected is not None and "pg_dump" in targets[1].protected
    assert plan_targets(sessions, tree, long_query_s=300, min_blocked_s=25, protected_applications=apps)[0].kind == (
        "long-running"
    )  # nobody has waited 25 s yet


def test_the_maintenance_window_is_sundays_from_three_for_an_hour() -> None:
    window = MaintenanceWindow(days=["sun"], start_hour=23, hours=2)
    assert window.contains(datetime(2026, 12, 6, 23, 30, tzinfo=UTC))  # Sunday 23:30
    assert window.contains(datetime(2026, 12, 7, 0, 59, tzinfo=UTC))  # Monday 00:59, the window began on Sunday
    assert not window.contains(datetime(2026, 12, 7, 1, 0, tzinfo=UTC))
    assert not window.contains(datetime(2026, 12, 5, 23, 30, tzinfo=UTC))  # Saturday
