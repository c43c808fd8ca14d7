"""The data of a recovery: the Redis RDB into the recovery Redis (MIGRATE from a throwaway server that loaded it,
the recovery server never restarted), its key counts, and a drill's scratch Redis database emptied again.
PostgreSQL goes through the restore flow's tasks (:mod:`tasks.backup.restore`: create, ``pg_restore -j``, count)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import redis as sync_redis
import redis.exceptions
from pydantic import BaseModel, Field, SecretStr

from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from kernel.errors import PostgresError, RedisError
from kernel.retry import idempotent_task, once_task, read_task
from tasks.redis import rdb_server


def redis_db_of(cache: RedisDatabase) -> int:
    path = urlsplit(cache.url.get_secret_value()).path.strip("/")
    return int(path) if path.isdigit() else 0


def with_redis_db(cache: RedisDatabase, db: int) -> RedisDatabase:
    """The same server, database ``db``."""
    parts = urlsplit(cache.url.get_secret_value())
    url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
    return cache.model_copy(update={"url": SecretStr(url)})


def same_redis(a: RedisDatabase, b: RedisDatabase) -> bool:
    return a.safe_address == b.safe_address


def same_database(a: PostgresDatabase, b: PostgresDatabase, dbname: str | None = None) -> bool:
    """Whether ``b`` (database ``dbname``, default its own) is ``a``'s database on ``a``'s server."""
    return a.safe_address.rsplit("/", 1)[0] == b.safe_address.rsplit("/", 1)[0] and a.dbname == (dbname or b.dbname)


@read_task
async def count_redis_keys(cache: RedisDatabase) -> int:
    """``DBSIZE`` of the block's database."""
    try:
        async with cache.get_client() as client:
            return int(await client.dbsize())
    except redis.exceptions.RedisError as err:
        raise RedisError(
            f"DBSIZE on {cache.safe_address} failed: {err}", transient=isinstance(err, redis.exceptions.ConnectionError)
        ) from err


#: how far ahead the copy records when restored keys expire (the verification follows within minutes)
EXPIRY_HORIZON_S = 3600
#: keys per MIGRATE (and per PEXPIRETIME script call) of the copy
MIGRATE_BATCH = 2000
_DEADLINES = "local r = {} for i, k in ipairs(KEYS) do r[i] = redis.call('PEXPIRETIME', k) end return r"


class RedisRestore(BaseModel):
    in_backup: int = Field(default=0, description="keys of the RDB's database, expired ones included")
    restored: int = Field(description="keys written to the target")
    expired: int = Field(description="keys of the RDB whose TTL passed since the backup: not restored")
    expiring: dict[int, int] = Field(
        default_factory=dict,
        description="restored keys whose TTL ends within the next hour, by the epoch second it ends",
    )

    @property
    def accounted(self) -> int:
        """What the manifest's key count is compared with."""
        return self.restored + self.expired

    def expired_by(self, epoch_s: float) -> int:
        """Restored keys whose TTL may have passed by ``epoch_s`` (the target may not have reclaimed them yet)."""
        return sum(n for second, n in self.expiring.items() if second <= epoch_s + 1)


