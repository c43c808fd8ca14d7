"""daily-backup and backup-retention against the sandbox's real PostgreSQL, Redis and S3 (moto), with faults
injected by a TCP proxy: S3 dying mid-upload, pg_dump's connection terminated or dropped mid-dump."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml
import zstandard
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from blocks.environment import RunbookEnvironment
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from blocks.registry import save_environment
from flows.backup import RetentionSettings, backup_retention, daily_backup, schema_backup
from sandbox.blocks import sandbox_environment
from sandbox.manager import Sandbox
from tasks.backup.crypto import EncryptedEnvelope
from tasks.backup.kubernetes import encrypted_objects, read_encrypted, read_log_records
from tasks.backup.manifest import BACKUP_ID_FORMAT, Manifest, backup_prefix
from tasks.backup.pipeline import download_verified
from tasks.backup.restore import read_manifest
from tasks.redis import copy_rdb_keys
from tasks.storage import get_bytes, list_stored, put_bytes
from tests.conftest import TEST_ENVIRONMENT
from tests.faults import FaultProxy

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
    assert {o.part for o in manifest.objects} == {"postgres", "redis", "kubernetes", "logs"}
    pg = manifest.postgres
    assert pg is not None and pg.snapshot and pg.server_version and pg.pg_dump_version
    assert pg.database == env.postgres.dbname
    assert pg.row_counts == source_row_counts(env.postgres.conninfo())
    assert {"public.users", "public.ai_queries", "public.audit_events"} <= set(pg.row_counts)
    rd = manifest.redis
    assert rd is not None and rd.redis_version and rd.key_count > 0 and rd.keyspace[rd.db] >= rd.key_count - 50
    assert set(manifest.parts) == {"postgres", "redis", "kubernetes", "logs"} and manifest.tools["zstandard"]
    # the report artifact, and the event the "no backup for 26 h" automation listens to
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    by_key = {a.key: a for a in artifacts}
    assert f"backup-{TEST_ENVIRONMENT}" in by_key
    markdown = str(by_key[f"backup-{TEST_ENVIRONMENT}"].data)
    assert "MiB/s" in markdown and report.backup_id in markdown and "ai_queries" in markdown
    assert by_key[f"daily-backup-progress-{TEST_ENVIRONMENT}"].data == 100.0
    found = await events(BACKUP_EVENTS, f"runbooks.backup.{TEST_ENVIRONMENT}", since)
    completed = [e for e in found if e.payload.get("backup_id") == report.backup_id]  # earlier tests back up too
    assert [e.event for e in completed] == ["backup.completed"]
    # retention ran after the backup and kept it
    assert report.retention is not None and report.retention.applied
    assert report.backup_id not in {d.backup_id for d in report.retention.to_delete}


async def test_rdb_restores_the_same_keys_into_another_db(
    completed_backup: Any, env: RunbookEnvironment, spare_redis: RedisDatabase, tmp_path: Path
) -> None:
    report, _ = completed_backup
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and manifest.redis is not None
    [rdb_object] = manifest.objects_of("redis")
    rdb = download_verified(env.backups, rdb_object, tmp_path / "dump.rdb")
    copied = copy_rdb_keys(rdb, spare_redis, source_db=manifest.redis.db)
    assert copied > 0
    live = redis.Redis.from_url(env.redis.url.get_secret_value())
    restored = redis.Redis.from_url(spare_redis.url.get_secret_value())
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
    assert set(report.planned) == {"bucket", "postgres", "redis", "kubernetes", "logs"}
    assert "pg_dump -Fc" in report.planned["postgres"] and "SYNC" in report.planned["redis"]
    assert (
        "production: " in report.planned["kubernetes"]
        and "Secrets encrypted with AES-256-GCM" in (report.planned["kubernetes"])
    )
    assert "logs of the last 24 h" in report.planned["logs"]
    assert list_stored(env.backups, report.prefix) == []


async def test_compression_level_is_a_parameter_recorded_per_object(env: RunbookEnvironment) -> None:
    from prefect.exceptions import ParameterTypeError

    report = await daily_backup(
        environment=TEST_ENVIRONMENT, parts=["postgres"], retention=NO_RETENTION, compression_level=1
    )
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and [o.compression_level for o in manifest.objects] == [1]
    with pytest.raises(ParameterTypeError, match="compression_level"):
        await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres"], compression_level=0)


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


# ----------------------------------------------------------------------------------------------------------
# Kubernetes (Secrets encrypted client-side) and application logs


async def seeded_secret_values(admin_kubeconfig: Path, namespace: str = "production") -> dict[str, dict[str, str]]:
    """The Secrets of ``namespace`` as the cluster admin reads them: name → key → value (decoded)."""
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as k8s_config

    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(admin_kubeconfig), client_configuration=configuration)
    async with k8s.ApiClient(configuration) as api:
        secrets = await k8s.CoreV1Api(api).list_namespaced_secret(namespace)
    return {
        s.metadata.name: {k: base64.b64decode(v).decode(errors="replace") for k, v in (s.data or {}).items()}
        for s in secrets.items
        if s.type != "kubernetes.io/service-account-token"
    }


def needles(values: dict[str, dict[str, str]]) -> dict[str, bytes]:
    """What must never be found in clear: each secret value (long enough not to match by chance) and its base64."""
    found: dict[str, bytes] = {}
    for name, data in values.items():
        for key, value in data.items():
            if len(value) >= 12:
                found[f"{name}/{key}"] = value.encode()
                found[f"{name}/{key} (base64)"] = base64.b64encode(value.encode())
                if "\n" in value:  # PEM: a single line of it is a leak too
                    line = max(value.splitlines(), key=len)
                    found[f"{name}/{key} (a line)"] = line.encode()
    return found


def leaks(data: bytes | str, where: str, secret_needles: dict[str, bytes]) -> list[str]:
    blob = data.encode() if isinstance(data, str) else data
    return [f"{name} in {where}" for name, needle in secret_needles.items() if needle in blob]


def unzstd(data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError:
        return b""


async def flow_run_logs(flow_run_id: str) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    messages: list[str] = []
    for _ in range(20):
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
        messages = [log.message for log in logs]
        if any("Application logs of" in m for m in messages):
            break
        await asyncio.sleep(0.5)
    return messages


async def all_events_since(since: datetime) -> list[Any]:
    async with get_client() as client:
        page = await client.read_events(EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
        found = list(page.events)
        while page.next_page:
            page = await client.read_events_page(page.next_page)
            found.extend(page.events)
    return found


async def test_kubernetes_and_logs_parts_encrypt_secrets_and_leak_none(
    completed_backup: Any, env: RunbookEnvironment, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import get_current_settings

    report, since = completed_backup
    manifest = await read_manifest(env.backups, report.prefix)
    assert manifest is not None and manifest.flow_run_id
    base = f"{report.prefix}kubernetes/production/"
    by_key = {o.key: o for o in manifest.objects}
    assert {o.key for o in manifest.objects_of("kubernetes")} == {
        f"{base}k8s-resources.yaml.zst",
        f"{base}configmaps.yaml.zst",
        f"{base}custom-resources.yaml.zst",
        f"{base}secrets.yaml.enc.zst",
    }
    assert [o.key for o in manifest.objects_of("logs")] == [f"{report.prefix}logs/production/application.ndjson.zst"]
    # the manifest says which object is encrypted, with what, under which key
    assert [o.key for o in encrypted_objects(manifest)] == [f"{base}secrets.yaml.enc.zst"]
    assert [o.key for o in manifest.objects if o.encrypted] == [f"{base}secrets.yaml.enc.zst"]
    assert by_key[f"{base}secrets.yaml.enc.zst"].format == "k8s-secrets-yaml+aes-256-gcm-envelope"
    k8s_info = manifest.parts["kubernetes"]
    assert env.backup_encryption is not None
    assert k8s_info["secrets"] == "encrypted" and k8s_info["encryption"] == {
        "cipher": "AES-256-GCM",
        "key_wrap": "AES-256-KW",
        "key_id": env.backup_encryption.key_id,
        "key_fingerprint": env.backup_encryption.fingerprint,
        "objects": [f"{base}secrets.yaml.enc.zst"],
    }
    [ns_info] = k8s_info["namespaces"]
    assert ns_info["namespace"] == "production" and ns_info["counts"]["deployments"] == 4
    assert ns_info["counts"]["secrets"] == 3 and ns_info["counts"]["configmaps"] >= 7

    # the non-secret YAML is what `kubectl get all` / `get configmaps` print, without any Secret
    resources = yaml.safe_load(
        download_verified(env.backups, by_key[f"{base}k8s-resources.yaml.zst"], tmp_path / "r").read_text()
    )
    kinds = {i["kind"] for i in resources["items"]}
    assert {"Deployment", "ReplicaSet", "Pod", "Service", "HorizontalPodAutoscaler"} <= kinds and "Secret" not in kinds
    configmaps = yaml.safe_load(
        download_verified(env.backups, by_key[f"{base}configmaps.yaml.zst"], tmp_path / "c").read_text()
    )
    assert "ai-multimodel-config" in {i["metadata"]["name"] for i in configmaps["items"]}
    # cert-manager's Certificate, which `kubectl get all` leaves out
    custom = yaml.safe_load(
        download_verified(env.backups, by_key[f"{base}custom-resources.yaml.zst"], tmp_path / "x").read_text()
    )
    [certificate] = custom["items"]
    assert (certificate["apiVersion"], certificate["kind"]) == ("cert-manager.io/v1", "Certificate")
    assert "resourceVersion" not in certificate["metadata"] and ns_info["counts"]["certificates.cert-manager.io"] == 1

    # the Secrets decrypt back to exactly what the cluster holds
    seeded = await seeded_secret_values(admin_kubeconfig)
    assert {"ai-multimodel-secrets", "postgresql-credentials", "ai-multimodel-tls"} <= set(seeded)
    plain = await asyncio.to_thread(
        read_encrypted, env.backups, by_key[f"{base}secrets.yaml.enc.zst"], env.backup_encryption
    )
    restored = yaml.safe_load(plain.get_secret_value())
    assert {
        i["metadata"]["name"]: {
            k: base64.b64decode(v).decode(errors="replace") for k, v in (i.get("data") or {}).items()
        }
        for i in restored["items"]
    } == seeded
    envelope = EncryptedEnvelope.from_bytes(
        download_verified(env.backups, by_key[f"{base}secrets.yaml.enc.zst"], tmp_path / "e").read_bytes()
    )
    assert envelope.context == {
        "environment": TEST_ENVIRONMENT,
        "backup_id": report.backup_id,
        "namespace": "production",
        "content": "kubectl get secrets -o yaml",
    }

    # the logs: every Deployment's pods, one JSON object per line, from the last 24 h
    logs_path = download_verified(env.backups, manifest.objects_of("logs")[0], tmp_path / "logs.ndjson")
    records = list(read_log_records(logs_path))
    assert {r["deployment"] for r in records} == {"ai-multimodel-api", "ai-multimodel-frontend", "postgresql", "redis"}
    api_pods = {r["pod"] for r in records if r["deployment"] == "ai-multimodel-api"}
    assert len(api_pods) == 3 and all(r["time"] and r["message"] for r in records)
    assert any("listening on 0.0.0.0:8000" in r["message"] for r in records)
    cutoff = (datetime.now(UTC) - timedelta(hours=24, minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    assert all(r["time"] >= cutoff for r in records)
    assert manifest.parts["logs"]["lines"] == len(records) and manifest.parts["logs"]["since_seconds"] == 86400

    # no seeded value anywhere in clear: S3 (every object of the bucket, raw and decompressed), the run's logs,
    # its artifacts, every event since it started, its result, and the local result storage
    secret_needles = needles(seeded)
    assert len(secret_needles) >= 12
    secret_needles["the master key"] = env.backup_encryption.key.get_secret_value().encode()
    assert leaks(plain.get_secret_value(), "decrypted secrets", secret_needles)  # the check does find them
    found: list[str] = []
    stored = list_stored(env.backups, "")
    assert len(stored) >= len(manifest.objects)
    for obj in stored:
        data = get_bytes(env.backups, obj.key) or b""
        found += leaks(data, obj.key, secret_needles) + leaks(unzstd(data), f"{obj.key} (decompressed)", secret_needles)
    messages = await flow_run_logs(manifest.flow_run_id)
    assert any("Application logs of production backed up" in m for m in messages), messages
    assert any("Kubernetes namespace production backed up" in m for m in messages), messages
    found += leaks("\n".join(messages), "the flow run's logs", secret_needles)
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(manifest.flow_run_id)]))
        )
    assert artifacts
    found += leaks("\n".join(a.model_dump_json() for a in artifacts), "the run's artifacts", secret_needles)
    assert await events(BACKUP_EVENTS, f"runbooks.backup.{TEST_ENVIRONMENT}", since)  # persisted by now
    run_events = await all_events_since(since)
    assert any(e.event == "backup.completed" for e in run_events)
    found += leaks("\n".join(e.model_dump_json() for e in run_events), "events", secret_needles)
    found += leaks(report.model_dump_json(), "the flow's result", secret_needles)
    storage = Path(get_current_settings().results.local_storage_path)
    for path in storage.rglob("*") if storage.exists() else []:
        if path.is_file():
            found += leaks(path.read_bytes(), str(path), secret_needles)
    assert found == []


async def test_kubernetes_without_encryption_key_refuses_and_writes_nothing(sandbox: Sandbox) -> None:
    name = f"rb-test-nokey-{uuid.uuid4().hex[:6]}"
    variant = sandbox_environment(sandbox.settings, sandbox.state)
    variant.backup_encryption = None
    await save_environment(variant, name)
    state = await daily_backup(environment=name, parts=["kubernetes"], retention=NO_RETENTION, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert f"'runbooks-environment/{name}'" in message and "'backup_encryption'" in message, message
    assert "never in clear" in message
    assert list_stored(variant.backups, f"daily/{name}/") == []
    # a dry run says so too, before anything is read
    dry = await daily_backup(
        environment=name, parts=["kubernetes"], dry_run=True, retention=NO_RETENTION, return_state=True
    )
    assert dry.is_failed() and "'backup_encryption'" in (dry.message or "")


async def test_parts_needing_kubernetes_are_skipped_without_it(sandbox: Sandbox) -> None:
    name = f"rb-test-nok8s-{uuid.uuid4().hex[:6]}"
    variant = sandbox_environment(sandbox.settings, sandbox.state)
    variant.kubernetes = None
    await save_environment(variant, name)
    report = await daily_backup(environment=name, parts=["kubernetes", "logs"], retention=NO_RETENTION)
    assert report.status == "completed"
    manifest = await read_manifest(variant.backups, report.prefix)
    assert manifest is not None and manifest.objects == []
    assert manifest.parts["kubernetes"]["skipped"] == manifest.parts["logs"]["skipped"]
    assert "no Kubernetes block" in manifest.parts["logs"]["skipped"]
    dry = await daily_backup(environment=name, dry_run=True, retention=NO_RETENTION)
    assert dry.planned["kubernetes"].startswith("skipped") and dry.planned["logs"].startswith("skipped")
