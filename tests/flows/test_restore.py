"""restore-database against the sandbox's real PostgreSQL and S3: into a scratch database, over a "live"
database of our own (emergency backup, approval, row counts), and the refusals (corrupt object, incomplete
backup, no approval). Every database created here is named rb_test_* and dropped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run
from psycopg.conninfo import make_conninfo

import flows.restore
from blocks.environment import RunbookEnvironment
from flows.backup import daily_backup
from flows.restore import RestoreNotApprovedError, restore_database
from sandbox.manager import Sandbox
from tasks.backup.manifest import CorruptObjectError, IncompleteBackupError
from tasks.backup.restore import read_manifest
from tasks.storage import get_bytes, list_stored, object_key, put_bytes
from tests.conftest import TEST_ENVIRONMENT, drop_database
from tests.flows.test_backup import NO_RETENTION, admin_dsn, events, save_variant, source_row_counts


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


@pytest.fixture()
def scratch_names(sandbox: Sandbox) -> Iterator[list[str]]:
    """Databases the test creates (or the flow creates for it); all dropped afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        drop_database(admin_dsn(sandbox), name)


def database_exists(sandbox: Sandbox, name: str) -> bool:
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def scratch_name() -> str:
    return f"rb_test_{uuid.uuid4().hex[:10]}"


async def test_backup_restores_into_scratch_with_identical_row_counts(
    sandbox: Sandbox, env: RunbookEnvironment, scratch_names: list[str]
) -> None:
    backup = await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres"], retention=NO_RETENTION)
    name = scratch_name()
    scratch_names.append(name)
    since = datetime.now(UTC) - timedelta(seconds=2)
    report = await restore_database(environment=TEST_ENVIRONMENT, backup_id=backup.backup_id, scratch_database=name)
    assert report.status == "completed" and not report.dry_run  # live by default in the sandbox
    assert report.emergency_backup is None  # a scratch restore touches nothing live
    expected = source_row_counts(env.postgres.conninfo())
    assert report.expected_rows == expected
    assert source_row_counts(env.postgres.conninfo(dbname=name)) == expected
    assert report.restored_rows == expected
    # the same schema came back: primary keys and indexes too
    with psycopg.connect(env.postgres.conninfo(dbname=name)) as conn:
        indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").fetchone()
    with psycopg.connect(env.postgres.conninfo()) as conn:
        source_indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").fetchone()
    assert indexes == source_indexes
    [event] = await events(["restore.completed"], f"runbooks.database.{TEST_ENVIRONMENT}", since)
    assert event.payload["database"] == name and event.payload["backup"] == backup.prefix


