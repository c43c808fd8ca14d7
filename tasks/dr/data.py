"""The data of a recovery: the Redis RDB into the recovery Redis (DUMP/RESTORE from a throwaway server that loaded
it, the recovery server never restarted), its key counts, and a drill's scratch Redis database emptied again.
PostgreSQL goes through the restore flow's tasks (:mod:`tasks.backup.restore`: create, ``pg_restore -j``, count)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis.exceptions
from pydantic import SecretStr

from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from kernel.errors import PostgresError, RedisError
from kernel.retry import idempotent_task, once_task, read_task
from tasks.redis import copy_rdb_keys


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


@once_task
async def restore_redis(rdb_path: Path, target: RedisDatabase, *, source_db: int, replace: bool = False) -> int:
    """The keys of database ``source_db`` of the RDB into ``target`` (TTLs kept), without restarting the target
    server; an existing key is an error unless ``replace``. Returns how many were restored. Not retried: a half
    restore is looked at, then flushed and done again."""
    return await asyncio.to_thread(copy_rdb_keys, rdb_path, target, source_db=source_db, replace=replace)


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
