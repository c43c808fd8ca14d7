"""verify-backup against the sandbox's real PostgreSQL, Redis and S3: a good backup is restored into a scratch
database and a throwaway Redis, passes its Great Expectations suites and is marked verified (and retention
keeps it); a backup whose manifest disagrees with its data fails loudly, tells Slack and is not marked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from prefect.client.orchestration import get_client

from blocks.environment import RunbookEnvironment
from flows.backup import daily_backup
from flows.verify import scratch_name, verify_backup
from sandbox.manager import Sandbox
from tasks.backup.manifest import VERIFIED_NAME
from tasks.backup.report import FAILED_EVENT, VERIFIED_EVENT
from tasks.backup.restore import read_manifest
from tasks.backup.retention import RetentionPolicy, StoredBackup, list_backups, plan_retention
from tasks.backup.verify import BackupVerificationError, VerifiedRecord
from tasks.storage import get_bytes, put_bytes
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.test_backup import NO_RETENTION, admin_dsn, events, source_row_counts


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


def database_exists(sandbox: Sandbox, name: str) -> bool:
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


async def artifact_markdown(key: str) -> str:
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    found = [a for a in artifact if a.key == key]
    assert found, f"no artifact {key}"
    return str(found[0].data)


async def test_good_backup_verifies_is_marked_and_retention_keeps_it(
    sandbox: Sandbox, env: RunbookEnvironment, receivers_url: str
) -> None:
    backup = await daily_backup(environment=TEST_ENVIRONMENT, retention=NO_RETENTION)
    manifest = await read_manifest(env.backups, backup.prefix)
    assert manifest is not None and manifest.postgres is not None and manifest.redis is not None
    since = datetime.now(UTC) - timedelta(seconds=2)

    report = await verify_backup(environment=TEST_ENVIRONMENT)  # the newest completed backup: this one

    assert report.status == "verified" and report.backup_id == backup.backup_id and not report.failures
    assert report.database is not None and report.database.success
    expected = source_row_counts(env.postgres.conninfo())
    assert manifest.postgres.row_counts == expected
    row_checks = {o.suite: o.observed for o in report.database.outcomes if o.expectation.endswith("row_count_to_equal")}
    assert row_checks == expected  # Great Expectations counted every table of the manifest in the scratch copy
    key_checks = [o for o in report.database.outcomes if o.expectation == "expect_column_values_to_not_be_null"]
    assert key_checks and all(o.observed == 0 for o in key_checks)  # primary keys found in the catalog
    assert {o.suite for o in key_checks} <= set(expected)
    assert report.redis is not None and report.redis.success
    assert report.redis.restored_keys == manifest.redis.key_count > 0
    # the scratch database is gone
    assert report.scratch_dropped and not database_exists(sandbox, scratch_name(env.postgres.dbname, backup.backup_id))

    # verified.json next to the manifest, in the format retention reads
    data = get_bytes(env.backups, f"{backup.prefix}{VERIFIED_NAME}")
    assert data is not None and report.verified_key == f"{backup.prefix}{VERIFIED_NAME}"
    record = VerifiedRecord.model_validate_json(data)
    assert record.backup_id == backup.backup_id and record.expectations == len(report.database.outcomes)
    stored = await list_backups.fn(env.backups, TEST_ENVIRONMENT)
    ours = next(b for b in stored if b.backup_id == backup.backup_id)
    assert ours.verified
    newer = StoredBackup(
        backup_id="29990101T000000Z",
        prefix=f"daily/{TEST_ENVIRONMENT}/29990101T000000Z/",
        started_at=datetime(2999, 1, 1, tzinfo=UTC),
        object_keys=[],
        size=0,
        status="completed",
        verified=False,
    )
    plan = plan_retention(
        [*stored, newer],
        RetentionPolicy(keep_daily=1, keep_weekly=0, keep_monthly=0),
        environment=TEST_ENVIRONMENT,
        now=datetime(2999, 1, 1, 1, tzinfo=UTC),
    )
    decision = next(d for d in plan.decisions if d.backup_id == backup.backup_id)
    assert not decision.delete and "newest verified backup" in decision.reasons

    [event] = await events([VERIFIED_EVENT], f"runbooks.backup.{TEST_ENVIRONMENT}", since)
    assert event.payload["backup_id"] == backup.backup_id and event.resource["runbooks.backup.kind"] == "daily"
    assert httpx.get(f"{receivers_url}/_received", params={"system": "slack"}).json() == []
    markdown = await artifact_markdown(f"verify-backup-{TEST_ENVIRONMENT}")
    assert "✅ verified" in markdown and "expect_table_row_count_to_equal" in markdown


async def test_manifest_that_disagrees_fails_notifies_and_is_not_marked(
    sandbox: Sandbox, env: RunbookEnvironment, receivers_url: str
) -> None:
    backup = await daily_backup(environment=TEST_ENVIRONMENT, retention=NO_RETENTION)
    manifest = await read_manifest(env.backups, backup.prefix)
    assert manifest is not None and manifest.postgres is not None
    # tamper with the manifest: one table counted wrong, one table that is not in the dump, Redis keys off
    raw = json.loads(get_bytes(env.backups, manifest.key) or b"{}")
    table, rows = sorted(manifest.postgres.row_counts.items())[0]
    raw["parts"]["postgres"]["row_counts"][table] = rows + 7
    raw["parts"]["postgres"]["row_counts"]["public.ghost_table"] = 3
    raw["parts"]["redis"]["key_count"] += 5
    put_bytes(env.backups, manifest.key, json.dumps(raw).encode())
    since = datetime.now(UTC) - timedelta(seconds=2)

    state = await verify_backup(environment=TEST_ENVIRONMENT, backup_id=backup.backup_id, return_state=True)

    assert state.is_failed()
    error = await state.result(raise_on_failure=False)
    assert isinstance(error, BackupVerificationError)
    message = state.message or ""
    assert f"{table} row count expected {rows + 7} (manifest) got {rows}" in message
    assert "public.ghost_table" in message and "missing" in message
    assert "Redis db" in message
    assert len(error.failures) == 3
    # nothing marked verified, the scratch database dropped all the same
    assert get_bytes(env.backups, f"{backup.prefix}{VERIFIED_NAME}") is None
    assert not database_exists(sandbox, scratch_name(env.postgres.dbname, backup.backup_id))
    # Slack told, with what failed
    slack = httpx.get(f"{receivers_url}/_received", params={"system": "slack"}).json()
    assert len(slack) == 1
    text = json.dumps(slack[0]["body"])
    assert "Backup verification failed" in text and table in text and backup.prefix in text
    [event] = await events([FAILED_EVENT], f"runbooks.backup.{TEST_ENVIRONMENT}", since)
    assert event.payload["backup_id"] == backup.backup_id and len(event.payload["failures"]) == 3
    markdown = await artifact_markdown(f"verify-backup-{TEST_ENVIRONMENT}")
    assert "❌ failed" in markdown and "ghost_table" in markdown
