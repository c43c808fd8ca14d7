"""tasks/backup/report.py: artifact keys and what a report says, without any service."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.backup.registry import DEFAULT_PARTS, PART_BUILDERS
from tasks.backup.report import BackupReport, RestoreReport, artifact_slug


def test_artifact_slug_is_a_stable_key() -> None:
    assert artifact_slug("Prod EU_1") == "prod-eu-1"
    assert artifact_slug("---") == "default"


def test_every_default_part_has_a_builder() -> None:
    assert set(DEFAULT_PARTS) <= set(PART_BUILDERS)
    assert all(spec.name == name for name, spec in PART_BUILDERS.items())


def test_failed_backup_report_says_no_manifest_was_written() -> None:
    report = BackupReport(
        environment="prod",
        kind="daily",
        backup_id="20260101T000000Z",
        prefix="daily/prod/20260101T000000Z/",
        bucket="b",
        status="failed",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        error="upload of s3://b/daily/prod/20260101T000000Z/postgres/db.dump.zst failed",
        failed_part="postgres",
    )
    text = report.to_markdown()
    assert "❌ failed" in text and "**Error** (postgres)" in text and "No manifest was written" in text
    assert report.stored_bytes == 0


def test_restore_report_marks_mismatched_row_counts() -> None:
    report = RestoreReport(
        environment="prod",
        backup_prefix="daily/prod/x/",
        backup_completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        target="scratch",
        database="app_restore_x",
        dry_run=False,
        expected_rows={"public.users": 3, "public.orders": 5},
        restored_rows={"public.users": 3, "public.orders": 4},
    )
    text = report.to_markdown()
    assert "| public.users | 3 | 3 ✅ |" in text and "| public.orders | 5 | 4 ❌ |" in text
