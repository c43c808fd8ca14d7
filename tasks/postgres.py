"""Tasks on PostgreSQL (psycopg 3)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres import PostgresDatabase
from kernel.errors import PostgresError
from kernel.retry import idempotent_task, read_task


class PostgresHealth(BaseModel):
    address: str
    server_version: str
    database_size_bytes: int
    connections_by_state: dict[str, int]


@read_task
async def check_postgres(db: PostgresDatabase) -> PostgresHealth:
    """``SELECT NOW(), COUNT(*) FROM pg_stat_activity`` and connections by state, as the runbook does."""
    async with db.get_client() as conn:
        try:
            version = await (await conn.execute("SELECT current_setting('server_version')")).fetchone()
            size = await (await conn.execute("SELECT pg_database_size(current_database())")).fetchone()
            states = await (
                await conn.execute("SELECT coalesce(state, 'background'), count(*) FROM pg_stat_activity GROUP BY 1")
            ).fetchall()
        except psycopg.Error as err:
            raise PostgresError(f"health query on {db.safe_address} failed: {err}") from err
    assert version is not None and size is not None
    return PostgresHealth(
        address=db.safe_address,
        server_version=version[0],
        database_size_bytes=size[0],
        connections_by_state={state: count for state, count in states},
    )


# ------------------------------------------------------------------------------------ weekly maintenance
#: Every maintenance statement waits at most this long for a lock: a statement queued behind another one's lock
#: would make the application's writes queue behind it in turn.
MAINTENANCE_LOCK_TIMEOUT = "2s"

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"

LARGEST_RELATIONS_SQL = f"""
SELECT n.nspname, c.relname, c.relkind::text, pg_total_relation_size(c.oid), pg_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = ANY(%s) AND {_USER_SCHEMAS}
ORDER BY 4 DESC, 1, 2
LIMIT %s
"""

#: The catalogue-based table bloat estimate (as check_postgres and the pgexperts query do it): the pages a table
#: would need for ``reltuples`` rows of the width ``pg_stats`` measured, against the pages it has. Needs a fresh
#: ANALYZE; reads no table (unlike pgstattuple).
TABLE_BLOAT_SQL = f"""
WITH widths AS (
    SELECT s.schemaname, s.tablename, sum((1 - s.null_frac) * s.avg_width) AS datawidth,
           count(*) FILTER (WHERE s.null_frac > 0) > 0 AS has_nulls, count(*) AS ncols
    FROM pg_stats s
    GROUP BY 1, 2
), tables AS (
    SELECT n.nspname, c.relname, c.reltuples::numeric AS reltuples, c.relpages::numeric AS relpages,
           w.datawidth::numeric AS datawidth, w.has_nulls, w.ncols,
           current_setting('block_size')::numeric AS bs,
           coalesce((SELECT substring(o FROM 'fillfactor=([0-9]+)')::int
                     FROM unnest(c.reloptions) o WHERE o LIKE 'fillfactor=%%'), 100) AS fillfactor
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN widths w ON w.schemaname = n.nspname AND w.tablename = c.relname
    WHERE c.relkind = 'r' AND {_USER_SCHEMAS}
), estimates AS (
    SELECT *, ceil(reltuples * (
               24 + CASE WHEN has_nulls THEN ceil(ncols / 8.0) ELSE 0 END  -- heap tuple header, null bitmap
               + 8 * ceil(datawidth / 8.0)                                 -- data, MAXALIGNed
               + 4)                                                        -- line pointer
               / ((bs - 24) * fillfactor / 100.0)) AS expected_pages
    FROM tables
)
SELECT nspname, relname, relpages::bigint, expected_pages::bigint,
       (greatest(relpages - expected_pages, 0) * bs)::bigint AS bloat_bytes,
       CASE WHEN relpages > 0 THEN round(100 * greatest(relpages - expected_pages, 0) / relpages, 1) ELSE 0 END