def _note_deadlines(expiring: dict[int, int], deadlines: list[int], now_s: float) -> None:
    for deadline in deadlines:
        if deadline > 0 and deadline / 1000 <= now_s + EXPIRY_HORIZON_S:
            second = int(deadline // 1000)
            expiring[second] = expiring.get(second, 0) + 1


def _migrate_args(target: RedisDatabase, replace: bool) -> tuple[list[str | int], list[str]]:
    """MIGRATE's destination and options for ``target`` (its password only in the command, never a log)."""
    parts = urlsplit(target.url.get_secret_value())
    head: list[str | int] = [parts.hostname or "127.0.0.1", parts.port or 6379, "", redis_db_of(target)]
    head.append(int(target.socket_timeout_s * 1000))
    options = ["COPY", *(["REPLACE"] if replace else [])]
    if parts.password and parts.username and parts.username != "default":
        options += ["AUTH2", unquote(parts.username), unquote(parts.password)]
    elif parts.password:
        options += ["AUTH", unquote(parts.password)]
    return head, options


def copy_database(rdb_path: Path, target: RedisDatabase, source_db: int, replace: bool) -> RedisRestore:
    """The keys of database ``source_db`` of the RDB into ``target``, TTLs kept. Blocking.

    The RDB is loaded by a throwaway server run as a replica of a master that is never there: a master would drop
    the keys whose TTL passed since the backup while loading, a replica keeps them, so its DBSIZE is what the RDB
    holds (the manifest's count). Its SCAN leaves those expired keys out; every other key goes to the target by
    ``MIGRATE ... COPY KEYS`` in batches of :data:`MIGRATE_BATCH` (the servers serialize and load the values; this
    process only names the keys), and the batch's PEXPIRETIME are noted so a verification minutes later knows which
    restored keys may have expired since. A ``rediss://`` target (MIGRATE speaks plain TCP) is copied by
    DUMP/RESTORE through this process instead."""
    restored = 0
    expiring: dict[int, int] = {}
    plain = urlsplit(target.url.get_secret_value()).scheme != "rediss"
    with rdb_server(rdb_path, keep_expired=True) as url:
        source = sync_redis.Redis.from_url(url, db=source_db, socket_timeout=max(60.0, target.socket_timeout_s * 4))
        sink = None if plain else sync_redis.Redis.from_url(target.url.get_secret_value())
        try:
            source.config_set("replica-read-only", "no")  # MIGRATE is a write command, even with COPY
            in_backup = int(source.dbsize())
            deadlines = source.register_script(_DEADLINES)
            head, options = _migrate_args(target, replace)
            cursor = 0
            while True:
                cursor, keys = source.scan(cursor, count=MIGRATE_BATCH)
                if keys:
                    if sink is None:  # one round trip: the batch's deadlines, then the batch moved
                        batch = source.pipeline(transaction=False)
                        deadlines(keys=keys, client=batch)
                        batch.execute_command("MIGRATE", *head, *options, "KEYS", *keys)
                        ends = [int(d) for d in batch.execute()[0]]
                    else:
                        ends = [int(d) for d in deadlines(keys=keys)]
                        _dump_restore(source, sink, keys, replace)
                    _note_deadlines(expiring, ends, time.time())
                    restored += len(keys) - ends.count(-2)  # -2: its TTL passed since the SCAN
                if cursor == 0:
                    break
        except redis.exceptions.RedisError as err:
            raise RedisError(
                f"copying the keys into {target.safe_address} failed: {err}",
                hint="a BUSYKEY error: the target holds a key of the backup; flush it or restore with overwrite",
                transient=False,
            ) from err
        finally:
            source.close()
            if sink is not None:
                sink.close()
    # a key alive at SCAN that expired before its MIGRATE is counted as restored; expiring holds it as passed
    return RedisRestore(in_backup=in_backup, restored=restored, expired=in_backup - restored, expiring=expiring)


def _dump_restore(source: sync_redis.Redis, sink: sync_redis.Redis, keys: list[Any], replace: bool) -> None:
    read = source.pipeline(transaction=False)
    for k in keys:
        read.pexpiretime(k)
        read.dump(k)
    values = read.execute()
    write = sink.pipeline(transaction=False)
    for k, deadline, payload in zip(keys, values[::2], values[1::2], strict=True):
        if payload is not None:
            write.restore(k, max(int(deadline), 0), payload, replace=replace, absttl=int(deadline) > 0)
    write.execute()


@once_task
async def restore_redis(
    rdb_path: Path, target: RedisDatabase, *, source_db: int, replace: bool = False
) -> RedisRestore:
    """The keys of database ``source_db`` of the RDB into ``target`` (TTLs kept), without restarting the target
    server; an existing key is an error unless ``replace``. Not retried: a half restore is looked at, then flushed
    and done again."""
    return await asyncio.to_thread(copy_database, rdb_path, target, source_db, replace)


@idempotent_task
async def flush_redis_database(cache: RedisDatabase) -> int:
    """``FLUSHDB`` of the block's database (a drill's scratch database, never a live one); returns the keys it held."""
    try:
        async with cache.get_client() as client:
            keys = int(await client.dbsize())
            await client.flushdb()
    except redis.exceptions.RedisError as err:
        raise RedisError(
            f"FLUSHDB on {cache.safe_address} failed: {err}",
            transient=isinstance(err, redis.exceptions.ConnectionError),
        ) from err
    return keys


@read_task
async def database_exists(db: PostgresDatabase, name: str) -> bool:
    """Whether database ``name`` exists on the block's server."""
    try:
        async with db.get_client() as conn:
            row = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
    except psycopg.Error as err:
        raise PostgresError(
            f"reading the databases of {db.safe_address} failed: {err}",
            transient=isinstance(err, psycopg.OperationalError),
        ) from err
    return row is not None


@read_task
async def list_databases(db: PostgresDatabase, prefix: str) -> list[str]:
    """The databases of the block's server whose name starts with ``prefix``."""
    try:
        async with db.get_client() as conn:
            rows = await (await conn.execute("SELECT datname FROM pg_database")).fetchall()
    except psycopg.Error as err:
        raise PostgresError(
            f"reading the databases of {db.safe_address} failed: {err}",
            transient=isinstance(err, psycopg.OperationalError),
        ) from err
    return sorted(str(r[0]) for r in rows if str(r[0]).startswith(prefix))
