"""The backup building blocks: the streaming child process, the multipart upload and its failures (through a
TCP proxy that breaks like a network or a dying server does), zstd + SHA-256 round trip and corruption, the
Redis RDB over SYNC, and the retention rules."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from blocks.environment import RunbookEnvironment
from blocks.redis import RedisDatabase
from kernel import processes
from sandbox.manager import Sandbox
from tasks.backup.manifest import BackupCancelledError, CorruptObjectError
from tasks.backup.pipeline import UploadTarget, compress_and_upload, download_verified
from tasks.backup.retention import RetentionPolicy, StoredBackup, clean_local_staging, plan_retention
from tasks.redis import BgsaveTimeoutError, bgsave, fetch_rdb, rdb_keyspace, rdb_server
from tasks.storage import PART_SIZE, delete_stored, get_bytes, object_key
from tests.conftest import TEST_ENVIRONMENT
from tests.tasks.test_storage import exists, random_chunks

MiB = 2**20


# ----------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


# ----------------------------------------------------------------------------------------------------------
# kernel.processes.stream

SPAWNS_A_CHILD = "import subprocess, sys, time; subprocess.Popen(['sleep', '301']); sys.stdout.write('x' * 10); sys.stdout.flush(); time.sleep(300)"  # noqa: E501


def _no_sleeper() -> bool:
    found = subprocess.run(["pgrep", "-f", "^sleep 301$"], capture_output=True, text=True, check=False)
    return found.stdout.strip() == ""


def test_stream_yields_stdout_and_reports_failure_with_stderr() -> None:
    code = "import sys; sys.stdout.buffer.write(b'a' * 300000); sys.stderr.write('boom: disk full\\n'); sys.exit(3)"
    received = bytearray()
    with pytest.raises(processes.ProcessError, match="exited 3: boom: disk full"):
        for chunk in processes.stream([sys.executable, "-c", code], timeout_s=30, chunk_size=65536):
            assert len(chunk) <= 65536
            received += chunk
    assert bytes(received) == b"a" * 300000


def test_stream_timeout_and_early_close_kill_the_group() -> None:
    with pytest.raises(processes.ProcessError, match="timed out"):
        for _ in processes.stream([sys.executable, "-c", SPAWNS_A_CHILD], timeout_s=1.5):
            pass
    assert _no_sleeper()
    with contextlib.closing(processes.stream([sys.executable, "-c", SPAWNS_A_CHILD], timeout_s=60)) as chunks:
        assert next(chunks) == b"x" * 10
    assert _no_sleeper()


def test_stream_should_stop_kills_a_silent_command() -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(processes.ProcessError, match="no longer wanted"):
        for _ in processes.stream([sys.executable, "-c", SPAWNS_A_CHILD], timeout_s=60, should_stop=stop.is_set):
            pass
    assert time.monotonic() - started < 5
    assert _no_sleeper()


# ----------------------------------------------------------------------------------------------------------
# streaming upload through zstd


def test_upload_memory_does_not_grow_with_the_data(env: RunbookEnvironment) -> None:
    key = f"rb-test/{uuid.uuid4().hex}/big"
    target = UploadTarget(bucket=env.backups)
    tracemalloc.start()
    try:
        obj = compress_and_upload(target, key, random_chunks(96 * MiB), part="big", format="random")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        delete_stored(env.backups, [key])
    assert obj.raw_size == 96 * MiB and obj.s3_parts == math.ceil(obj.size / PART_SIZE)
    assert peak < 56 * MiB, f"peak {peak / MiB:.0f} MiB for 96 MiB of data"  # ~ part size x (in flight + 2)


# ----------------------------------------------------------------------------------------------------------
# zstd + SHA-256, both ways


def test_compress_upload_download_round_trip_and_corruption(env: RunbookEnvironment, tmp_path: Path) -> None:
    data = b"".join(f"row {i}: some text that compresses well\n".encode() for i in range(200_000))
    key = f"rb-test/{uuid.uuid4().hex}/data.zst"
    target = UploadTarget(bucket=env.backups)
    obj = compress_and_upload(
        target, key, (data[i : i + 65536] for i in range(0, len(data), 65536)), part="test", format="text"
    )
    stored = get_bytes(env.backups, key)
    assert stored is not None
    assert obj.raw_size == len(data) and obj.size == len(stored) < len(data) // 5
    assert obj.sha256 == hashlib.sha256(stored).hexdigest()
    assert target.progress.read["test"] == len(data)
    assert download_verified(env.backups, obj, tmp_path / "out").read_bytes() == data

    corrupt = bytearray(stored)
    corrupt[len(corrupt) // 2] ^= 0x01
    s3 = env.backups.credentials.get_s3_client()
    s3.put_object(Bucket=env.backups.bucket_name, Key=object_key(env.backups, key), Body=bytes(corrupt))
    with pytest.raises(CorruptObjectError, match=f"{key} is corrupt: SHA-256"):
        download_verified(env.backups, obj, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CorruptObjectError, match="bytes stored, the manifest says"):
        download_verified(env.backups, obj.model_copy(update={"size": obj.size + 1}), tmp_path / "bad")


def test_cancel_stops_a_part(env: RunbookEnvironment) -> None:
    target = UploadTarget(bucket=env.backups)
    target.cancel.set()
    key = f"rb-test/{uuid.uuid4().hex}/cancelled.zst"
    with pytest.raises(BackupCancelledError):
        compress_and_upload(target, key, random_chunks(MiB), part="redis", format="redis-rdb")
    assert not exists(env.backups, key)


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


# ----------------------------------------------------------------------------------------------------------
# retention rules (pure)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def stored(when: datetime, status: str = "completed", verified: bool = False) -> StoredBackup:
    backup_id = when.strftime("%Y%m%dT%H%M%SZ")
    return StoredBackup(
        backup_id=backup_id,
        prefix=f"daily/x/{backup_id}/",
        started_at=when,
        object_keys=[f"daily/x/{backup_id}/manifest.json"],
        size=1,
        status=status,  # type: ignore[arg-type]
        verified=verified,
    )


def daily_history(days: int) -> list[StoredBackup]:
    return [stored(NOW.replace(hour=2) - timedelta(days=d)) for d in range(days)]


def test_retention_keeps_daily_weekly_monthly() -> None:
    backups = daily_history(120)
    plan = plan_retention(backups, RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=3), environment="x")
    kept = {d.backup_id for d in plan.decisions if not d.delete}
    newest_seven = {b.backup_id for b in backups[:7]}
    assert newest_seven <= kept
    assert 7 <= len(kept) <= 7 + 4 + 3
    assert len(plan.to_delete) == 120 - len(kept)
    # every kept one has a reason, every deleted one too
    assert all(d.reasons for d in plan.decisions)


def test_retention_same_day_keeps_newest_of_the_day() -> None:
    backups = [stored(NOW - timedelta(hours=h)) for h in (1, 2, 3)]
    plan = plan_retention(backups, RetentionPolicy(keep_daily=1, keep_weekly=0, keep_monthly=0), environment="x")
    assert [d.delete for d in sorted(plan.decisions, key=lambda d: d.backup_id, reverse=True)] == [False, True, True]


def test_retention_deletes_nothing_when_the_newest_failed() -> None:
    for status in ("failed", "incomplete"):
        backups = [stored(NOW - timedelta(hours=1), status=status), *daily_history(60)[1:]]
        old_incomplete = stored(NOW - timedelta(days=70), status="incomplete")
        plan = plan_retention([*backups, old_incomplete], RetentionPolicy(keep_daily=2), environment="x", now=NOW)
        assert plan.to_delete == []
        assert plan.skipped_reason and status in plan.skipped_reason


def test_retention_never_deletes_the_newest_verified() -> None:
    backups = daily_history(40)
    verified_old = backups[30].model_copy(update={"verified": True})
    older_verified = backups[35].model_copy(update={"verified": True})
    backups[30], backups[35] = verified_old, older_verified
    plan = plan_retention(backups, RetentionPolicy(keep_daily=3, keep_weekly=0, keep_monthly=0), environment="x")
    decisions = {d.backup_id: d for d in plan.decisions}
    assert not decisions[verified_old.backup_id].delete
    assert "newest verified backup" in decisions[verified_old.backup_id].reasons
    assert decisions[older_verified.backup_id].delete  # only the newest verified one is protected


def test_retention_incomplete_backups_go_after_a_day() -> None:
    backups = [
        *daily_history(3),
        stored(NOW - timedelta(days=1, hours=13), status="incomplete"),
        stored(NOW - timedelta(hours=20), status="incomplete"),
        stored(NOW - timedelta(days=2, hours=5), status="failed"),
    ]
    plan = plan_retention(backups, RetentionPolicy(keep_daily=7), environment="x", now=NOW)
    by_status = {(d.status, d.delete) for d in plan.decisions if d.status != "completed"}
    assert by_status == {("incomplete", True), ("incomplete", False), ("failed", True)}
    assert not any(d.delete for d in plan.decisions if d.status == "completed")


def test_local_staging_cleanup_is_the_runbooks_find_mtime_7(tmp_path: Path) -> None:
    old = time.time() - 8 * 86400
    (tmp_path / "2026-11-01").mkdir()
    files = {
        "backup-20261101_020000.tar.gz": old,  # the old script's archive, 8 days old: goes
        "2026-11-01/database.sql": old,  # its plain dump: goes
        "backup-20261125_020000.tar.gz": time.time() - 86400,  # 1 day old: stays
        "notes.txt": old,  # not a backup file: stays
    }
    for name, mtime in files.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    outside = tmp_path.parent / f"outside-{uuid.uuid4().hex[:6]}.dump"
    outside.write_text("x")
    os.utime(outside, (old, old))
    (tmp_path / "link.dump").symlink_to(outside)  # never followed out of the directory

    planned = clean_local_staging.fn(tmp_path, 7, dry_run=True)
    assert sorted(planned.deleted) == ["2026-11-01/database.sql", "backup-20261101_020000.tar.gz"]
    assert all((tmp_path / name).exists() for name in files)  # a dry run deletes nothing

    done = clean_local_staging.fn(tmp_path, 7, dry_run=False)
    assert done.deleted == planned.deleted and done.kept == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "backup-20261125_020000.tar.gz",
        "link.dump",
        "notes.txt",
    ]
    assert outside.exists()
    outside.unlink()
    assert clean_local_staging.fn(tmp_path / "missing", 7, dry_run=False).deleted == []
