"""Tasks that stream one system into a backup prefix: PostgreSQL (pg_dump in an exported snapshot, with exact
row counts from that same snapshot), its schema alone, and the Redis RDB. Each returns a :class:`PartResult`.
Re-running one overwrites the same keys, so they are safe to retry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import psycopg
from prefect.context import TaskRunContext
from psycopg import sql

from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from kernel.errors import PostgresError
from kernel.retry import idempotent_task
from tasks import pgtools
from tasks.backup.manifest import BackupCancelledError, PartResult, PostgresInfo, RedisInfo
from tasks.backup.pipeline import UploadTarget, compress_and_upload
from tasks.redis import BgsaveResult, RedisServerInfo, fetch_rdb, last_save

#: The tables pg_dump dumps the data of: ordinary tables (partitions included, partitioned parents excluded
#: so no row is counted twice), not temporary, not owned by an extension.
TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def _attempt() -> int:
    ctx = TaskRunContext.get()
    return int(ctx.task_run.run_count) if ctx and ctx.task_run.run_count else 1


def _pg_error(db: PostgresDatabase, action: str, err: psycopg.Error) -> PostgresError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return PostgresError(
        f"{action} on {db.safe_address} failed: {reason}", transient=isinstance(err, psycopg.OperationalError)
    )


async def count_rows(conn: psycopg.AsyncConnection, tables: list[tuple[str, str]]) -> dict[str, int]:
    """Exact ``count(*)`` of each table (``ONLY``: children counted on their own), keyed ``schema.table``."""
    counts = {}
    for schema, name in tables:
        query = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, name))
        row = await (await conn.execute(query)).fetchone()
        counts[f"{schema}.{name}"] = int(row[0]) if row else 0
    return counts


@idempotent_task(name="dump-postgres", retries=1, retry_delay_seconds=[5])
async def dump_postgres(
    db: PostgresDatabase,
    target: UploadTarget,
    prefix: str,
    *,
    with_row_counts: bool = True,
    timeout_s: float = 6 * 3600,
) -> PartResult:
    """``pg_dump -Fc -Z0`` of the block's database streamed to ``<prefix>postgres/<db>.dump.zst``.

    A REPEATABLE READ transaction exports its snapshot; pg_dump dumps that snapshot while the same
    transaction counts every table's rows, so the manifest's counts are exactly what the dump holds.
    """
    attempts = _attempt()
    started_at, started = datetime.now(UTC), time.perf_counter()
    pg_dump_version = await asyncio.to_thread(pgtools.tool_version, "pg_dump")
    key = f"{prefix}postgres/{db.dbname}.dump.zst"
    async with db.get_client(autocommit=False) as conn:
        try:
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await conn.set_read_only(True)
            row = await (
                await conn.execute(
                    "SELECT pg_export_snapshot(), current_setting('server_version'),"
                    " pg_database_size(current_database())"
                )
            ).fetchone()
            tables = [(str(s), str(t)) for s, t in await (await conn.execute(TABLES_SQL)).fetchall()]
        except psycopg.Error as err:
            raise _pg_error(db, "exporting a snapshot", err) from err
        assert row is not None
        snapshot, server_version, db_size = str(row[0]), str(row[1]), int(row[2])
        target.progress.expect("postgres", db_size)
        stop = threading.Event()

        def stopped() -> bool:
            return stop.is_set() or target.cancel.is_set()

        dump = asyncio.ensure_future(
            asyncio.to_thread(
                compress_and_upload,
                target,
                key,
                pgtools.dump_stream(db, snapshot=snapshot, timeout_s=timeout_s, should_stop=stopped),
                part="postgres",
                format="pg_dump-custom",
                stop=stop,
            )
        )
        counts: dict[str, int] = {}
        count_error: psycopg.Error | None = None
        try:
            if with_row_counts:
                try:
                    counts = await count_rows(conn, tables)
                except psycopg.Error as err:
                    count_error = err
                    stop.set()
            try:
                obj = await dump
            except BackupCancelledError:
                if count_error is not None:
                    raise _pg_error(db, "counting rows", count_error) from count_error
                raise
        except BaseException:
            stop.set()  # cancelled flow or failure: the dump thread stops at its next chunk
            await asyncio.gather(dump, return_exceptions=True)
            raise
        if count_error is not None:
            raise _pg_error(db, "counting rows", count_error) from count_error
    target.progress.finish("postgres")
    info = PostgresInfo(
        address=db.safe_address,
        database=db.dbname,
        server_version=server_version,
        pg_dump_version=pg_dump_version,
        database_size_bytes=db_size,
        snapshot=snapshot,
        row_counts=counts,
    )
    return PartResult(
        name="postgres",
        objects=[obj],
        info=info.model_dump(mode="json"),
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
        attempts=attempts,
    )


@idempotent_task(name="dump-postgres-schema", retries=1, retry_delay_seconds=[5])
async def dump_postgres_schema(
    db: PostgresDatabase, target: UploadTarget, prefix: str, *, timeout_s: float = 3600
) -> PartResult:
    """The seed's ``pg_dump -s``: the schema as plain SQL, to ``<prefix>postgres/<db>.schema.sql.zst``."""
    started_at, started = datetime.now(UTC), time.perf_counter()
    version = await asyncio.to_thread(pgtools.tool_version, "pg_dump")
    key = f"{prefix}postgres/{db.dbname}.schema.sql.zst"
    target.progress.expect("schema", 1)
    obj = await asyncio.to_thread(
        compress_and_upload,
        target,
        key,
        pgtools.dump_stream(db, schema_only=True, timeout_s=timeout_s, should_stop=target.cancel.is_set),
        part="schema",
        format="pg_dump-schema-sql",
    )
    target.progress.finish("schema")
    return PartResult(
        name="schema",
        objects=[obj],
        info={"address": db.safe_address, "database": db.dbname, "pg_dump_version": version},
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
        attempts=_attempt(),
    )


