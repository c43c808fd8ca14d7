"""daily-backup and backup-retention against the sandbox's real PostgreSQL, Redis and S3 (moto), with faults
injected by a TCP proxy: S3 dying mid-upload, pg_dump's connection terminated or dropped mid-dump."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from blocks.environment import RunbookEnvironment
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from flows.backup import RetentionSettings, backup_retention, daily_backup, schema_backup
from sandbox.blocks import sandbox_environment, save_environment
from sandbox.manager import Sandbox
from tasks.backup.manifest import BACKUP_ID_FORMAT, Manifest, backup_prefix
from tasks.backup.pipeline import download_verified
from tasks.backup.restore import read_manifest
from tasks.redis import copy_rdb_keys
from tasks.storage import get_bytes, list_stored, put_bytes
from tests.conftest import TEST_ENVIRONMENT
from tests.tasks.test_backup import FaultProxy

NO_RETENTION = RetentionSettings(enabled=False)
BACKUP_EVENTS = ["backup.completed", "backup.failed"]


# ----------------------------------------------------------------------------------------------------------
# helpers shared with test_restore


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


async def save_variant(sandbox: Sandbox, name: str, **changes: Any) -> RunbookEnvironment:
    """The sandbox environment saved as ``name`` with ``postgres``/``backups`` changes (a proxy, a folder)."""
    variant = sandbox_environment(sandbox.settings, sandbox.state)
    if "postgres_dsn" in changes:
        variant.postgres = PostgresDatabase(dsn=changes["postgres_dsn"])
    if "s3_endpoint" in changes:
        params = variant.backups.credentials.aws_client_parameters
        params.endpoint_url = changes["s3_endpoint"]
        params.config = {"retries": {"mode": "standard", "max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10}
    if "bucket_folder" in changes:
        variant.backups.bucket_folder = changes["bucket_folder"]
    await save_environment(variant, name)
    return variant


def source_row_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        tables = conn.execute("SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2").fetchall()
        return {
            f"{s}.{t}": conn.execute(f'SELECT count(*) FROM ONLY "{s}"."{t}"').fetchone()[0]  # type: ignore[index]
            for s, t in tables
        }


def admin_dsn(sandbox: Sandbox) -> str:
    return str(sandbox.state.get("postgres").get("admin_dsn") or sandbox.settings.postgres_admin_dsn)


async def events(names: list[str], resource_id: str, since: datetime, want: int = 1) -> list[Any]:
    """Events from the Prefect API (they are persisted asynchronously: poll a little)."""
    found: list[Any] = []
    for _ in range(40):
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(
                    event=EventNameFilter(name=names),
                    resource=EventResourceFilter(id=[resource_id]),
                    occurred=EventOccurredFilter(since=since),
                ),
                limit=50,
            )
        found = list(page.events)
        if len(found) >= want:
            return found
        await asyncio.sleep(0.5)
    return found


@pytest.fixture()
def pg_proxy(sandbox: Sandbox) -> Iterator[FaultProxy]:
    info = conninfo_to_dict(admin_dsn(sandbox))
    proxy = FaultProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    yield proxy
    proxy.release.set()
    proxy.kill()


@pytest.fixture()
def redis_db12(env: RunbookEnvironment) -> Iterator[RedisDatabase]:
    url = env.redis.url.get_secret_value()
    base, _, _db = url.rpartition("/")
    target = RedisDatabase(url=f"{base}/12")
    client = redis.Redis.from_url(target.url.get_secret_value())
    client.flushdb()
    yield target
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
async def completed_backup(env: RunbookEnvironment) -> AsyncIterator[Any]:
    """One full daily backup of the sandbox, shared by the read-only checks."""
    since = datetime.now(UTC) - timedelta(seconds=5)
    report = await daily_backup(environment=TEST_ENVIRONMENT)
    yield report, since


# ----------------------------------------------------------------------------------------------------------
# a good backup


async def test_manifest_lists_every_object_with_its_sha256(
    completed_backup: Any, env: RunbookEnvironment, sandbox: Sandbox
) -> None:
    report, since = completed_backup
    assert report.status == "completed" and report.error is None
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and manifest.status == "completed"
    assert report.manifest_key == manifest.key
    assert manifest.prefix == f"daily/{TEST_ENVIRONMENT}/{report.backup_id}/"
    datetime.strptime(report.backup_id, BACKUP_ID_FORMAT)
    stored = {o.key: o.size for o in list_stored(env.backups, report.prefix)}
    # every object but the manifest is in the manifest, with its exact size and SHA-256
    assert set(stored) == {o.key for o in manifest.objects} | {manifest.key}
    for obj in manifest.objects:
        data = get_bytes(env.backups, obj.key)
        assert data is not None
        assert obj.size == stored[obj.key] == len(data)
        assert obj.sha256 == hashlib.sha256(data).hexdigest()
        assert obj.compression == "zstd" and obj.compression_level == 3 and obj.raw_size > obj.size
    assert {o.part for o in manifest.objects} == {"postgres", "redis"}
    pg = manifest.postgres
    assert pg is not None and pg.snapshot and pg.server_version and pg.pg_dump_version
    assert pg.database == env.postgres.dbname
    assert pg.row_counts == source_row_counts(env.postgres.conninfo())
    assert {"public.users", "public.ai_queries", "public.audit_events"} <= set(pg.row_counts)
    rd = manifest.redis
    assert rd is not None and rd.redis_version and rd.key_count > 0 and rd.keyspace[rd.db] >= rd.key_count - 50
    assert set(manifest.parts) == {"postgres", "redis"} and manifest.tools["zstandard"]
    # the report artifact, and the event the "no backup for 26 h" automation listens to
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    by_key = {a.key: a for a in artifacts}
    assert f"backup-{TEST_ENVIRONMENT}" in by_key
    markdown = str(by_key[f"backup-{TEST_ENVIRONMENT}"].data)
    assert "MiB/s" in markdown and report.backup_id in markdown and "ai_queries" in markdown
    assert by_key[f"daily-backup-progress-{TEST_ENVIRONMENT}"].data == 100.0
    completed = await events(BACKUP_EVENTS, f"runbooks.backup.{TEST_ENVIRONMENT}", since)
    assert [e.event for e in completed] == ["backup.completed"]
    assert completed[0].payload["backup_id"] == report.backup_id
    # retention ran after the backup and kept it
    assert report.retention is not None and report.retention.applied
    assert report.backup_id not in {d.backup_id for d in report.retention.to_delete}


async def test_rdb_restores_the_same_keys_into_another_db(
    completed_backup: Any, env: RunbookEnvironment, redis_db12: RedisDatabase, tmp_path: Path
) -> None:
    report, _ = completed_backup
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and manifest.redis is not None
    [rdb_object] = manifest.objects_of("redis")
    rdb = download_verified(env.backups, rdb_object, tmp_path / "dump.rdb")
    copied = copy_rdb_keys(rdb, redis_db12, source_db=manifest.redis.db)
    assert copied > 0
    live = redis.Redis.from_url(env.redis.url.get_secret_value())
    restored = redis.Redis.from_url(redis_db12.url.get_secret_value())
    for pattern in ("session:*", "cache:model:*"):  # long-lived keys (rate-limit counters may expire meanwhile)
        want = set(live.scan_iter(match=pattern, count=1000))
        assert want and set(restored.scan_iter(match=pattern, count=1000)) == want
    key = next(live.scan_iter(match="session:*"))
    assert restored.hgetall(key) == live.hgetall(key)
    assert 0 < restored.pttl(key) <= live.pttl(key) + 60_000  # the TTL came along


async def test_schema_backup_on_demand(env: RunbookEnvironment, tmp_path: Path) -> None:
    report = await schema_backup(environment=TEST_ENVIRONMENT)
    assert report.status == "completed" and report.prefix.startswith(f"schema/{TEST_ENVIRONMENT}/")
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and manifest.kind == "schema"
    [obj] = manifest.objects
    sql = download_verified(env.backups, obj, tmp_path / "schema.sql").read_text()
    assert "CREATE TABLE public.ai_queries" in sql and "COPY " not in sql


async def test_dry_run_writes_nothing(env: RunbookEnvironment) -> None:
    report = await daily_backup(environment=TEST_ENVIRONMENT, dry_run=True, retention=NO_RETENTION)
    assert report.status == "dry-run"
    assert set(report.planned) == {"bucket", "postgres", "redis"}
    assert "pg_dump -Fc" in report.planned["postgres"] and "BGSAVE" in report.planned["redis"]
    assert list_stored(env.backups, report.prefix) == []


# ----------------------------------------------------------------------------------------------------------
# failures: retried or failed clearly, never a manifest


async def test_s3_dying_mid_upload_fails_without_manifest(sandbox: Sandbox, env: RunbookEnvironment) -> None:
    endpoint = str(env.backups.credentials.aws_client_parameters.endpoint_url)
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    proxy.die_after_up = 64 * 1024  # after the multipart upload started, during the first part
    name = f"rb-test-s3-dying-{uuid.uuid4().hex[:6]}"
    await save_variant(sandbox, name, s3_endpoint=proxy.url)
    since = datetime.now(UTC) - timedelta(seconds=5)
    try:
        state = await daily_backup(environment=name, return_state=True)
    finally:
        proxy.kill()
    assert state.is_failed()
    message = state.message or ""
    assert "upload of s3://" in message and f"daily/{name}/" in message, message
    stored = [o.key for o in list_stored(env.backups, f"daily/{name}/")]
    assert not any(k.endswith("manifest.json") for k in stored)
    failed = await events(BACKUP_EVENTS, f"runbooks.backup.{name}", since)
    assert [e.event for e in failed] == ["backup.failed"]
    assert failed[0].payload["manifest"] is None and "upload of s3://" in failed[0].payload["error"]


async def test_pg_dump_terminated_mid_dump_is_retried(
    sandbox: Sandbox, env: RunbookEnvironment, pg_proxy: FaultProxy
) -> None:
    name = f"rb-test-pg-kill-{uuid.uuid4().hex[:6]}"
    dsn = make_conninfo(env.postgres.conninfo(), host="127.0.0.1", port=pg_proxy.port)
    await save_variant(sandbox, name, postgres_dsn=dsn)
    pg_proxy.hold_down_after = 500_000  # pg_dump's connection (catalog, then data): mid-dump
    run = asyncio.create_task(
        daily_backup(environment=name, parts=["postgres"], retention=NO_RETENTION, return_state=True)
    )
    assert await asyncio.to_thread(pg_proxy.held.wait, 60), "pg_dump never got that far"
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'pg_dump' AND datname = %s",
            (env.postgres.dbname,),
        ).fetchall()
    pg_proxy.release.set()
    assert killed == [(True,)]
    state = await run
    assert state.is_completed(), state.message
    report = await state.result()
    [part] = report.parts
    assert part.attempts == 2
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and manifest.postgres is not None
    assert manifest.postgres.row_counts == source_row_counts(env.postgres.conninfo())


async def test_pg_connection_dropped_for_good_fails_without_manifest(
    sandbox: Sandbox, env: RunbookEnvironment, pg_proxy: FaultProxy
) -> None:
    name = f"rb-test-pg-drop-{uuid.uuid4().hex[:6]}"
    dsn = make_conninfo(env.postgres.conninfo(), host="127.0.0.1", port=pg_proxy.port)
    await save_variant(sandbox, name, postgres_dsn=dsn)
    pg_proxy.cut_down_after = 500_000  # every connection that gets that far (pg_dump's) is reset
    state = await daily_backup(environment=name, parts=["postgres"], retention=NO_RETENTION, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert "pg_dump" in message and f"127.0.0.1:{pg_proxy.port}/{env.postgres.dbname}" in message, message
    assert pg_proxy.cut_count == 2  # tried, retried once, failed
    stored = [o.key for o in list_stored(env.backups, f"daily/{name}/")]
    assert not any(k.endswith("manifest.json") for k in stored)


# ----------------------------------------------------------------------------------------------------------
# retention on the bucket


def fabricate(env: RunbookEnvironment, environment: str, when: datetime, *, manifest: bool, verified: bool) -> str:
    backup_id = when.strftime(BACKUP_ID_FORMAT)
    prefix = backup_prefix("daily", environment, backup_id)
    put_bytes(env.backups, f"{prefix}postgres/db.dump.zst", b"x" * 10, content_type="application/zstd")
    if manifest:
        doc = Manifest(
            kind="daily",
            environment=environment,
            backup_id=backup_id,
            prefix=prefix,
            bucket=env.backups.bucket_name,
            status="completed",
            started_at=when,
            completed_at=when,
            duration_s=1.0,
            objects=[],
            parts={},
        )
        put_bytes(env.backups, doc.key, doc.model_dump_json().encode())
    if verified:
        put_bytes(env.backups, f"{prefix}verified.json", b"{}")
    return backup_id


async def test_retention_with_failed_newest_deletes_nothing_and_keeps_newest_verified(
    sandbox: Sandbox,
) -> None:
    name = f"rb-test-retention-{uuid.uuid4().hex[:6]}"
    variant = await save_variant(sandbox, name, bucket_folder=f"rb-test/{name}")
    now = datetime.now(UTC).replace(microsecond=0)
    days = [now - timedelta(days=d, hours=1) for d in range(1, 11)]
    ids = [fabricate(variant, name, when, manifest=True, verified=(d == 8)) for d, when in enumerate(days, start=1)]
    old_incomplete = fabricate(variant, name, now - timedelta(days=12), manifest=False, verified=False)
    newest = fabricate(variant, name, now - timedelta(minutes=5), manifest=False, verified=False)

    def remaining() -> set[str]:
        return {o.key.split("/")[2] for o in list_stored(variant.backups, f"daily/{name}/")}

    everything = {*ids, old_incomplete, newest}
    assert remaining() == everything
    plan = await backup_retention(environment=name, keep_daily=2, keep_weekly=0, keep_monthly=0, dry_run=False)
    assert plan.to_delete == [] and plan.skipped_reason and newest in plan.skipped_reason
    assert remaining() == everything

    # the newest backup completes: now retention applies, the newest verified one stays
    fabricate(variant, name, now - timedelta(minutes=5), manifest=True, verified=False)
    dry = await backup_retention(environment=name, keep_daily=2, keep_weekly=0, keep_monthly=0, dry_run=True)
    assert not dry.applied and len(dry.to_delete) == 9 - 1 + 1  # 10 old - 1 kept daily - verified + incomplete
    assert remaining() == everything
    plan = await backup_retention(environment=name, keep_daily=2, keep_weekly=0, keep_monthly=0, dry_run=False)
    assert plan.applied
    assert remaining() == {newest, ids[0], ids[7]}  # 2 daily (today, yesterday) + the newest verified
    assert get_bytes(variant.backups, f"daily/{name}/{ids[7]}/verified.json") == b"{}"
