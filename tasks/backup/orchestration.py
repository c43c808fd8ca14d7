"""One backup, start to end: the parts run concurrently into a new prefix, the manifest written last.

A backup is a set of parts (:mod:`tasks.backup.registry`) run concurrently, each streaming one system through
zstd into S3 under ``<kind>/<environment>/<YYYYMMDDTHHMMSSZ>/`` (nothing on local disk), then ``manifest.json``
written last: a backup without a manifest is incomplete and never counts as good. A failing part stops the
others and no manifest is written. Used by ``daily-backup``, ``schema-backup`` and, for the emergency backup,
``restore-database``.
"""

from __future__ import annotations

import asyncio
import platform
import time
from datetime import UTC, datetime
from typing import Any

import prefect
import zstandard
from prefect import get_run_logger
from prefect.context import FlowRunContext

from blocks.environment import RunbookEnvironment
from tasks.backup.manifest import (
    BackupCancelledError,
    BackupError,
    BackupKind,
    Manifest,
    PartResult,
    backup_prefix,
    new_backup_id,
)
from tasks.backup.pipeline import UploadTarget
from tasks.backup.progress import ProgressTracker
from tasks.backup.registry import PART_BUILDERS, BackupContext, PartSpec
from tasks.backup.report import BackupReport, artifact_slug
from tasks.backup.restore import write_manifest
from tasks.reporting import describe_error
from tasks.storage import check_bucket, list_stored


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
    options: dict[str, Any] | None = None,
) -> tuple[BackupReport, BaseException | None]:
    """Run the parts concurrently into a new backup prefix and write the manifest when all succeeded.

    ``options`` reach the part builders (:class:`~tasks.backup.registry.BackupContext`). Returns the report and,
    when the backup failed, the exception that caused it (for the caller to raise
    after its artifact and event went out).
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
        options=dict(options or {}),
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

    async def guarded(spec: PartSpec) -> PartResult:
        try:
            return await spec.run(ctx)
        except BaseException:
            ctx.target.cancel.set()  # the other parts stop at their next chunk
            raise

    failure: BaseException | None = None
    tracker = ProgressTracker(
        key=f"{kind}-backup-progress-{artifact_slug(environment)}",
        description=f"{kind} backup {backup_id} of {environment}: {', '.join(parts)}",
        progress=ctx.target.progress,
        parts=parts,
    )
    async with tracker:
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
    report.duration_s = round(time.perf_counter() - started, 3)
    if failure is not None:
        report.status = "failed"
        report.error = describe_error(failure)
        logger.error("Backup %s failed in %s: %s", prefix, report.failed_part, report.error)
        await tracker.finish("failed", completed=False)
        return report, failure
    await tracker.finish(f"{kind} backup {backup_id} completed", completed=True)
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