@idempotent_task(name="dump-redis", retries=1, retry_delay_seconds=[5])
async def dump_redis(
    cache: RedisDatabase,
    target: UploadTarget,
    prefix: str,
    server: RedisServerInfo,
    saved: BgsaveResult | None = None,
    *,
    timeout_s: float = 3600,
) -> PartResult:
    """The server's RDB, fetched over the replication protocol (``redis-cli --rdb``), to
    ``<prefix>redis/dump.rdb.zst``. ``server`` comes from :func:`tasks.redis.redis_server_info` just before.

    One snapshot, not two: the runbook's BGSAVE-then-copy needs the file on the server's disk, but a SYNC makes
    the server fork and save a fresh RDB for us anyway (to its disk, moving LASTSAVE, unless it syncs diskless)
    and send exactly that. A separate :func:`tasks.redis.bgsave` first (``saved``) doubled the part's time
    (benchmarks/backup.py: 17 s BGSAVE + 31 s SYNC for 1 GB against 17 s for ``redis-cli --rdb``)."""
    started_at, started = datetime.now(UTC), time.perf_counter()
    before = saved.lastsave if saved is not None else await last_save(cache)
    key = f"{prefix}redis/dump.rdb.zst"
    target.progress.expect("redis", server.used_memory_bytes)
    major = int(server.version.split(".")[0]) if server.version.split(".")[0].isdigit() else 0
    obj = await asyncio.to_thread(
        compress_and_upload,
        target,
        key,
        fetch_rdb(cache, rdb_only=major >= 7, timeout_s=timeout_s),
        part="redis",
        format="redis-rdb",
    )
    target.progress.finish("redis")
    after = await last_save(cache)
    info = RedisInfo(
        address=server.address,
        db=server.db,
        redis_version=server.version,
        key_count=server.key_count,
        keyspace=server.keyspace,
        bgsave_duration_s=saved.duration_s if saved is not None else None,
        lastsave=after,
        snapshot=(
            "bgsave, then sync"
            if saved is not None
            else ("sync (saved to the server's disk)" if after > before else "sync (diskless)")
        ),
    )
    return PartResult(
        name="redis",
        objects=[obj],
        info=info.model_dump(mode="json"),
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
        attempts=_attempt(),
    )