async def test_corrupt_object_refuses_to_restore_and_names_it(
    sandbox: Sandbox, env: RunbookEnvironment, scratch_names: list[str]
) -> None:
    backup = await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres"], retention=NO_RETENTION)
    manifest = await read_manifest(env.backups, backup.prefix)
    assert manifest is not None
    [dump] = manifest.objects_of("postgres")
    data = bytearray(get_bytes(env.backups, dump.key) or b"")
    data[len(data) // 3] ^= 0x40  # one byte
    s3 = env.backups.credentials.get_s3_client()
    s3.put_object(Bucket=env.backups.bucket_name, Key=object_key(env.backups, dump.key), Body=bytes(data))
    name = scratch_name()
    scratch_names.append(name)
    since = datetime.now(UTC) - timedelta(seconds=2)
    state = await restore_database(
        environment=TEST_ENVIRONMENT, backup_id=backup.backup_id, scratch_database=name, return_state=True
    )
    assert state.is_failed()
    error = await state.result(raise_on_failure=False)
    assert isinstance(error, CorruptObjectError) and error.key == dump.key
    assert dump.key in (state.message or "") and "SHA-256" in (state.message or "")
    assert not database_exists(sandbox, name)  # nothing restored, not even created
    [event] = await events(["restore.failed"], f"runbooks.database.{TEST_ENVIRONMENT}", since)
    assert dump.key in event.payload["error"]


async def test_incomplete_backup_is_never_restored(env: RunbookEnvironment) -> None:
    backup_id = "20200101T020000Z"
    put_bytes(env.backups, f"daily/{TEST_ENVIRONMENT}/{backup_id}/postgres/x.dump.zst", b"partial")
    state = await restore_database(environment=TEST_ENVIRONMENT, backup_id=backup_id, return_state=True)
    assert state.is_failed()
    assert isinstance(await state.result(raise_on_failure=False), IncompleteBackupError)
    assert "no manifest.json" in (state.message or "")


async def test_dry_run_verifies_and_creates_nothing(sandbox: Sandbox, env: RunbookEnvironment) -> None:
    backup = await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres"], retention=NO_RETENTION)
    name = scratch_name()
    report = await restore_database(
        environment=TEST_ENVIRONMENT, backup_id=backup.backup_id, scratch_database=name, dry_run=True
    )
    assert report.status == "dry-run" and report.verified_objects == [o.key for p in backup.parts for o in p.objects]
    assert not database_exists(sandbox, name)


async def _paused_run_id(environment: str) -> Any:
    for _ in range(120):
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["restore-database"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for run in runs:
            if run.parameters.get("environment") == environment:
                return run.id
        await asyncio.sleep(0.5)
    raise AssertionError("the restore never paused for approval")


@pytest.fixture()
async def live_environment(sandbox: Sandbox, env: RunbookEnvironment, scratch_names: list[str]) -> tuple[str, str]:
    """A "live" database of our own (a copy of the sandbox's) and an environment block pointing at it."""
    backup = await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres"], retention=NO_RETENTION)
    live = scratch_name()
    scratch_names.append(live)
    await restore_database(environment=TEST_ENVIRONMENT, backup_id=backup.backup_id, scratch_database=live)
    name = f"rb-test-live-{uuid.uuid4().hex[:6]}"
    await save_variant(sandbox, name, postgres_dsn=make_conninfo(env.postgres.conninfo(), dbname=live))
    return name, live


async def test_live_restore_takes_emergency_backup_waits_for_approval_and_restores(
    sandbox: Sandbox,
    env: RunbookEnvironment,
    live_environment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flows.restore, "APPROVAL_POLL_INTERVAL_S", 1)
    name, live = live_environment
    live_dsn = env.postgres.conninfo(dbname=live)
    good = await daily_backup(environment=name, parts=["postgres"], retention=NO_RETENTION)
    expected = source_row_counts(live_dsn)
    with psycopg.connect(live_dsn, autocommit=True) as conn:  # the incident: rows lost
        conn.execute("DELETE FROM audit_events")
        conn.execute("DELETE FROM usage_daily WHERE ctid IN (SELECT ctid FROM usage_daily LIMIT 10)")
    damaged = source_row_counts(live_dsn)
    assert damaged != expected

    run = asyncio.create_task(restore_database(environment=name, backup_id=good.backup_id, target="live"))
    run_id = await _paused_run_id(name)
    assert source_row_counts(live_dsn) == damaged  # nothing touched before the approval
    await aresume_flow_run(run_id, run_input={"approve": True, "confirm_database": live, "reason": "test"})
    report = await asyncio.wait_for(run, timeout=120)

    assert report.status == "completed" and report.target == "live" and report.database == live
    assert source_row_counts(live_dsn) == expected == report.restored_rows
    # the emergency backup holds the damaged state, complete with its manifest
    assert report.emergency_backup and report.emergency_backup.startswith(f"emergency/{name}/")
    emergency = await read_manifest(env.backups, report.emergency_backup)
    assert emergency is not None and emergency.postgres is not None
    assert emergency.postgres.row_counts == damaged


async def test_live_restore_without_approval_touches_nothing(
    sandbox: Sandbox,
    env: RunbookEnvironment,
    live_environment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flows.restore, "APPROVAL_POLL_INTERVAL_S", 1)
    name, live = live_environment
    live_dsn = env.postgres.conninfo(dbname=live)
    good = await daily_backup(environment=name, parts=["postgres"], retention=NO_RETENTION)
    with psycopg.connect(live_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_events")
    before = source_row_counts(live_dsn)
    run = asyncio.create_task(
        restore_database(
            environment=name, backup_id=good.backup_id, target="live", emergency_backup=False, return_state=True
        )
    )
    run_id = await _paused_run_id(name)
    await aresume_flow_run(run_id, run_input={"approve": True, "confirm_database": "wrong_db", "reason": ""})
    state = await asyncio.wait_for(run, timeout=60)
    assert state.is_failed()
    assert isinstance(await state.result(raise_on_failure=False), RestoreNotApprovedError)
    assert source_row_counts(live_dsn) == before
    assert not [o for o in list_stored(env.backups, f"emergency/{name}/")]
