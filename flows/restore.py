"""The seed's "Restore Operations" as the ``restore-database`` flow.

1. an emergency backup of the live database first (``emergency/<environment>/<timestamp>/``, same code as the
   daily backup; on by default when restoring over the live database);
2. the chosen backup's manifest (the newest completed one by default; no manifest, no restore), its
   PostgreSQL dump downloaded and verified (size, SHA-256, zstd checksum) before anything is touched;
3. ``pg_restore -j`` into a scratch database created for it, or, after an approval (``pause_flow_run`` with a
   typed input) and with the API stopped (:data:`QUIESCE_HOOKS`), over the live database;
4. the restored row counts checked against the manifest's, table by table.

Dry run by default everywhere but the sandbox: it stops after step 2 and says what it would do.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import Field

from blocks.environment import RunbookEnvironment, load_environment
from kernel.redact import redact_errors
from tasks.backup.manifest import BackupError, IncompleteBackupError, Manifest
from tasks.backup.orchestration import run_backup
from tasks.backup.quiesce import QuiesceHook, ResumeApi, RunLogger, scale_api_to_zero
from tasks.backup.report import RestoreReport, artifact_slug, emit_backup_event, emit_restore_event
from tasks.backup.restore import (
    check_database_name,
    check_row_counts,
    count_table_rows,
    create_database,
    download_objects,
    find_backup,
    restore_archive,
    scratch_database_name,
)
from tasks.reporting import describe_error, publish_markdown

#: How often a paused run checks for its approval (seconds).
APPROVAL_POLL_INTERVAL_S = 10

#: Called, in order, right before ``pg_restore`` runs over the live database (:mod:`tasks.backup.quiesce`).
QUIESCE_HOOKS: list[QuiesceHook] = [scale_api_to_zero]


class RestoreApproval(RunInput):
    """What an operator fills in to let the restore overwrite the live database."""

    approve: bool = Field(default=False, description="Restore over the live database")
    confirm_database: str = Field(default="", description="Type the live database's name to confirm")
    reason: str = Field(default="", max_length=500, description="Why (incident id, ticket)")


class RestoreNotApprovedError(BackupError):
    def __init__(self, why: str) -> None:
        super().__init__(f"restore over the live database not approved: {why}", transient=False)


@flow(name="restore-database", log_prints=False)
@redact_errors
async def restore_database(
    environment: str = "sandbox",
    backup_id: str | None = None,
    kind: Literal["daily", "emergency"] = "daily",
    target: Literal["scratch", "live"] = "scratch",
    scratch_database: str | None = None,
    dry_run: bool | None = None,
    emergency_backup: bool | None = None,
    jobs: Annotated[int, Field(ge=1, le=16)] = 2,
    approval_timeout_s: Annotated[int, Field(ge=60, le=86400)] = 3600,
) -> RestoreReport:
    """Restore ``environment``'s PostgreSQL database from backup ``backup_id`` (``YYYYMMDDTHHMMSSZ``; default:
    the newest completed one) into a new scratch database (``scratch_database``, default
    ``<db>_restore_<backup id>``) or over the live one (``target="live"``: after approval, API stopped).
    ``emergency_backup`` (default: on for live) backs the live database up first. ``dry_run`` (default: on
    everywhere but the sandbox) verifies the backup and stops."""
    logger = get_run_logger()
    started = time.perf_counter()
    env = await load_environment(environment)
    dry = env.dry_run_by_default if dry_run is None else dry_run
    take_emergency = (target == "live") if emergency_backup is None else emergency_backup
    try:
        manifest: Manifest = await find_backup(env.backups, kind, environment, backup_id)
    except Exception as err:
        emit_restore_event(
            environment, "failed", {"backup_id": backup_id, "target": target, "error": describe_error(err)}
        )
        raise
    database = (
        env.postgres.dbname
        if target == "live"
        else check_database_name(
            scratch_database or scratch_database_name(env.postgres.dbname, "restore", manifest.backup_id)
        )
    )
    report = RestoreReport(
        environment=environment,
        backup_prefix=manifest.prefix,
        backup_completed_at=manifest.completed_at,
        target=target,
        database=database,
        dry_run=dry,
    )
    try:
        await _restore(env, environment, manifest, report, logger, take_emergency, jobs, approval_timeout_s)
    except BaseException as err:
        report.status = "failed"
        report.error = describe_error(err)
        raise
    finally:
        report.duration_s = round(time.perf_counter() - started, 3)
        await publish_markdown(
            f"restore-{artifact_slug(environment)}", report.to_markdown(), f"Database restore of {environment}"
        )
        if not dry or report.status == "failed":
            emit_restore_event(
                environment,
                report.status,
                {
                    "backup": manifest.prefix,
                    "target": target,
                    "database": database,
                    "emergency_backup": report.emergency_backup,
                    "error": report.error,
                },
            )
    return report


async def _restore(
    env: RunbookEnvironment,
    environment: str,
    manifest: Manifest,
    report: RestoreReport,
    logger: RunLogger,
    take_emergency: bool,
    jobs: int,
    approval_timeout_s: int,
) -> None:
    postgres = manifest.postgres
    objects = manifest.objects_of("postgres")
    if postgres is None or len(objects) != 1:
        raise IncompleteBackupError(manifest.prefix, "it holds no PostgreSQL dump")
    report.expected_rows = dict(postgres.row_counts)
    if postgres.database != env.postgres.dbname:
        report.notes.append(f"the backup is of database {postgres.database}, restored as {report.database}")

    if take_emergency and not report.dry_run:
        logger.info("Emergency backup of %s before the restore", env.postgres.safe_address)
        emergency, failure = await run_backup(env, environment, "emergency", ["postgres"])
        emit_backup_event(emergency)
        if failure is not None:
            raise BackupError(
                f"emergency backup failed, nothing restored: {describe_error(failure)}",
                hint="fix the backup first, or pass emergency_backup=false knowingly",
            ) from failure
        report.emergency_backup = emergency.prefix

    with tempfile.TemporaryDirectory(prefix="rb-restore-") as tmp:
        logger.info("Downloading and verifying %s", ", ".join(o.key for o in objects))
        [archive] = await download_objects(env.backups, objects, Path(tmp))
        report.verified_objects = [o.key for o in objects]
        if report.dry_run:
            report.status = "dry-run"
            live = " after an emergency backup and an approval, with the API stopped" if report.target == "live" else ""
            report.notes.append(
                f"dry run: would pg_restore -j {jobs} into {report.target} database {report.database}{live}"
            )
            return

        resumes: list[ResumeApi] = []
        if report.target == "live":
            approval = await apause_flow_run(
                wait_for_input=RestoreApproval,
                timeout=approval_timeout_s,
                poll_interval=APPROVAL_POLL_INTERVAL_S,
                key="approve-live-restore",
            )
            if not approval.approve:
                raise RestoreNotApprovedError("the approval form said no")
            if approval.confirm_database != report.database:
                raise RestoreNotApprovedError(
                    f"the confirmation {approval.confirm_database!r} is not the database name {report.database!r}"
                )
            report.approved_by_reason = approval.reason or None
            for hook in QUIESCE_HOOKS:
                resume = await hook(env, logger)
                if resume is not None:
                    resumes.append(resume)
            logger.warning("Restoring %s over the live database %s", manifest.prefix, env.postgres.safe_address)
            await restore_archive(env.postgres, archive, dbname=report.database, jobs=jobs, clean=True)
        else:
            await create_database(env.postgres, report.database)
            logger.info("Restoring %s into the scratch database %s", manifest.prefix, report.database)
            await restore_archive(env.postgres, archive, dbname=report.database, jobs=jobs)

    report.restored_rows = await count_table_rows(env.postgres, report.database, list(report.expected_rows))
    if not report.expected_rows:
        report.notes.append("the manifest has no row counts: nothing to compare")
    check_row_counts(report.database, report.expected_rows, report.restored_rows)
    for resume in reversed(resumes):
        await resume()
    report.notes.append(f"restored at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; row counts match the backup")
