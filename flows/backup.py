"""The seed's "Daily Backup Procedures" as flows: ``daily-backup``, ``backup-retention`` and the on-demand
``schema-backup`` (the seed's ``pg_dump -s``).

A backup is a set of parts run concurrently, each streaming one system through zstd into S3 under
``<kind>/<environment>/<YYYYMMDDTHHMMSSZ>/`` (nothing on local disk), then ``manifest.json`` written last:
a backup without a manifest is incomplete and never counts as good. A failing part stops the others, no
manifest is written, and ``backup.failed`` is emitted; a complete one emits ``backup.completed`` (resource
``runbooks.backup.<environment>``) and applies retention.

Parts are :class:`PartSpec` entries of :data:`PART_BUILDERS`: a ``run`` that streams its bytes through
:func:`tasks.backup.pipeline.compress_and_upload` under ``ctx.prefix`` and returns a
:class:`~tasks.backup.manifest.PartResult`, plus a ``describe`` for dry runs; its name is in :data:`BackupPart`
(and in :data:`DEFAULT_PARTS` to back it up daily). Besides PostgreSQL and Redis, ``kubernetes`` (``kubectl get
all``, ConfigMaps, and the Secrets encrypted client-side with the environment's ``backup_encryption`` key, see
:mod:`tasks.backup.crypto`) and ``logs`` (the application logs of the last 24 h of every Deployment) back up the
namespaces the runbooks cover (:func:`kubernetes_namespaces`); in an environment without a Kubernetes block they
are skipped with a log line.
"""

from __future__ import annotations

import asyncio
import platform
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import prefect
import zstandard
from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_progress_artifact, aupdate_progress_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event
from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment, load_environment
from tasks.backup.kubernetes import backup_application_logs, backup_kubernetes, plan_kubernetes
from tasks.backup.manifest import (
    BackupCancelledError,
    BackupError,
    BackupKind,
    Manifest,
    PartResult,
    backup_prefix,
    backup_resource,
    new_backup_id,
)
from tasks.backup.parts import dump_postgres, dump_postgres_schema, dump_redis
from tasks.backup.pipeline import ZSTD_LEVEL, Progress, UploadTarget
from tasks.backup.restore import write_manifest
from tasks.backup.retention import (
    RetentionPlan,
    RetentionPolicy,
    apply_retention,
    clean_local_staging,
    list_backups,
    plan_retention,
)
from tasks.postgres import check_postgres
from tasks.redis import bgsave, redis_server_info
from tasks.storage import check_bucket, list_stored

#: The parts a daily backup can take.
BackupPart = Literal["postgres", "redis", "kubernetes", "logs"]
#: "kubernetes" and "logs" back up nothing (a log line says so) where the environment has no Kubernetes block.
DEFAULT_PARTS: tuple[str, ...] = ("postgres", "redis", "kubernetes", "logs")
PROGRESS_INTERVAL_S = 2.0


