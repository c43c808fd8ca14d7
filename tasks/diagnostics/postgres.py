"""PostgreSQL diagnostics and their actions: what db-diagnostics reads and what db-performance does.

Reads (``@read_task``): connections by state against ``max_connections``; slow queries from
``pg_stat_statements`` with the column names of the server's version (``total_exec_time`` from 13 on,
``total_time`` before); sizes of tables and indexes and never-used indexes (the weekly maintenance's queries,
:mod:`tasks.postgres`); sequential scans on large tables; the cache hit ratio; sessions with
``pg_blocking_pids()`` (the true blocking tree, not the seed's join of ``pg_locks`` by lock type); a btree bloat
estimate. Actions (``@once_task``): ``pg_cancel_backend``, ``pg_terminate_backend``, ``REINDEX INDEX
CONCURRENTLY``; each acts only on the backend it was planned for (same pid and ``backend_start``), so a re-run
finds "already gone" instead of hitting a new session that reused the pid.

Every query text that leaves here is stripped of its literals (:func:`redact_literals`).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres import PostgresDatabase
from kernel.errors import PostgresError
from kernel.retry import once_task, read_task
from tasks.diagnostics.policy import PostgresLimits
from tasks.diagnostics.redis import Finding, Verdict
from tasks.postgres import _USER_SCHEMAS, UNUSED_INDEXES_SQL, UnusedIndex

#: what our own sessions call themselves: never a target of db-performance
OWN_APPLICATION_NAME = "runbooks-db-performance"

_STRING = re.compile(r"(?:[eEbBxXuU]&?)?'(?:[^']|'')*'")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*|)\$.*?\$\1\$", re.S)  # $$...$$, $tag$...$tag$
_NUMBER = re.compile(r"(?<![\w$.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")


def redact_literals(query: str | None, limit: int = 500) -> str:
    """The query with every string, dollar-quoted and numeric literal replaced by ``?`` (identifiers and ``$1``
    parameters kept), cut to ``limit`` characters: what an approval or an artifact may show."""
    if not query:
        return ""
    text = _DOLLAR.sub("?", query)
    text = _STRING.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Connections(BaseModel):
    by_state: dict[str, int]
    total: int
    max_connections: int
    superuser_reserved: int

    @property
    def percent(self) -> float:
        return round(100 * self.total / self.max_connections, 1) if self.max_connections else 0.0


class SlowQuery(BaseModel):
    queryid: int | None
    query: str = Field(description="normalized by pg_stat_statements, literals removed")
    calls: int
    total_ms: float
    mean_ms: float
    rows: int


class SlowQueries(BaseModel):
    installed: bool
    detail: str = Field(description="which columns were read, or why nothing was, and how to enable it")
    columns: str = ""
    queries: list[SlowQuery] = Field(default_factory=list)


class TableScans(BaseModel):
    schema_name: str
    table: str
    bytes: int
    seq_scan: int
    seq_tup_read: int
    idx_scan: int


class CacheHit(BaseModel):
    heap_ratio: float | None = Field(description="heap_blks_hit / (hit + read), user tables")
    index_ratio: float | None
    blocks_read: int


class RelationRow(BaseModel):
    schema_name: str
    name: str
    kind: str
    total_bytes: int
    bytes: int


class IndexBloat(BaseModel):
    schema_name: str
    table: str
    index: str
    bytes: int
    expected_bytes: int
    bloat_percent: float


class Session(BaseModel):
    pid: int
    backend_start: datetime | None
    usename: str | None
    application_name: str
    backend_type: str
    client: str | None
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    query: str = Field(description="literals removed")
    query_age_s: float | None
    xact_age_s: float | None
    state_age_s: float | None
    blocked_by: list[int]


class LockNode(BaseModel):
    """One session of a blocking tree: who it holds up (``children``); a root waits on nobody."""

    session: Session
    children: list[LockNode] = Field(default_factory=list)

    def pids(self) -> list[int]:
        return [self.session.pid, *[p for c in self.children for p in c.pids()]]

    @property
    def waiters(self) -> int:
        return len(self.pids()) - 1


async def _fetch(
    conn: psycopg.AsyncConnection, query: Any, args: tuple[object, ...] | dict[str, object] = ()
) -> list[tuple[Any, ...]]:
    return list(await (await conn.execute(query, args or None)).fetchall())


def _reason(err: psycopg.Error) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _error(db: PostgresDatabase, what: str, err: psycopg.Error) -> PostgresError:
    return PostgresError(
        f"{what} on {db.safe_address} failed: {_reason(err)}",
        hint="check that the server answers and that the block's role may read pg_stat_activity and the "
        "statistics views (pg_monitor), and signal backends (pg_signal_backend) for db-performance",
        transient=isinstance(err, psycopg.OperationalError),
    )


async def _prepare(conn: psycopg.AsyncConnection, statement_timeout_s: float) -> None:
    """Our name, the statement timeout and a 1 s lock timeout, in one round trip."""
    await conn.execute(
        "SELECT set_config('application_name', %s, false), set_config('statement_timeout', %s, false),"
        " set_config('lock_timeout', '1s', false)",
        (OWN_APPLICATION_NAME, str(int(statement_timeout_s * 1000))),
    )


CONNECTIONS_SQL = """
SELECT coalesce(state, 'unknown'), count(*)::int,
       current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int
FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 2 DESC
"""
LIMITS_SQL = "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"


async def _connections(conn: psycopg.AsyncConnection) -> Connections:
    rows = await _fetch(conn, CONNECTIONS_SQL)
    limits = (rows[0][2], rows[0][3]) if rows else (await _fetch(conn, LIMITS_SQL))[0]
    by_state = {str(r[0]): int(r[1]) for r in rows}
    return Connections(
        by_state=by_state, total=sum(by_state.values()), max_connections=limits[0], superuser_reserved=limits[1]
    )


@read_task
async def read_connections(db: PostgresDatabase) -> Connections:
    """Client connections by state (the seed's ``pg_stat_activity GROUP BY state``) against ``max_connections``."""
    async with db.get_client() as conn:
        try:
            await _prepare(conn, 30)
            return await _connections(conn)
        except psycopg.Error as err:
            raise _error(db, "connections", err) from err


ENABLE_HINT = (
    "pg_stat_statements is not {what}: add it to shared_preload_libraries in postgresql.conf "
    "(shared_preload_libraries = 'pg_stat_statements'), restart PostgreSQL, then run "
    "CREATE EXTENSION pg_stat_statements in this database"
)


async def _slow_queries(conn: psycopg.AsyncConnection, top: int, min_calls: int) -> SlowQueries:
    """pg_stat_statements' top statements; inside a transaction, the read runs under a savepoint, so that an
    extension created but not loaded (an error) leaves the transaction usable for the other reads."""
    [(version, extversion)] = await _fetch(
        conn,
        "SELECT current_setting('server_version_num')::int,"
        " (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements')",
    )
    if extversion is None:
        return SlowQueries(installed=False, detail=ENABLE_HINT.format(what="installed in this database"))
    total, mean = ("total_exec_time", "mean_exec_time") if version >= 130000 else ("total_time", "mean_time")
    query = sql.SQL(
        "SELECT s.queryid, s.query, s.calls, s.{total}, s.{mean}, s.rows FROM pg_stat_statements s"
        " WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND s.calls >= %s AND s.query NOT ILIKE '%%pg_stat_statements%%'"
        " ORDER BY s.{total} DESC LIMIT %s"
    ).format(total=sql.Identifier(total), mean=sql.Identifier(mean))
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            async with conn.transaction():  # a savepoint
                rows = await _fetch(conn, query, (min_calls, top))
        else:
            rows = await _fetch(conn, query, (min_calls, top))
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return SlowQueries(installed=False, detail=ENABLE_HINT.format(what="loaded by the server"))
    return SlowQueries(
        installed=True,
        detail=f"pg_stat_statements {extversion} ({total}, {mean}; server {version // 10000})",
        columns=f"{total}, {mean}",
        queries=[
            SlowQuery(
                queryid=r[0],
                query=redact_literals(r[1]),
                calls=r[2],
                total_ms=round(float(r[3]), 3),
                mean_ms=round(float(r[4]), 3),
                rows=r[5],
            )
            for r in rows
        ],
    )


@read_task
async def read_slow_queries(db: PostgresDatabase, *, top: int = 10, min_calls: int = 1) -> SlowQueries:
    """The ``top`` statements of this database by total execution time: ``total_exec_time``/``mean_exec_time`` on
    PostgreSQL 13 and later, ``total_time``/``mean_time`` before. Not installed or not loaded: says so, and how."""
    async with db.get_client() as conn:
        try:
            await _prepare(conn, 30)
            return await _slow_queries(conn, top, min_calls)
        except psycopg.Error as err:
            raise _error(db, "pg_stat_statements", err) from err


class Relations(BaseModel):
    tables: list[RelationRow]
    indexes: list[RelationRow]
    unused_indexes: list[UnusedIndex]
    seq_scans: list[TableScans] = Field(description="large tables read by sequential scans more than by index")
    cache: CacheHit


SEQ_SCANS_SQL = """
SELECT schemaname, relname, pg_relation_size(relid)::bigint, seq_scan, seq_tup_read, coalesce(idx_scan, 0)
FROM pg_stat_user_tables
WHERE pg_relation_size(relid) >= %s AND seq_scan > 0 AND seq_scan >= coalesce(idx_scan, 0)
ORDER BY seq_tup_read DESC LIMIT %s
"""

CACHE_HIT_SQL = """
SELECT sum(heap_blks_hit)::float8 / nullif(sum(heap_blks_hit) + sum(heap_blks_read), 0),
       sum(idx_blks_hit)::float8 / nullif(sum(idx_blks_hit) + sum(idx_blks_read), 0),
       coalesce(sum(heap_blks_read), 0)::bigint
FROM pg_statio_user_tables
"""


#: The largest relations without pg_total_relation_size on every one of them (each call stat()s every file of the
#: relation, its TOAST table and its indexes): candidates by the catalogue's page counts (``relpages``, kept by
#: VACUUM, ANALYZE and CREATE INDEX; the relation, its TOAST table and its indexes), ``candidates`` of them, plus
#: every relation whose counts are unknown (never vacuumed nor analyzed: ``reltuples`` < 0, or ``relpages`` 0), and
#: the true sizes of those only. A stale ``relpages`` can misrank, hence the margin of candidates beyond ``top``.
LARGEST_CANDIDATES_SQL = f"""
WITH rel AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind::text AS kind, c.relpages, c.reltuples,
           c.relpages::bigint + coalesce(t.relpages, 0)
             + coalesce((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                         WHERE x.indrelid = c.oid), 0) AS pages
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
    WHERE c.relkind = ANY(%(kinds)s) AND {_USER_SCHEMAS}
), candidates AS (
    (SELECT oid, nspname, relname, kind FROM rel ORDER BY pages DESC LIMIT %(candidates)s)
    UNION
    SELECT oid, nspname, relname, kind FROM rel WHERE relpages = 0 OR reltuples < 0
)
SELECT nspname, relname, kind, pg_total_relation_size(oid), pg_relation_size(oid)
FROM candidates ORDER BY 4 DESC, 1, 2 LIMIT %(top)s
"""


async def _relations(conn: psycopg.AsyncConnection, top: int, large_table_bytes: int) -> Relations:
    kinds = {"r": "table", "p": "partitioned table", "m": "materialized view", "i": "index"}
    candidates = 3 * top + 10
    tables = await _fetch(
        conn,
        LARGEST_CANDIDATES_SQL,
        {"kinds": ["r", "m", "p"], "candidates": candidates, "top": top},
    )
    indexes = await _fetch(conn, LARGEST_CANDIDATES_SQL, {"kinds": ["i"], "candidates": candidates, "top": top})
    unused = await _fetch(conn, UNUSED_INDEXES_SQL)
    scans = await _fetch(conn, SEQ_SCANS_SQL, (large_table_bytes, top))
    cache = await _fetch(conn, CACHE_HIT_SQL)

    def rel(r: tuple[Any, ...]) -> RelationRow:
        return RelationRow(schema_name=r[0], name=r[1], kind=kinds.get(r[2], r[2]), total_bytes=r[3], bytes=r[4])

    heap, index, read = cache[0]
    return Relations(
        tables=[rel(r) for r in tables],
        indexes=[rel(r) for r in indexes],
        unused_indexes=[UnusedIndex(schema_name=r[0], table=r[1], index=r[2], bytes=r[3], scans=r[4]) for r in unused],
        seq_scans=[
            TableScans(schema_name=r[0], table=r[1], bytes=r[2], seq_scan=r[3], seq_tup_read=r[4], idx_scan=r[5])
            for r in scans
        ],
        cache=CacheHit(
            heap_ratio=None if heap is None else round(heap, 4),
            index_ratio=None if index is None else round(index, 4),
            blocks_read=read,
        ),
    )


@read_task
async def read_relations(
    db: PostgresDatabase, *, top: int = 10, large_table_bytes: int = 10_000_000, statement_timeout_s: float = 30
) -> Relations:
    """Largest tables and indexes, never-used indexes (the weekly maintenance's query), sequential scans on
    tables of at least ``large_table_bytes``, and the cache hit ratio. Catalogue and statistics only."""
    async with db.get_client() as conn:
        try:
            await _prepare(conn, statement_timeout_s)
            return await _relations(conn, top, large_table_bytes)
        except psycopg.Error as err:
            raise _error(db, "relation statistics", err) from err


SESSIONS_SQL = """
SELECT pid, backend_start, usename, coalesce(application_name, ''), coalesce(backend_type, ''),
       client_addr::text, state, wait_event_type, wait_event, query,
       extract(epoch FROM now() - query_start)::float8,
       extract(epoch FROM now() - xact_start)::float8,
       extract(epoch FROM now() - state_change)::float8,
       pg_blocking_pids(pid)
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND (datname = current_database() OR datname IS NULL)
ORDER BY pid
"""


async def _sessions(conn: psycopg.AsyncConnection) -> list[Session]:
    rows = await _fetch(conn, SESSIONS_SQL)

    def age(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return [
        Session(
            pid=r[0],
            backend_start=r[1],
            usename=r[2],
            application_name=r[3],
            backend_type=r[4],
            client=r[5],
            state=r[6],
            wait_event_type=r[7],
            wait_event=r[8],
            query=redact_literals(r[9]),
            query_age_s=age(r[10]),
            xact_age_s=age(r[11]),
            state_age_s=age(r[12]),
            blocked_by=list(r[13] or []),
        )
        for r in rows
    ]


@read_task
async def read_sessions(db: PostgresDatabase) -> list[Session]:
    """Every session of this database but ours, with ``pg_blocking_pids()`` (who it waits on)."""
    async with db.get_client() as conn:
        try:
            await _prepare(conn, 30)
            return await _sessions(conn)
        except psycopg.Error as err:
            raise _error(db, "pg_stat_activity", err) from err


class Snapshot(BaseModel):
    """What db-diagnostics reads, read at one moment: connections, slow queries, relations and sessions."""

    connections: Connections
    slow: SlowQueries
    relations: Relations
    sessions: list[Session]


@read_task
async def read_snapshot(
    db: PostgresDatabase, *, top: int = 10, large_table_bytes: int = 10_000_000, statement_timeout_s: float = 30
) -> Snapshot:
    """:func:`read_connections`, :func:`read_slow_queries`, :func:`read_relations` and :func:`read_sessions` on one
    connection, in one read-only REPEATABLE READ transaction: one backend started instead of four (a backend's
    start, a fork and its catalogue cache, cost more than these reads), one snapshot of ``pg_stat_activity`` for the
    connections and the sessions, and about a dozen round trips."""
    async with db.get_client() as conn:
        what = "statistics"
        try:
            await _prepare(conn, statement_timeout_s)
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                what = "connections"
                connections = await _connections(conn)
                what = "pg_stat_activity"
                sessions = await _sessions(conn)
                what = "pg_stat_statements"
                slow = await _slow_queries(conn, top, 1)
                what = "relation statistics"
                relations = await _relations(conn, top, large_table_bytes)
        except psycopg.Error as err:
            raise _error(db, what, err) from err
    return Snapshot(connections=connections, slow=slow, relations=relations, sessions=sessions)


def lock_tree(sessions: list[Session]) -> list[LockNode]:
    """The blocking tree: roots are sessions that block someone and wait on nobody (or only on sessions outside
    this database); a waiter blocked by several sessions hangs under each of them."""
    by_pid = {s.pid: s for s in sessions}
    blocked_by_me: dict[int, list[int]] = {}
    for s in sessions:
        for blocker in s.blocked_by:
            blocked_by_me.setdefault(blocker, []).append(s.pid)

    def node(pid: int, seen: frozenset[int]) -> LockNode:
        children = [node(c, seen | {c}) for c in sorted(blocked_by_me.get(pid, [])) if c not in seen and c in by_pid]
        return LockNode(session=by_pid[pid], children=children)

    roots = [
        pid for pid in sorted(blocked_by_me) if pid in by_pid and not any(b in by_pid for b in by_pid[pid].blocked_by)
    ]
    return [node(pid, frozenset({pid})) for pid in roots]


def lock_rows(tree: list[LockNode]) -> list[dict[str, Any]]:
    """The tree as table rows, depth-first, indented by level."""
    rows: list[dict[str, Any]] = []

    def walk(n: LockNode, level: int, root: int) -> None:
        s = n.session
        rows.append(
            {
                "tree": ("  " * level + ("└─ " if level else "")) + str(s.pid),
                "root": root,
                "level": level,
                "pid": s.pid,
                "blocked_by": ",".join(map(str, s.blocked_by)),
                "waiters": n.waiters,
                "application": s.application_name,
                "state": s.state,
                "wait": f"{s.wait_event_type or ''}:{s.wait_event or ''}".strip(":"),
                "xact_age_s": s.xact_age_s,
                "query": s.query,
            }
        )
        for c in n.children:
            walk(c, level + 1, root)

    for n in tree:
        walk(n, 0, n.session.pid)
    return rows


#: A btree's expected size: ``reltuples`` index tuples (8-byte header + the MAXALIGNed widths ``pg_stats`` measured
#: of its key columns + a 4-byte line pointer) on pages of ``block_size`` less the page header and btree special
#: space, filled to the index's fillfactor (90 by default). An estimate from the catalogue; needs a fresh ANALYZE.
INDEX_BLOAT_SQL = """
WITH idx AS (
    SELECT n.nspname, t.relname AS tbl, x.relname AS idx, x.oid, x.relpages::numeric AS relpages,
           x.reltuples::numeric AS reltuples, i.indrelid, i.indkey,
           coalesce((SELECT substring(o FROM 'fillfactor=([0-9]+)')::int
                     FROM unnest(x.reloptions) o WHERE o LIKE 'fillfactor=%%'), 90) AS fillfactor,
           current_setting('block_size')::numeric AS bs
    FROM pg_index i
    JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_am a ON a.oid = x.relam
    WHERE a.amname = 'btree' AND x.relpages >= %s AND i.indexprs IS NULL
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
), widths AS (
    SELECT idx.oid, sum(coalesce(s.avg_width, 8)) AS width
    FROM idx JOIN pg_attribute att ON att.attrelid = idx.indrelid AND att.attnum = ANY(idx.indkey)
    LEFT JOIN pg_stats s ON s.schemaname = idx.nspname AND s.tablename = idx.tbl AND s.attname = att.attname
    GROUP BY idx.oid
), est AS (
    SELECT idx.*, ceil(idx.reltuples * (8 + 8 * ceil(w.width / 8.0) + 4)
                       / ((idx.bs - 24 - 16) * idx.fillfactor / 100.0)) + 1 AS expected_pages
    FROM idx JOIN widths w ON w.oid = idx.oid
)
SELECT nspname, tbl, idx, (relpages * bs)::bigint, (least(expected_pages, relpages) * bs)::bigint,
       round(100 * greatest(relpages - expected_pages, 0) / relpages, 1)
FROM est
ORDER BY 6 DESC, 4 DESC
LIMIT %s
"""


@read_task
async def read_index_bloat(db: PostgresDatabase, *, min_pages: int = 128, top: int = 20) -> list[IndexBloat]:
    """Estimated bloat of the btree indexes of at least ``min_pages`` pages (catalogue only, no index is read)."""
    async with db.get_client() as conn:
        try:
            await _prepare(conn, 30)
            rows = await _fetch(conn, INDEX_BLOAT_SQL, (min_pages, top))
        except psycopg.Error as err:
            raise _error(db, "index bloat estimate", err) from err
    return [
        IndexBloat(schema_name=r[0], table=r[1], index=r[2], bytes=r[3], expected_bytes=r[4], bloat_percent=float(r[5]))
        for r in rows
    ]


# ------------------------------------------------------------------------------------------- actions

Outcome = Literal["cancelled", "terminated", "gone", "still running", "failed"]


class BackendAction(BaseModel):
    pid: int
    action: Literal["cancel", "terminate"]
    outcome: Outcome
    seconds: float
    detail: str = ""


_SAME_BACKEND = "SELECT state, query_start FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"


async def _same(conn: psycopg.AsyncConnection, s: Session) -> tuple[Any, ...] | None:
    rows = await _fetch(conn, _SAME_BACKEND, (s.pid, s.backend_start))
    return rows[0] if rows else None


async def _wait_ended(conn: psycopg.AsyncConnection, s: Session, before: tuple[Any, ...], wait_s: float) -> bool:
    """Whether the planned query of ``s`` ended (the backend is gone, idle, or on another query) within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        now = await _same(conn, s)
        blocking = await _fetch(
            conn, "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (s.pid,)
        )
        if now is None or now[1] != before[1] or (now[0] not in ("active",) and not blocking[0][0]):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


@once_task
async def stop_backend(
    db: PostgresDatabase, session: Session, *, cancel_wait_s: float, terminate: bool
) -> BackendAction:
    """``pg_cancel_backend`` of the session, then, if its query has not ended within ``cancel_wait_s`` (an idle
    transaction holding a lock ignores a cancel) and ``terminate``, ``pg_terminate_backend``. Only the backend that
    was planned (same pid and ``backend_start``): one that is gone already is "gone", not an error."""
    started = time.monotonic()
    async with db.get_client() as conn:
        try:
            await _prepare(conn, 30)
            before = await _same(conn, session)
            if before is None:
                return BackendAction(pid=session.pid, action="cancel", outcome="gone", seconds=0.0)
            await conn.execute("SELECT pg_cancel_backend(%s)", (session.pid,))
            if await _wait_ended(conn, session, before, cancel_wait_s):
                took = round(time.monotonic() - started, 3)
                return BackendAction(pid=session.pid, action="cancel", outcome="cancelled", seconds=took)
            if not terminate:
                took = round(time.monotonic() - started, 3)
                return BackendAction(
                    pid=session.pid,
                    action="cancel",
                    outcome="still running",
                    seconds=took,
                    detail=f"the cancel did not end it within {cancel_wait_s}s; terminating is off",
                )
            if await _same(conn, session) is None:
                took = round(time.monotonic() - started, 3)
                return BackendAction(pid=session.pid, action="cancel", outcome="gone", seconds=took)
            await conn.execute("SELECT pg_terminate_backend(%s)", (session.pid,))
        except psycopg.Error as err:
            raise _error(db, f"stopping backend {session.pid}", err) from err
    took = round(time.monotonic() - started, 3)
    return BackendAction(
        pid=session.pid,
        action="terminate",
        outcome="terminated",
        seconds=took,
        detail=f"the cancel did not end it within {cancel_wait_s}s",
    )


class ReindexResult(BaseModel):
    index: str
    seconds: float
    bytes_before: int
    bytes_after: int


@once_task
async def reindex_concurrently(db: PostgresDatabase, bloat: IndexBloat, *, lock_timeout_s: float = 5) -> ReindexResult:
    """``REINDEX INDEX CONCURRENTLY`` of one index (never a table-wide or blocking REINDEX)."""
    started = time.monotonic()
    name = sql.Identifier(bloat.schema_name, bloat.index)
    async with db.get_client() as conn:
        try:
            await _prepare(conn, 3600)
            await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_s * 1000)}")))
            await conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(name))
            after = await _fetch(
                conn, "SELECT pg_relation_size(to_regclass(%s))", (f"{bloat.schema_name}.{bloat.index}",)
            )
        except psycopg.Error as err:
            raise PostgresError(
                f"REINDEX INDEX CONCURRENTLY {bloat.index} on {db.safe_address} failed: {_reason(err)}",
                hint=f"one that fails half-way leaves an invalid index {bloat.index}_ccnew: DROP INDEX CONCURRENTLY "
                "it before trying again (a lock timeout: try again when the table is quieter)",
            ) from err
    return ReindexResult(
        index=f"{bloat.schema_name}.{bloat.index}",
        seconds=round(time.monotonic() - started, 3),
        bytes_before=bloat.bytes,
        bytes_after=int(after[0][0] or 0),
    )


def protected(session: Session, application_names: list[str]) -> str | None:
    """Why db-performance must never touch ``session`` (replication, backup, maintenance, ours), or None."""
    if session.backend_type != "client backend":
        return f"backend type {session.backend_type}"
    if session.application_name == OWN_APPLICATION_NAME:
        return "our own session"
    for pattern in application_names:
        if fnmatchcase(session.application_name, pattern):
            return f"application_name {session.application_name!r} matches {pattern!r}"
    return None


# ------------------------------------------------------------------------------------------- judging and planning


def long_sessions(sessions: list[Session], limits: PostgresLimits) -> list[Session]:
    """Client sessions with an active query older than ``long_running_s``, or idle in a transaction for longer than
    ``idle_in_transaction_s`` (it keeps its locks and holds back VACUUM), oldest first; ours left out."""
    found = []
    for s in sessions:
        if s.backend_type != "client backend" or s.application_name == OWN_APPLICATION_NAME:
            continue
        if s.state == "active" and (s.query_age_s or 0) >= limits.long_running_s:
            found.append(s)
        elif (s.state or "").startswith("idle in transaction") and (s.state_age_s or 0) >= limits.idle_in_transaction_s:
            found.append(s)
    return sorted(found, key=lambda s: -(s.xact_age_s or s.query_age_s or 0))


def judge_postgres(
    connections: Connections,
    slow: SlowQueries,
    relations: Relations,
    sessions: list[Session],
    tree: list[LockNode],
    limits: PostgresLimits,
) -> list[Finding]:
    """Every check of db-diagnostics with its figure, its limit (from the policy) and a verdict."""
    found: list[Finding] = []

    def add(check: str, value: str, limit: str, ok: bool | None, detail: str = "") -> None:
        verdict: Verdict = "no-data" if ok is None else ("pass" if ok else "warn")
        found.append(Finding(check=check, value=value, limit=limit, verdict=verdict, detail=detail))

    add(
        "connections",
        f"{connections.total} of {connections.max_connections} ({connections.percent}%)",
        f"<= {limits.max_connections_percent}%",
        connections.percent <= limits.max_connections_percent,
        ", ".join(f"{state} {n}" for state, n in connections.by_state.items()),
    )
    if slow.installed and slow.queries:
        top = slow.queries[0]
        add(
            "slow queries",
            f"top: {top.total_ms} ms in {top.calls} calls ({top.mean_ms} ms each)",
            "read",
            True,
            f"{slow.detail}; {top.query[:120]}",
        )
    else:
        add("slow queries", "pg_stat_statements" if slow.installed else "not available", "installed", None, slow.detail)
    heap = relations.cache.heap_ratio
    add(
        "cache hit ratio",
        "-" if heap is None else f"{heap:.2%}",
        f">= {limits.min_cache_hit_ratio:.0%}",
        None if heap is None else heap >= limits.min_cache_hit_ratio,
        f"indexes {relations.cache.index_ratio}; {relations.cache.blocks_read} heap blocks read from disk",
    )
    unused = relations.unused_indexes
    add(
        "never-used indexes",
        f"{len(unused)} ({sum(u.bytes for u in unused)} B)",
        "0",
        not unused,
        ", ".join(f"{u.schema_name}.{u.index}" for u in unused[:10]),
    )
    add(
        "sequential scans on large tables",
        str(len(relations.seq_scans)),
        "0",
        not relations.seq_scans,
        ", ".join(f"{t.schema_name}.{t.table} ({t.seq_scan} scans)" for t in relations.seq_scans[:10]),
    )
    blocked = sum(n.waiters for n in tree)
    add(
        "lock waits",
        f"{blocked} waiting on {len(tree)} blocking session(s)",
        "0",
        not tree,
        "; ".join(f"root {n.session.pid} ({n.session.application_name or '-'}) holds up {n.waiters}" for n in tree),
    )
    active = [s for s in long_sessions(sessions, limits) if s.state == "active"]
    idle = [s for s in long_sessions(sessions, limits) if s.state != "active"]
    add(
        "long-running queries",
        str(len(active)),
        f"none older than {limits.long_running_s:g}s",
        not active,
        ", ".join(f"{s.pid} ({s.query_age_s}s)" for s in active[:10]),
    )
    add(
        "idle in transaction",
        str(len(idle)),
        f"none idle longer than {limits.idle_in_transaction_s:g}s",
        not idle,
        ", ".join(f"{s.pid} ({s.state_age_s}s)" for s in idle[:10]),
    )
    return found


class Target(BaseModel):
    """A session db-performance plans to stop, and why; ``protected`` says why it must not be touched."""

    session: Session
    kind: Literal["blocking", "long-running"]
    reason: str
    waiters: list[int] = Field(default_factory=list)
    protected: str | None = None


def plan_targets(
    sessions: list[Session],
    tree: list[LockNode],
    *,
    long_query_s: float,
    min_blocked_s: float,
    protected_applications: list[str],
) -> list[Target]:
    """The roots of blocking trees whose longest waiter has waited ``min_blocked_s``, then the active queries older
    than ``long_query_s`` that wait on nobody. A waiter is never a target (stopping its root frees it)."""
    targets: list[Target] = []
    for root in tree:
        waiters = [n for c in root.children for n in _walk(c)]
        longest = max((w.query_age_s or 0 for w in waiters), default=0.0)
        if longest < min_blocked_s:
            continue
        targets.append(
            Target(
                session=root.session,
                kind="blocking",
                reason=f"blocks {len(waiters)} session(s) ({', '.join(str(w.pid) for w in waiters)}), "
                f"the longest waiting {longest:.0f}s",
                waiters=[w.pid for w in waiters],
                protected=protected(root.session, protected_applications),
            )
        )
    planned = {t.session.pid for t in targets}
    long = [
        s
        for s in sessions
        if s.state == "active"
        and s.backend_type == "client backend"
        and (s.query_age_s or 0) >= long_query_s
        and not s.blocked_by
        and s.pid not in planned
    ]
    for s in sorted(long, key=lambda s: -(s.query_age_s or 0)):
        targets.append(
            Target(
                session=s,
                kind="long-running",
                reason=f"active for {s.query_age_s:.0f}s (over {long_query_s:g}s)",
                protected=protected(s, protected_applications),
            )
        )
    return targets


def _walk(node: LockNode) -> list[Session]:
    return [node.session, *[s for c in node.children for s in _walk(c)]]
