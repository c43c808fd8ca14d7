"""tasks/redis.py: the RDB over the replication protocol (SYNC, diskless) and BGSAVE, against the sandbox's Redis
and throwaway servers."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import redis

from blocks.environment import RunbookEnvironment
from blocks.redis import RedisDatabase
from sandbox.manager import Sandbox
from tasks.redis import BgsaveTimeoutError, bgsave, fetch_rdb, rdb_keyspace, rdb_server
from tests.conftest import TEST_ENVIRONMENT


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


# ----------------------------------------------------------------------------------------------------------
# Redis RDB over the replication protocol


def test_fetch_rdb_matches_redis_cli_and_loads(env: RunbookEnvironment, tmp_path: Path) -> None:
    ours = tmp_path / "ours" / "dump.rdb"
    ours.parent.mkdir()
    with open(ours, "wb") as out:
        for chunk in fetch_rdb(env.redis):
            out.write(chunk)
    assert ours.read_bytes()[:5] == b"REDIS"
    client = redis.Redis.from_url(env.redis.url.get_secret_value())
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    sessions = {k for k in client.scan_iter(match="session:*", count=1000)}
    assert sessions
    counts = rdb_keyspace(ours)
    assert counts.get(db, 0) >= len(sessions)
    # the legacy SYNC path (no REPLCONF rdb-only) gives a loadable RDB too
    legacy = tmp_path / "legacy" / "dump.rdb"
    legacy.parent.mkdir()
    legacy.write_bytes(b"".join(fetch_rdb(env.redis, rdb_only=False)))
    assert rdb_keyspace(legacy).get(db, 0) >= len(sessions)


def test_fetch_rdb_diskless_and_bgsave_timeout(tmp_path: Path) -> None:
    """On a throwaway server: the diskless ($EOF:<mark>) transfer, and a BGSAVE too slow for its timeout."""
    with rdb_server(tmp_path / "none.rdb") as url:
        client = redis.Redis.from_url(url)
        client.mset({f"key:{i}": "x" * 100 for i in range(300)})
        client.config_set("repl-diskless-sync", "yes")
        client.config_set("repl-diskless-sync-delay", "0")
        rdb = tmp_path / "diskless" / "dump.rdb"
        rdb.parent.mkdir()
        rdb.write_bytes(b"".join(fetch_rdb(RedisDatabase(url=f"{url}/0"), diskless=True)))
        assert rdb_keyspace(rdb) == {0: 300}

        client.config_set("rdb-key-save-delay", "100000")  # 0.1 s per key: a 30 s BGSAVE
        with pytest.raises(BgsaveTimeoutError, match="did not finish within 1s"):
            asyncio.run(bgsave.fn(RedisDatabase(url=f"{url}/0"), timeout_s=1, poll_interval_s=0.1))
        client.close()


def test_bgsave_during_a_diskless_sync_waits_for_it_then_saves(tmp_path: Path) -> None:
    """A replica's diskless sync never moves LASTSAVE: BGSAVE must not wait on LASTSAVE behind it (it hung)."""
    with rdb_server(tmp_path / "none.rdb") as url:
        client = redis.Redis.from_url(url)
        client.mset({f"key:{i}": "x" * 100 for i in range(300)})
        client.config_set("repl-diskless-sync", "yes")
        client.config_set("repl-diskless-sync-delay", "0")
        client.config_set("rdb-key-save-delay", "5000")  # 5 ms per key: each save takes about 1.5 s
        before = client.lastsave()
        sync = threading.Thread(target=lambda: b"".join(fetch_rdb(RedisDatabase(url=f"{url}/0"), diskless=True)))
        sync.start()
        for _ in range(100):
            if int(client.info("persistence")["rdb_bgsave_in_progress"]):
                break
            time.sleep(0.02)
        saved = asyncio.run(bgsave.fn(RedisDatabase(url=f"{url}/0"), timeout_s=30, poll_interval_s=0.1))
        sync.join(timeout=30)
        assert saved.lastsave > before and saved.status == "ok"
        client.close()
