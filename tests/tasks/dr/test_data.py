"""The Redis part of a recovery (:mod:`tasks.dr.data`) against real redis-servers: an RDB written here by a throwaway
server, copied into a leased database of the machine's Redis, checked with redis-cli."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from blocks.redis import RedisDatabase
from tasks.dr.data import copy_database
from tasks.redis import rdb_server


def redis_cli(url: str, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-u", url, *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def write_rdb(path: Path, db: int) -> int:
    """An RDB whose database ``db`` holds 3 keys without TTL, 2 with an hour left and 2 whose TTL has passed (as
    when the backup is restored after their end); returns the hour-long keys' deadline (epoch ms).

    Written by a replica of a master that is never there: a replica keeps a key whose expiry is set in the past
    (a master would delete it at once), and SAVE writes it to the RDB as it is."""
    later = int(time.time() * 1000) + 3_600_000
    with rdb_server(path, keep_expired=True) as url:
        client = redis.Redis.from_url(url, db=db)
        try:
            client.config_set("replica-read-only", "no")
            for i in range(3):
                client.set(f"user:{i}", "x" * 100)
            for i in range(2):
                client.set(f"session:{i}", "s")
                client.pexpireat(f"session:{i}", later)
            past = int(time.time() * 1000) - 60_000
            for i in range(2):
                client.set(f"ratelimit:{i}", "1")
                client.pexpireat(f"ratelimit:{i}", past)
            assert client.dbsize() == 7
            client.save()
        finally:
            client.close()
    return later


def test_keys_expired_since_the_backup_are_counted_as_expired_not_missing(
    tmp_path: Path, spare_redis: RedisDatabase
) -> None:
    rdb = tmp_path / "dump.rdb"
    later = write_rdb(rdb, db=3)

    result = copy_database(rdb, spare_redis, 3, replace=False)

    assert (result.in_backup, result.restored, result.expired) == (7, 5, 2)
    assert result.accounted == 7  # what the manifest counted when the backup was taken
    url = spare_redis.url.get_secret_value()
    assert redis_cli(url, "DBSIZE") == "5"
    assert redis_cli(url, "EXISTS", "ratelimit:0", "ratelimit:1") == "0"
    assert redis_cli(url, "PTTL", "user:0") == "-1"
    # the TTL kept (MIGRATE sends what is left of it: the end may move by the transfer's milliseconds)
    assert abs(int(redis_cli(url, "PEXPIRETIME", "session:1")) - later) < 1000
    # the hour-long keys are the ones a later verification may find expired; none has yet
    assert result.expired_by(later / 1000) == 2 and result.expired_by(time.time()) == 0


def test_an_existing_key_is_an_error_unless_replace(tmp_path: Path, spare_redis: RedisDatabase) -> None:
    import pytest

    from kernel.errors import RedisError

    rdb = tmp_path / "dump.rdb"
    write_rdb(rdb, db=0)
    url = spare_redis.url.get_secret_value()
    redis_cli(url, "SET", "user:1", "mine")
    with pytest.raises(RedisError, match="BUSYKEY"):
        copy_database(rdb, spare_redis, 0, replace=False)
    assert redis_cli(url, "GET", "user:1") == "mine"
    assert copy_database(rdb, spare_redis, 0, replace=True).restored == 5
    assert redis_cli(url, "GET", "user:1") == "x" * 100
