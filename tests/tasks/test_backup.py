"""The backup building blocks: the stream through zstd + SHA-256 into S3 (memory, round trip, corruption,
cancellation) and the retention rules. The multipart upload is in test_storage.py, the child process in
tests/kernel/test_processes.py, the Redis RDB in test_redis.py."""

from __future__ import annotations

import hashlib
import math
import os
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blocks.environment import RunbookEnvironment
from sandbox.manager import Sandbox
from tasks.backup.manifest import BackupCancelledError, CorruptObjectError
from tasks.backup.pipeline import UploadTarget, compress_and_upload, download_verified
from tasks.backup.retention import RetentionPolicy, StoredBackup, clean_local_staging, plan_retention
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
