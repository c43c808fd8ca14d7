"""verify-backup against the sandbox's real PostgreSQL, Redis and S3: a good backup is restored into a scratch
database and a throwaway Redis, passes its Great Expectations suites and is marked verified (and retention
keeps it); a backup whose manifest disagrees with its data fails loudly, tells Slack and is not marked."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from prefect.client.orchestration import get_client

from blocks.environment import RunbookEnvironment
from blocks.registry import save_environment
from flows.backup import daily_backup
from flows.verify import scratch_name, verify_backup
from kernel.errors import ConfigurationError
from sandbox.manager import Sandbox
from tasks.backup.manifest import VERIFIED_NAME
from tasks.backup.report import FAILED_EVENT, VERIFIED_EVENT
from tasks.backup.restore import read_manifest
from tasks.backup.retention import RetentionPolicy, StoredBackup, list_backups, plan_retention
from tasks.backup.verification import server_address
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


# ----------------------------------------------------------------------------------------------------------
# where the restore runs: the recovery target's server, never the application's unless there is none


class DatabaseWatch:
    """Polls, with ``psql`` (the client a user would use), whether database ``name`` exists on each server until
    stopped; records every server it was seen on."""

    def __init__(self, name: str, servers: dict[str, str]) -> None:
        self.name, self.servers = name, servers
        self.seen: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="database-watch", daemon=True)

    def exists(self, server: str) -> bool:
        sql = f"SELECT 1 FROM pg_database WHERE datname = '{self.name}'"
        out = subprocess.run(
            ["psql", "-X", "-tA", "-d", self.servers[server], "-c", sql],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return out.strip() == "1"

    def _run(self) -> None:
        while not self._stop.is_set():
            for server in self.servers:
                if self.exists(server):
                    self.seen.add(server)
            self.polls += 1
            self._stop.wait(0.02)

    def __enter__(self) -> DatabaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def databases(dsn: str) -> list[str]:
    out = subprocess.run(
        ["psql", "-X", "-tA", "-d", dsn, "-c", "SELECT datname FROM pg_database ORDER BY 1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return out.split()


async def test_verification_restores_on_the_recovery_target_never_on_the_application_server(
    sandbox: Sandbox, env: RunbookEnvironment, recovery_environment: str
) -> None:
    assert recovery_environment == f"{TEST_ENVIRONMENT}-recovery"  # what verify-backup looks for by default
    recovery = await RunbookEnvironment.aload(recovery_environment)
    recovery_admin = recovery.postgres.conninfo(dbname="postgres")
    backup = await daily_backup(environment=TEST_ENVIRONMENT, retention=NO_RETENTION)
    name = scratch_name(env.postgres.dbname, backup.backup_id)
    before = databases(recovery_admin)
    since = datetime.now(UTC) - timedelta(seconds=2)

    with DatabaseWatch(name, {"recovery": recovery_admin, "source": admin_dsn(sandbox)}) as watch:
        report = await verify_backup(environment=TEST_ENVIRONMENT, backup_id=backup.backup_id)

    assert report.status == "verified" and report.database is not None and report.database.success
    # psql on the recovery server saw the scratch database while it ran; the application's server never had it
    assert watch.polls > 0 and watch.seen == {"recovery"}, (watch.seen, watch.polls)
    assert not watch.exists("recovery") and not watch.exists("source")
    assert report.scratch_dropped
    # the recovery target's own databases (its live one among them, if a recovery made it) are as they were
    assert databases(recovery_admin) == before and recovery.postgres.dbname != name
    assert report.restore_where == "recovery" and report.restore_environment == recovery_environment
    assert report.restore_server == server_address(recovery.postgres) != server_address(env.postgres)
    assert report.restore_jobs == 2  # the flow's default: nothing to spare on another server
    markdown = await artifact_markdown(f"verify-backup-{TEST_ENVIRONMENT}")
    assert f"restored on the verification target `{report.restore_server}`" in markdown
    assert f"`{name}` on `{report.restore_server}` dropped" in markdown
    [event] = await events([VERIFIED_EVENT], f"runbooks.backup.{TEST_ENVIRONMENT}", since)
    assert event.payload["restore_where"] == "recovery" and event.payload["restore_server"] == report.restore_server


async def test_without_a_recovery_target_the_application_server_is_used_throttled_and_said_loudly(
    sandbox: Sandbox, env: RunbookEnvironment
) -> None:
    solo = f"{TEST_ENVIRONMENT}-solo"  # an environment with no "<name>-recovery" block
    await save_environment(env, solo)
    backup = await daily_backup(environment=solo, retention=NO_RETENTION)
    name = scratch_name(env.postgres.dbname, backup.backup_id)

    with DatabaseWatch(name, {"source": admin_dsn(sandbox)}) as watch:
        report = await verify_backup(environment=solo, jobs=4)

    assert report.status == "verified" and report.backup_id == backup.backup_id
    assert watch.seen == {"source"} and not watch.exists("source") and report.scratch_dropped
    assert report.restore_where == "source" and report.restore_server == server_address(env.postgres)
    assert report.restore_jobs == 1  # throttled on the application's server, whatever was asked
    assert f"no `{solo}-recovery` environment block" in (report.restore_reason or "")
    markdown = await artifact_markdown(f"verify-backup-{solo}")
    assert "RESTORED ON THE APPLICATION'S OWN SERVER" in markdown and "pg_restore -j 1" in markdown
    assert f"Add a `{solo}-recovery` environment block" in markdown


async def test_a_named_target_on_the_application_server_is_refused_before_anything_runs(
    sandbox: Sandbox, env: RunbookEnvironment
) -> None:
    state = await verify_backup(
        environment=TEST_ENVIRONMENT, restore_target=TEST_ENVIRONMENT, notify_on_failure=False, return_state=True
    )

    assert state.is_failed()
    error = await state.result(raise_on_failure=False)
    assert isinstance(error, ConfigurationError) and "not a verification target" in str(error)
    assert "restore_target='source'" in (error.hint or "")