FROM estimates
ORDER BY 5 DESC, 1, 2
LIMIT %s
"""

XID_AGE_SQL = """
SELECT datname, age(datfrozenxid)::bigint, current_setting('autovacuum_freeze_max_age')::bigint
FROM pg_database WHERE datallowconn ORDER BY 2 DESC
"""

OLDEST_TABLES_XID_SQL = f"""
SELECT n.nspname, c.relname, age(c.relfrozenxid)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND {_USER_SCHEMAS}
ORDER BY 3 DESC, 1, 2
LIMIT 5
"""

#: Never scanned since the statistics were reset, and not backing a constraint (unique, primary key, exclusion).
UNUSED_INDEXES_SQL = """
SELECT s.schemaname, s.relname, s.indexrelname, pg_relation_size(s.indexrelid)::bigint, s.idx_scan
FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = s.indexrelid)
ORDER BY 4 DESC, 1, 3
"""

#: Same table, same columns (and expressions, predicate, operator classes, collations): one of them is redundant.
DUPLICATE_INDEXES_SQL = f"""
SELECT n.nspname, c.relname, array_agg(x.relname::text ORDER BY x.relname), sum(pg_relation_size(i.indexrelid))::bigint
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class x ON x.oid = i.indexrelid
WHERE {_USER_SCHEMAS}
GROUP BY n.nspname, c.relname, i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text,
         coalesce(pg_get_expr(i.indexprs, i.indrelid), ''), coalesce(pg_get_expr(i.indpred, i.indrelid), '')
