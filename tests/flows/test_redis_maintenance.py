"""redis-maintenance on the session's sandbox: a pattern delete takes the RDB to S3 first (with its manifest) and
deletes only the matching keys (checked with redis-cli); production describes by default and refuses FLUSHALL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from blocks.environment import RunbookEnvironment, load_environment
from flows.redis_maintenance import redis_maintenance
from kernel import processes
from sandbox.manager import Sandbox
from tasks.backup.pipeline import download_verified
from tasks.backup.restore import read_manifest
from tasks.redis import rdb_server
from tests.conftest import TEST_ENVIRONMENT


def redis_cli(url: str, *args: str) -> str:
    result = processes.run(["redis-cli", "-u", url, *args], timeout_s=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture()
def keys(sandbox: Sandbox) -> Iterator[tuple[str, str]]:
    """2,000 keys under ``<prefix>:doomed:*`` and, beside them, keys a sloppy pattern would also catch."""
    prefix = f"maint:{uuid.uuid4().hex[:8]}"
    url = RunbookEnvironment.load(TEST_ENVIRONMENT).redis.url.get_secret_value()
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"{prefix}:doomed:{i}", "x" * 32)
    for name in ("kept:1", "kept:2", "doomedish", "doomed"):  # no ':' after doomed: not matched
        pipe.set(f"{prefix}:{name}", "keep me")
    pipe.execute()
    yield prefix, url
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.unlink(key)
    client.close()


async def test_pattern_delete_backs_up_first_and_deletes_only_the_matching_keys(
    keys: tuple[str, str], tmp_path: Path
) -> None:
    prefix, url = keys
    before = int(redis_cli(url, "DBSIZE"))
    state = await redis_maintenance(
        environment=TEST_ENVIRONMENT, delete_pattern=f"{prefix}:doomed:*", return_state=True
    )
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    [record] = [r for r in result["actions"] if r.action == "delete-keys"]
    assert (record.decision, record.outcome, record.data["deleted"]) == ("auto", "done", 2000)
    # asked for nothing else, the run left the server's eviction policy alone (the session shares this server)
    [eviction] = [r for r in result["actions"] if r.action == "set-maxmemory-policy"]
    assert eviction.outcome in ("no-op", "not-done") and eviction.data["wanted"] == eviction.data["previous"]
    assert redis_cli(url, "CONFIG", "GET", "maxmemory-policy").split()[1] == eviction.data["previous"]

    # only the matching keys are gone (redis-cli, as an operator checks)
    assert redis_cli(url, "--scan", "--pattern", f"{prefix}:doomed:*").split() == []
    assert sorted(redis_cli(url, "--scan", "--pattern", f"{prefix}:*").split()) == sorted(
        f"{prefix}:{n}" for n in ("kept:1", "kept:2", "doomedish", "doomed")
    )
    assert int(redis_cli(url, "DBSIZE")) == before - 2000  # the sandbox's own keys are all still there

    # the RDB of that moment is in S3 with its manifest, and it holds the keys that are gone now
    env = await load_environment(TEST_ENVIRONMENT)
    backup = result["backup"]
    assert backup is not None and backup.status == "completed" and backup.kind == "emergency"
    manifest = await read_manifest(env.backups, backup.prefix)
    assert manifest is not None and manifest.status == "completed" and manifest.redis is not None
    assert record.data["backup"] == backup.prefix
    [rdb_object] = manifest.objects_of("redis")
    rdb = download_verified(env.backups, rdb_object, tmp_path / "dump.rdb")
    with rdb_server(rdb, keep_expired=True) as backed_up:
        client = redis.Redis.from_url(backed_up, db=manifest.redis.db)
        try:
            assert sum(1 for _ in client.scan_iter(match=f"{prefix}:doomed:*", count=1000)) == 2000
        finally:
            client.close()


async def test_production_describes_by_default_and_refuses_flushall(
    keys: tuple[str, str], production_environment: str
) -> None:
    prefix, url = keys
    described = await redis_maintenance(
        environment=production_environment, delete_pattern=f"{prefix}:doomed:*", return_state=True
    )
    assert described.is_completed(), described.message
    [record] = (await described.result())["actions"][1:]  # type: ignore[union-attr]
    assert (record.decision, record.outcome) == ("observed", "not-done")
    refused = await redis_maintenance(
        environment=production_environment, flushall=True, dry_run=False, return_state=True
    )
    result = await refused.result()  # type: ignore[union-attr]
    [flush] = [r for r in result["actions"] if r.action == "flushall"]
    assert (flush.decision, flush.outcome) == ("refused", "not-done") and result["backup"] is None
    assert len(redis_cli(url, "--scan", "--pattern", f"{prefix}:doomed:*").split()) == 2000  # nothing touched