def artifact_slug(environment: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", environment.lower()).strip("-") or "default"


@dataclass
class BackupContext:
    """What a part builder gets: the environment's blocks, where to write, and the shared upload settings."""

    env: RunbookEnvironment
    environment: str
    kind: BackupKind
    backup_id: str
    prefix: str
    target: UploadTarget
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartSpec:
    name: str
    run: Callable[[BackupContext], Awaitable[PartResult]]
    describe: Callable[[BackupContext], Awaitable[str]]


async def _postgres(ctx: BackupContext) -> PartResult:
    return await dump_postgres(ctx.env.postgres, ctx.target, ctx.prefix)


async def _postgres_plan(ctx: BackupContext) -> str:
    health = await check_postgres(ctx.env.postgres)
    return (
        f"pg_dump -Fc of {health.address} (PostgreSQL {health.server_version}, "
        f"{health.database_size_bytes / 2**20:.1f} MiB on disk) with row counts in the same snapshot"
    )


async def _schema(ctx: BackupContext) -> PartResult:
    return await dump_postgres_schema(ctx.env.postgres, ctx.target, ctx.prefix)


async def _schema_plan(ctx: BackupContext) -> str:
    health = await check_postgres(ctx.env.postgres)
    return f"pg_dump -s of {health.address} (PostgreSQL {health.server_version})"


async def _redis(ctx: BackupContext) -> PartResult:
    server = await redis_server_info(ctx.env.redis)
    # the runbook's BGSAVE + LASTSAVE wait as its own step only when asked: the SYNC is a fresh snapshot already
    saved = await bgsave(ctx.env.redis) if ctx.options.get("redis_separate_bgsave") else None
    return await dump_redis(ctx.env.redis, ctx.target, ctx.prefix, server, saved)


async def _redis_plan(ctx: BackupContext) -> str:
    server = await redis_server_info(ctx.env.redis)
    return (
        f"the RDB of {server.address} over SYNC, one fresh snapshot (Redis {server.version}, "
        f"{server.key_count} keys in db {server.db}, {server.used_memory_bytes / 2**20:.1f} MiB used)"
    )


def kubernetes_namespaces(ctx: BackupContext) -> list[str]:
    """The namespaces the runbooks cover: ``options["kubernetes_namespaces"]``, else the cluster block's."""
    cluster = ctx.env.require_kubernetes()
    return list(dict.fromkeys(ctx.options.get("kubernetes_namespaces") or [cluster.namespace]))


def _skipped(ctx: BackupContext, name: str) -> PartResult | None:
    """A part that needs Kubernetes, in an environment without it: nothing to back up, said once in the log."""
    if ctx.env.kubernetes is not None:
        return None
    reason = f"environment {ctx.environment!r} has no Kubernetes block"
    get_run_logger().info("Backup part %s skipped: %s", name, reason)
    return PartResult(name=name, objects=[], info={"skipped": reason}, started_at=datetime.now(UTC), duration_s=0.0)


async def _kubernetes(ctx: BackupContext) -> PartResult:
    skipped = _skipped(ctx, "kubernetes")
    if skipped is not None:
        return skipped
    include_secrets = bool(ctx.options.get("kubernetes_secrets", True))
    key = ctx.env.require_backup_encryption() if include_secrets else None  # refuses before reading anything
    return await backup_kubernetes(
        ctx.env.require_kubernetes(),
        ctx.target,
        ctx.prefix,
        key,
        namespaces=kubernetes_namespaces(ctx),
        include_secrets=include_secrets,
        context={"environment": ctx.environment, "backup_id": ctx.backup_id},
    )


async def _kubernetes_plan(ctx: BackupContext) -> str:
    if ctx.env.kubernetes is None:
        return f"skipped: environment {ctx.environment!r} has no Kubernetes block"
    include_secrets = bool(ctx.options.get("kubernetes_secrets", True))
    key = ctx.env.require_backup_encryption() if include_secrets else None
    counts = await plan_kubernetes(ctx.env.kubernetes, kubernetes_namespaces(ctx))
    where = "; ".join(
        f"{ns}: {c['deployments']} Deployments, {c['pods']} pods, {c['configmaps']} ConfigMaps, {c['secrets']} Secrets"
        for ns, c in counts.items()
    )
    secrets = (
        f"Secrets encrypted with AES-256-GCM under a new data key wrapped by key {key.key_id!r} ({key.fingerprint})"
        if key is not None
        else "Secrets left out"
    )
    return f"kubectl get all, configmaps -o yaml of {where}; {secrets}"


async def _logs(ctx: BackupContext) -> PartResult:
    skipped = _skipped(ctx, "logs")
    if skipped is not None:
        return skipped
    return await backup_application_logs(
        ctx.env.require_kubernetes(), ctx.target, ctx.prefix, namespaces=kubernetes_namespaces(ctx)
    )


async def _logs_plan(ctx: BackupContext) -> str:
    if ctx.env.kubernetes is None:
        return f"skipped: environment {ctx.environment!r} has no Kubernetes block"
    counts = await plan_kubernetes(ctx.env.kubernetes, kubernetes_namespaces(ctx))
    where = ", ".join(f"{c['pods']} pods of {c['deployments']} Deployments in {ns}" for ns, c in counts.items())
    return f"logs of the last 24 h of {where}, as NDJSON"


PART_BUILDERS: dict[str, PartSpec] = {
    "postgres": PartSpec("postgres", _postgres, _postgres_plan),
    "redis": PartSpec("redis", _redis, _redis_plan),
    "schema": PartSpec("schema", _schema, _schema_plan),
    "kubernetes": PartSpec("kubernetes", _kubernetes, _kubernetes_plan),
    "logs": PartSpec("logs", _logs, _logs_plan),
}


class BackupReport(BaseModel):
    environment: str
    kind: BackupKind
    backup_id: str
    prefix: str
    bucket: str
    status: Literal["completed", "failed", "dry-run"]
    started_at: datetime
    duration_s: float = 0.0
    parts: list[PartResult] = Field(default_factory=list)
    planned: dict[str, str] = Field(default_factory=dict, description="dry run: what each part would do")
    manifest_key: str | None = None
    error: str | None = None
    failed_part: str | None = None
    retention: RetentionPlan | None = None
    retention_error: str | None = None

    @property
    def stored_bytes(self) -> int:
        return sum(o.size for p in self.parts for o in p.objects)

    @property
    def raw_bytes(self) -> int:
        return sum(o.raw_size for p in self.parts for o in p.objects)

    def to_markdown(self) -> str:
        icon = {"completed": "✅", "failed": "❌", "dry-run": "🧪"}[self.status]
        lines = [
            f"# {self.kind.capitalize()} backup of `{self.environment}`: {icon} {self.status}",
            "",
            f"`s3://{self.bucket}/{self.prefix}` — started {self.started_at:%Y-%m-%d %H:%M:%S} UTC, "
            f"{self.duration_s:.1f} s",
            "",
        ]
        if self.error:
            lines += [f"**Error** ({self.failed_part or 'backup'}): {self.error}", ""]
            lines += ["No manifest was written: this backup is incomplete and will never count as good.", ""]
        if self.planned:
            lines += ["| part | would do |", "|---|---|"]
            lines += [f"| {name} | {what} |" for name, what in self.planned.items()]
            lines.append("")
        if self.parts:
            lines += [
                "| part | object | raw | stored | ratio | duration | throughput | sha256 |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for part in self.parts:
                for o in part.objects:
                    ratio = o.raw_size / o.size if o.size else 0
                    lines.append(
                        f"| {part.name} | `{o.key.removeprefix(self.prefix)}` | {o.raw_size / 2**20:.2f} MiB "
                        f"| {o.size / 2**20:.2f} MiB | {ratio:.1f}× | {o.duration_s:.1f} s "
                        f"| {o.throughput_mib_s:.1f} MiB/s | `{o.sha256[:12]}…` |"
                    )
            lines.append("")
            for part in self.parts:
                if part.name == "postgres":
                    counts = part.info.get("row_counts", {})
                    lines.append(
                        f"**PostgreSQL** {part.info.get('server_version')} (pg_dump {part.info.get('pg_dump_version')})"
                        f", {sum(counts.values())} rows in {len(counts)} tables: "
                        + ", ".join(f"{t.removeprefix('public.')} {n}" for t, n in counts.items())
                    )
                elif part.name == "redis":
                    lines.append(
                        f"**Redis** {part.info.get('redis_version')}: {part.info.get('key_count')} keys in "
                        f"db {part.info.get('db')} (all databases: {part.info.get('keyspace')}), "
                        f"snapshot: {part.info.get('snapshot', 'bgsave, then sync')}"
                    )
                if part.attempts > 1:
                    lines.append(f"- {part.name} needed {part.attempts} attempts")
            lines.append("")
        if self.manifest_key:
            lines += [f"Manifest: `{self.manifest_key}`", ""]
        if self.retention is not None:
            deleted = [d.backup_id for d in self.retention.to_delete]
            mode = "deleted" if self.retention.applied else "would delete (dry run)"
            lines.append(f"Retention: {mode} {', '.join(deleted) if deleted else 'nothing'}")
            if self.retention.skipped_reason:
                lines.append(f" — {self.retention.skipped_reason}")
        if self.retention_error:
            lines.append(f"**Retention failed:** {self.retention_error}")
        return "\n".join(lines)


async def _track_progress(progress: Progress, parts: list[str], artifact_id: Any, done: asyncio.Event) -> None:
    """Update the progress artifact every few seconds. It is only a display: if the API refuses an update, the
    tracking stops with a warning and the backup goes on."""
    last = -1.0
    while not done.is_set():
        value = progress.percent(parts)
        if value != last:
            try:
                await aupdate_progress_artifact(artifact_id, value)
            except Exception as err:  # noqa: BLE001 - logged; the backup's own outcome does not depend on it
                get_run_logger().warning("Progress artifact not updated any more: %s", err)
                return
            last = value
        try:
            await asyncio.wait_for(done.wait(), timeout=PROGRESS_INTERVAL_S)
        except TimeoutError:
            pass


def _first_error(errors: list[tuple[str, BaseException]]) -> tuple[str, BaseException]:
    """The failure that caused the others (parts stopped because of it say so)."""
    for name, err in errors:
        if not isinstance(err, BackupCancelledError):
            return name, err
    return errors[0]


async def run_backup(
    env: RunbookEnvironment,
    environment: str,
    kind: BackupKind,
    parts: list[str],
    *,
    dry_run: bool = False,
    target: UploadTarget | None = None,
) -> tuple[BackupReport, BaseException | None]:
    """Run the parts concurrently into a new backup prefix and write the manifest when all succeeded.

    Returns the report and, when the backup failed, the exception that caused it (for the caller to raise
    after its artifact and event went out). Used by ``daily-backup``, ``schema-backup`` and, for the
    emergency backup, ``restore-database``.
    """
    logger = get_run_logger()
    unknown = [p for p in parts if p not in PART_BUILDERS]
    if unknown:
        raise ValueError(f"unknown backup part(s) {unknown}; known: {sorted(PART_BUILDERS)}")
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    backup_id = new_backup_id(started_at)
    prefix = backup_prefix(kind, environment, backup_id)
    ctx = BackupContext(
        env=env,
        environment=environment,
        kind=kind,
        backup_id=backup_id,
        prefix=prefix,
        target=target or UploadTarget(bucket=env.backups),
    )
    report = BackupReport(
        environment=environment,
        kind=kind,
        backup_id=backup_id,
        prefix=prefix,
        bucket=env.backups.bucket_name,
        status="dry-run" if dry_run else "completed",
        started_at=started_at,
    )
    specs = [PART_BUILDERS[p] for p in parts]
    if dry_run:
        bucket = await check_bucket(env.backups)
        descriptions = await asyncio.gather(*(spec.describe(ctx) for spec in specs))
        report.planned = {"bucket": f"write to s3://{bucket.bucket}/{prefix} at {bucket.endpoint}"}
        report.planned.update({spec.name: text for spec, text in zip(specs, descriptions, strict=True)})
        report.duration_s = round(time.perf_counter() - started, 3)
        return report, None

    logger.info("Backing up %s of %s to s3://%s/%s", ", ".join(parts), environment, report.bucket, prefix)
    artifact_id = await acreate_progress_artifact(
        progress=0.0,
        key=f"{kind}-backup-progress-{artifact_slug(environment)}",
        description=f"{kind} backup {backup_id} of {environment}: {', '.join(parts)}",
    )
    done = asyncio.Event()
    tracker = asyncio.create_task(_track_progress(ctx.target.progress, parts, artifact_id, done))

    async def guarded(spec: PartSpec) -> PartResult:
        try:
            return await spec.run(ctx)
        except BaseException:
            ctx.target.cancel.set()  # the other parts stop at their next chunk
            raise

    failure: BaseException | None = None
    try:
        outcomes = await asyncio.gather(*(guarded(spec) for spec in specs), return_exceptions=True)
        errors = [(s.name, o) for s, o in zip(specs, outcomes, strict=True) if isinstance(o, BaseException)]
        report.parts = [o for o in outcomes if isinstance(o, PartResult)]
        if errors:
            report.failed_part, failure = _first_error(errors)
        else:
            try:
                report.manifest_key = await _finish(ctx, report, started_at)
            except Exception as err:  # noqa: BLE001 - reported as the backup's failure, then raised by the flow
                report.failed_part, failure = "manifest", err
    finally:
        done.set()
        await tracker
    report.duration_s = round(time.perf_counter() - started, 3)
    if failure is not None:
        report.status = "failed"
        report.error = f"{type(failure).__name__}: {failure}"
        logger.error("Backup %s failed in %s: %s", prefix, report.failed_part, report.error)
        await aupdate_progress_artifact(artifact_id, ctx.target.progress.percent(parts), description="failed")
        return report, failure
    await aupdate_progress_artifact(artifact_id, 100.0, description=f"{kind} backup {backup_id} completed")
    return report, None


async def _finish(ctx: BackupContext, report: BackupReport, started_at: datetime) -> str:
    """Check every object is stored with its size, then write the manifest: last, and only now."""
    objects = [o for p in report.parts for o in p.objects]
    stored = {o.key: o.size for o in await asyncio.to_thread(list_stored, ctx.env.backups, ctx.prefix)}
    missing = [o.key for o in objects if stored.get(o.key) != o.size]
    if missing:
        raise BackupError(f"objects missing or of the wrong size after upload: {', '.join(missing)}", transient=False)
    flow_run = FlowRunContext.get()
    completed_at = datetime.now(UTC)
    manifest = Manifest(
        kind=ctx.kind,
        environment=ctx.environment,
        backup_id=ctx.backup_id,
        prefix=ctx.prefix,
        bucket=ctx.env.backups.bucket_name,
        status="completed",
        started_at=started_at,
        completed_at=completed_at,
        duration_s=round((completed_at - started_at).total_seconds(), 3),
        objects=objects,
        parts={p.name: p.info for p in report.parts},
        tools={
            "python": platform.python_version(),
            "prefect": prefect.__version__,
            "zstandard": zstandard.__version__,
        },
        flow_run_id=str(flow_run.flow_run.id) if flow_run and flow_run.flow_run else None,
    )
    return await write_manifest(ctx.env.backups, manifest)


def emit_backup_event(report: BackupReport) -> None:
    completed = report.status == "completed"
    emit_event(
        event="backup.completed" if completed else "backup.failed",
        resource=backup_resource(report.environment, report.kind),
        payload={
            "backup_id": report.backup_id,
            "prefix": report.prefix,
            "bucket": report.bucket,
            "manifest": report.manifest_key,
            "parts": [p.name for p in report.parts],
            "stored_bytes": report.stored_bytes,
            "raw_bytes": report.raw_bytes,
            "duration_s": report.duration_s,
            "error": report.error,
            "failed_part": report.failed_part,
        },
    )


class RetentionSettings(RetentionPolicy):
    """Retention applied at the end of a successful daily backup."""

    enabled: bool = True
    dry_run: bool | None = Field(default=None, description="None: dry run everywhere but the sandbox")


@flow(name="daily-backup", log_prints=False)
async def daily_backup(
    environment: str = "sandbox",
    parts: list[BackupPart] | None = None,
    dry_run: bool = False,
    retention: RetentionSettings | None = None,
    compression_level: Annotated[int, Field(ge=1, le=19)] = ZSTD_LEVEL,
) -> BackupReport:
    """Back up ``parts`` (default: PostgreSQL, Redis, Kubernetes, logs) of ``environment`` concurrently to its
    bucket, write the manifest last, publish a report (artifact ``backup-<environment>``) and ``backup.completed`` /
    ``backup.failed``, then apply retention. ``dry_run`` checks every system and says what it would do.
    ``compression_level`` is zstd's (1 is fastest; the manifest records it per object)."""
    env = await load_environment(environment)
    names = list(dict.fromkeys(parts or DEFAULT_PARTS))
    target = UploadTarget(bucket=env.backups, level=compression_level)
    report, failure = await run_backup(env, environment, "daily", names, dry_run=dry_run, target=target)
    if not dry_run:
        emit_backup_event(report)
    settings = retention or RetentionSettings()
    retention_failure: BaseException | None = None
    if failure is None and settings.enabled:
        policy = RetentionPolicy.model_validate(settings.model_dump(exclude={"enabled", "dry_run"}))
        try:
            report.retention = await backup_retention(
                environment=environment,
                keep_daily=policy.keep_daily,
                keep_weekly=policy.keep_weekly,
                keep_monthly=policy.keep_monthly,
                incomplete_grace_hours=policy.incomplete_grace_hours,
                dry_run=True if dry_run else settings.dry_run,
            )
        except Exception as err:  # noqa: BLE001 - the backup itself is good; reported, then the run fails
            retention_failure = err
            report.retention_error = f"{type(err).__name__}: {err}"
    await acreate_markdown_artifact(
        key=f"backup-{artifact_slug(environment)}",
        markdown=report.to_markdown(),
        description=f"Daily backup of {environment}",
    )
    if failure is not None:
        raise failure
    if retention_failure is not None:
        raise BackupError(
            f"backup {report.prefix} completed, but retention failed: {retention_failure}"
        ) from retention_failure
    return report


@flow(name="schema-backup", log_prints=False)
async def schema_backup(environment: str = "sandbox") -> BackupReport:
    """The seed's ``pg_dump -s``, on demand: the schema as SQL under ``schema/<environment>/<timestamp>/``."""
    env = await load_environment(environment)
    report, failure = await run_backup(env, environment, "schema", ["schema"])
    await acreate_markdown_artifact(
        key=f"schema-backup-{artifact_slug(environment)}",
        markdown=report.to_markdown(),
        description=f"Schema backup of {environment}",
    )
    emit_backup_event(report)
    if failure is not None:
        raise failure
    return report


@flow(name="backup-retention", log_prints=False)
async def backup_retention(
    environment: str = "sandbox",
    keep_daily: Annotated[int, Field(ge=1, le=366)] = 7,
    keep_weekly: Annotated[int, Field(ge=0, le=520)] = 4,
    keep_monthly: Annotated[int, Field(ge=0, le=240)] = 6,
    incomplete_grace_hours: Annotated[float, Field(ge=1, le=720)] = 24,
    kind: Literal["daily", "emergency", "schema"] = "daily",
    dry_run: bool | None = None,
    local_staging_dir: str | None = None,
    local_keep_days: Annotated[float, Field(ge=0, le=365)] = 7,
) -> RetentionPlan:
    """Keep the newest backup of each of the last ``keep_daily`` days, ``keep_weekly`` weeks and
    ``keep_monthly`` months, and always the newest verified one; delete nothing while the newest backup is
    incomplete or failed; delete incomplete backups older than ``incomplete_grace_hours``. With
    ``local_staging_dir``, also the runbook's local clean-up: dump and archive files there older than
    ``local_keep_days``. ``dry_run`` (default: on everywhere but the sandbox) only lists what would go."""
    logger = get_run_logger()
    env = await load_environment(environment)
    dry = env.dry_run_by_default if dry_run is None else dry_run
    policy = RetentionPolicy(
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        keep_monthly=keep_monthly,
        incomplete_grace_hours=incomplete_grace_hours,
    )
    backups = await list_backups(env.backups, environment, kind)
    plan = plan_retention(backups, policy, environment=environment, kind=kind)
    deleted: list[str] = []
    if not dry:
        if plan.to_delete:
            deleted = await apply_retention(env.backups, plan, backups)
        plan.applied = True
    for decision in plan.decisions:
        logger.info(
            "%s %s (%s): %s",
            "DELETE" if decision.delete else "keep  ",
            decision.backup_id,
            decision.status,
            "; ".join(decision.reasons),
        )
    if plan.skipped_reason:
        logger.warning("Retention deletes nothing: %s", plan.skipped_reason)
    if local_staging_dir:
        local = clean_local_staging(Path(local_staging_dir), local_keep_days, dry_run=dry)
        plan.local = local
        logger.info(
            "local staging %s: %s %d file(s) older than %s days, kept %d",
            local.directory,
            "would delete" if dry else "deleted",
            len(local.deleted),
            local_keep_days,
            local.kept,
        )
    await acreate_markdown_artifact(
        key=f"backup-retention-{artifact_slug(environment)}",
        markdown=plan.to_markdown(),
        description=f"Backup retention of {environment} ({kind})",
    )
    if plan.applied:
        emit_event(
            event="backup.retention.applied",
            resource=backup_resource(environment, kind),
            payload={
                "deleted_backups": [d.backup_id for d in plan.to_delete],
                "deleted_objects": len(deleted),
                "deleted_local_files": len(plan.local.deleted) if plan.local else 0,
                "kept": [d.backup_id for d in plan.decisions if not d.delete],
                "skipped_reason": plan.skipped_reason,
            },
        )
    return plan