HAVING count(*) > 1
ORDER BY 4 DESC
"""

#: The seed's query, on the application's schemas (the system catalogues' statistics are noise here).
PG_STATS_SQL = """
SELECT schemaname, tablename, attname, n_distinct, correlation
FROM pg_stats
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY n_distinct DESC, 1, 2, 3
LIMIT %s
"""


class RelationSize(BaseModel):
    schema_name: str
    name: str
    kind: str = Field(description="table, index, materialized view")
    total_bytes: int = Field(description="with indexes and TOAST, for a table")
    bytes: int


class TableBloat(BaseModel):
    schema_name: str
    table: str
    pages: int
    expected_pages: int
    bloat_bytes: int
    bloat_percent: float


class XidAge(BaseModel):
    database: str
    age: int
    freeze_max_age: int = Field(description="autovacuum_freeze_max_age")

    @property
    def percent(self) -> float:
        return round(100 * self.age / self.freeze_max_age, 1) if self.freeze_max_age else 0.0


class UnusedIndex(BaseModel):
    schema_name: str
    table: str
    index: str
    bytes: int
    scans: int


class DuplicateIndexes(BaseModel):
    schema_name: str
    table: str
    indexes: list[str]
    bytes: int


class ColumnStats(BaseModel):
    schema_name: str
    table: str
    column: str
    n_distinct: float | None
    correlation: float | None


class DatabaseInspection(BaseModel):
    """What the weekly maintenance reads of a database, from the catalogue only (no table is scanned)."""

    address: str
    database: str
    size_bytes: int
    largest_tables: list[RelationSize]
    largest_indexes: list[RelationSize]
    bloat: list[TableBloat]
    xid: list[XidAge]
    oldest_tables_xid: dict[str, int] = Field(description="schema.table → age(relfrozenxid)")
    unused_indexes: list[UnusedIndex]
    duplicate_indexes: list[DuplicateIndexes]
    column_stats: list[ColumnStats] = Field(description="the seed's pg_stats query")

    @property
    def worst_xid(self) -> XidAge | None:
        return max(self.xid, key=lambda x: x.percent, default=None)

    @property
    def bloat_bytes(self) -> int:
        return sum(b.bloat_bytes for b in self.bloat)


class AnalyzeResult(BaseModel):
    address: str
    database: str
    duration_s: float


async def _fetch(conn: psycopg.AsyncConnection, query: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    return list(await (await conn.execute(query, args or None)).fetchall())


@idempotent_task
async def analyze_database(
    db: PostgresDatabase, *, lock_timeout: str = MAINTENANCE_LOCK_TIMEOUT, cost_delay_ms: float = 2.0
) -> AnalyzeResult:
    """The seed's ``ANALYZE``: SHARE UPDATE EXCLUSIVE locks, which never block reads or writes; with a
    ``lock_timeout`` so that it never waits behind someone else's lock (and the writes behind it), and
    ``vacuum_cost_delay`` (``cost_delay_ms``, autovacuum's 2 ms) so that its reads yield to the application's."""
    started = time.perf_counter()
    async with db.get_client() as conn:
        try:
            await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout)))
            # cost-based delay, as autovacuum throttles itself: ANALYZE's reads yield to the application's I/O
            await conn.execute(sql.SQL("SET vacuum_cost_delay = {}").format(sql.Literal(f"{cost_delay_ms}ms")))
            await conn.execute("ANALYZE")
        except psycopg.Error as err:
            raise PostgresError(
                f"ANALYZE on {db.safe_address} failed: {err}",
                hint="a lock timeout means another session held a table lock: run it again later",
                transient=isinstance(err, psycopg.errors.LockNotAvailable | psycopg.OperationalError),
            ) from err
    duration = round(time.perf_counter() - started, 3)
    return AnalyzeResult(address=db.safe_address, database=db.dbname, duration_s=duration)


@read_task
async def inspect_database(
    db: PostgresDatabase, *, top: int = 10, lock_timeout: str = MAINTENANCE_LOCK_TIMEOUT
) -> DatabaseInspection:
    """Size, the ``top`` largest tables and indexes, estimated bloat, transaction-ID age against
    ``autovacuum_freeze_max_age``, unused and duplicate indexes, and the seed's ``pg_stats`` query."""
    async with db.get_client() as conn:
        try:
            await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout)))
            await conn.execute("SET statement_timeout = '120s'")
            size = await _fetch(conn, "SELECT pg_database_size(current_database())")
            tables = await _fetch(conn, LARGEST_RELATIONS_SQL, (["r", "m", "p"], top))
            indexes = await _fetch(conn, LARGEST_RELATIONS_SQL, (["i"], top))
            bloat = await _fetch(conn, TABLE_BLOAT_SQL, (top,))
            xid = await _fetch(conn, XID_AGE_SQL)
            oldest = await _fetch(conn, OLDEST_TABLES_XID_SQL)
            unused = await _fetch(conn, UNUSED_INDEXES_SQL)
            duplicates = await _fetch(conn, DUPLICATE_INDEXES_SQL)
            stats = await _fetch(conn, PG_STATS_SQL, (top,))
        except psycopg.Error as err:
            raise PostgresError(
                f"maintenance queries on {db.safe_address} failed: {err}",
                transient=isinstance(err, psycopg.OperationalError),
            ) from err
    kinds = {"r": "table", "p": "partitioned table", "m": "materialized view", "i": "index"}

    def relation(row: tuple[Any, ...]) -> RelationSize:
        return RelationSize(
            schema_name=row[0], name=row[1], kind=kinds.get(row[2], row[2]), total_bytes=row[3], bytes=row[4]
        )

    return DatabaseInspection(
        address=db.safe_address,
        database=db.dbname,
        size_bytes=int(size[0][0]),
        largest_tables=[relation(r) for r in tables],
        largest_indexes=[relation(r) for r in indexes],
        bloat=[
            TableBloat(
                schema_name=r[0],
                table=r[1],
                pages=r[2],
                expected_pages=r[3],
                bloat_bytes=r[4],
                bloat_percent=float(r[5]),
            )
            for r in bloat
        ],
        xid=[XidAge(database=r[0], age=r[1], freeze_max_age=r[2]) for r in xid],
        oldest_tables_xid={f"{r[0]}.{r[1]}": r[2] for r in oldest},
        unused_indexes=[UnusedIndex(schema_name=r[0], table=r[1], index=r[2], bytes=r[3], scans=r[4]) for r in unused],
        duplicate_indexes=[
            DuplicateIndexes(schema_name=r[0], table=r[1], indexes=list(r[2]), bytes=r[3]) for r in duplicates
        ],
        column_stats=[
            ColumnStats(
                schema_name=r[0],
                table=r[1],
                column=r[2],
                n_distinct=None if r[3] is None else float(r[3]),
                correlation=None if r[4] is None else float(r[4]),
            )
            for r in stats
        ],
    )
