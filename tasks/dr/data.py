"""The data of a recovery: the Redis RDB into the recovery Redis (DUMP/RESTORE from a throwaway server that loaded
it, the recovery server never restarted), its key counts, and a drill's scratch Redis database emptied again.
PostgreSQL goes through the restore flow's tasks (:mod:`tasks.backup.restore`: create, ``pg_restore -j``, count)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


class RedisRestore(BaseModel):
    restored: int = Field(description="keys written to the target")
    expired: int = Field(description="keys of the RDB whose TTL passed since the backup: not restored")

    @property
    def accounted(self) -> int:
        """What the manifest's key count is compared with."""
        return self.restored + self.expired


def copy_database(rdb_path: Path, target: RedisDatabase, source_db: int, replace: bool) -> RedisRestore:
    """DUMP/RESTORE of database ``source_db`` of the RDB into ``target`` (TTLs kept). The RDB is loaded by a
    throwaway server that keeps keys whose TTL passed since the backup (a replica), so they are counted as expired
    rather than silently missing. Blocking."""
    restored = expired = 0
    with rdb_server(rdb_path, keep_expired=True) as url:
        source = sync_redis.Redis.from_url(url, db=source_db)
        sink = sync_redis.Redis.from_url(target.url.get_secret_value(), socket_timeout=target.socket_timeout_s)
        try:
            batch: list[bytes] = []
            for key in [*source.scan_iter(count=1000), None]:
                if key is not None:
                    batch.append(key)
                if batch and (key is None or len(batch) >= 500):
                    read = source.pipeline(transaction=False)
                    for k in batch:
                        read.pttl(k)
                        read.dump(k)
                    values = read.execute()
                    write = sink.pipeline(transaction=False)
                    for k, ttl, payload in zip(batch, values[::2], values[1::2], strict=True):
                        if payload is None or ttl == -2:  # its TTL passed since the backup
                            expired += 1
                            continue
                        write.restore(k, max(int(ttl), 0), payload, replace=replace)
                        restored += 1
                    write.execute()
                    batch = []
        except redis.exceptions.RedisError as err:
            raise RedisError(f"RESTORE into {target.safe_address} failed: {err}", transient=False) from err
        finally:
            source.close()
            sink.close()
    return RedisRestore(restored=restored, expired=expired)


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
