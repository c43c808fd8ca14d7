"""The seed's "Daily Backup Procedures" as flows: ``daily-backup``, ``backup-retention`` and the on-demand
``schema-backup`` (the seed's ``pg_dump -s``).

1. back up the parts (PostgreSQL, Redis, Kubernetes, logs) concurrently into a new prefix of the environment's
   bucket, the manifest written last (:func:`tasks.backup.orchestration.run_backup`);
2. report it: an artifact ``backup-<environment>``, and ``backup.completed`` or ``backup.failed`` (resource
   ``runbooks.backup.<environment>``);
3. when it completed, apply retention (``backup-retention``, a subflow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.backup.manifest import BackupError, backup_resource
from tasks.backup.orchestration import run_backup
from tasks.backup.pipeline import ZSTD_LEVEL, UploadTarget
from tasks.backup.registry import DEFAULT_PARTS, BackupPart
from tasks.backup.report import BackupReport, artifact_slug, emit_backup_event
from tasks.backup.retention import (
    RetentionPlan,
    RetentionPolicy,
    apply_retention,
    clean_local_staging,
    list_backups,
    plan_retention,
)
from tasks.reporting import describe_error, emit, publish_markdown


class RetentionSettings(RetentionPolicy):
    """Retention applied at the end of a successful daily backup."""

    enabled: bool = True
    dry_run: bool | None = Field(default=None, description="None: dry run everywhere but the sandbox")


@flow(name="daily-backup", log_prints=False)
@redact_errors
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
            report.retention_error = describe_error(err)
    await publish_markdown(
        f"backup-{artifact_slug(environment)}", report.to_markdown(), f"Daily backup of {environment}"
    )
    if failure is not None:
        raise failure
    if retention_failure is not None:
        raise BackupError(
            f"backup {report.prefix} completed, but retention failed: {report.retention_error}"
        ) from retention_failure
    return report


@flow(name="schema-backup", log_prints=False)
@redact_errors
async def schema_backup(environment: str = "sandbox") -> BackupReport:
    """The seed's ``pg_dump -s``, on demand: the schema as SQL under ``schema/<environment>/<timestamp>/``."""
    env = await load_environment(environment)
    report, failure = await run_backup(env, environment, "schema", ["schema"])
    await publish_markdown(
        f"schema-backup-{artifact_slug(environment)}", report.to_markdown(), f"Schema backup of {environment}"
    )
    emit_backup_event(report)
    if failure is not None:
        raise failure
    return report


@flow(name="backup-retention", log_prints=False)
@redact_errors
async def backup_retention(
    environment: str = "sandbox",
    keep_daily: Annotated[int, Field(ge=1, le=366)] = 7,
    keep_weekly: Annotated[int, Field(ge=0, le=520)] = 4,
    keep_monthly: Annotated[int, Field(ge=0, le=240)] = 6,
    incomplete_grace_hours: Annotated[float, Field(ge=1, le=720)] = 24,
    kind: Literal["daily", "emergency", "schema", "pre-deploy"] = "daily",
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
    await publish_markdown(
        f"backup-retention-{artifact_slug(environment)}",
        plan.to_markdown(),
        f"Backup retention of {environment} ({kind})",
    )
    if plan.applied:
        emit(
            "backup.retention.applied",
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
