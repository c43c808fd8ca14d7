"""``verify-backup``, weekly: a backup counts as good once it has been restored and checked.

1. the newest completed daily backup of the environment (or ``backup_id``), its objects downloaded and verified
   (size, SHA-256, zstd checksum) with the restore flow's tasks;
2. PostgreSQL: ``pg_restore`` into a scratch database, then Great Expectations on it: every table of the
   manifest present, its row count equal to the manifest's, its primary-key columns not null;
3. Redis: the RDB loaded by a throwaway ``redis-server`` on a free loopback port, its key count compared with
   the manifest's;
4. on success ``verified.json`` next to the manifest (retention always keeps the newest verified backup) and
   ``backup.verified``; on failure ``backup.verification_failed``, a Slack message and a
   failed run. Either way an artifact ``verify-backup-<environment>`` with every expectation, and the scratch
   database dropped.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event
from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment, load_environment
from flows.backup import artifact_slug
from tasks.backup.manifest import IncompleteBackupError, Manifest, backup_resource
from tasks.backup.restore import (
    create_database,
    download_objects,
    find_backup,
    restore_archive,
    scratch_database_name,
)
from tasks.backup.verify import (
    BackupVerificationError,
    DatabaseValidation,
    RedisVerification,
    drop_database,
    new_verified_record,
    primary_key_columns,
    validate_database,
    verify_redis,
    write_verified,
)
from tasks.notify import post_slack_webhook

VERIFIED_EVENT = "backup.verified"
FAILED_EVENT = "backup.verification_failed"


class VerificationReport(BaseModel):
    environment: str
    kind: str
    backup_id: str | None = None
    backup_prefix: str | None = None
    backup_completed_at: datetime | None = None
    status: Literal["verified", "failed"] = "verified"
    scratch_database: str | None = None
    scratch_dropped: bool = False
    verified_objects: list[str] = Field(default_factory=list)
    database: DatabaseValidation | None = None
    redis: RedisVerification | None = None
    verified_key: str | None = None
    failures: list[str] = Field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    notes: list[str] = Field(default_factory=list)

    def to_markdown(self) -> str:
        icon = "✅" if self.status == "verified" else "❌"
        lines = [f"# Backup verification of `{self.environment}`: {icon} {self.status}", ""]
        if self.backup_prefix:
            when = f" (completed {self.backup_completed_at:%Y-%m-%d %H:%M:%S} UTC)" if self.backup_completed_at else ""
            lines += [f"Backup `{self.backup_prefix}`{when}, verified in {self.duration_s:.1f} s.", ""]
        if self.error:
            lines += [f"**Error:** {self.error}", ""]
        if self.verified_objects:
            lines += [
                "Downloaded and checked (size, SHA-256, zstd): " + ", ".join(f"`{k}`" for k in self.verified_objects)
            ]
            lines.append("")
        if self.database is not None:
            ok = sum(o.success for o in self.database.outcomes)
            lines += [
                f"## PostgreSQL: {ok}/{len(self.database.outcomes)} expectations met "
                f"(scratch database `{self.database.database}`, Great Expectations)",
                "",
                "| suite | expectation | column | expected | observed | |",
                "|---|---|---|---|---|---|",
            ]
            for o in self.database.outcomes:
                expected = "all manifest tables" if isinstance(o.expected, list) else o.expected
                observed = o.error or ("—" if o.observed in (None, []) else o.observed)
                lines.append(
                    f"| {o.suite} | {o.expectation} | {o.column or ''} | {expected} | {observed} "
                    f"| {'✅' if o.success else '❌'} |"
                )
            lines.append("")
        if self.redis is not None:
            mark = "✅" if self.redis.success else "❌"
            lines += [
                f"## Redis: {mark} {self.redis.restored_keys} keys in db {self.redis.db} "
                f"(manifest: {self.redis.expected_keys}; all databases in the RDB: {self.redis.keyspace})",
                "",
            ]
        if self.failures:
            lines += ["## Failures", "", *[f"- {f}" for f in self.failures], ""]
        if self.verified_key:
            lines += [f"Recorded as verified: `{self.verified_key}`", ""]
        if self.scratch_database:
            dropped = "dropped" if self.scratch_dropped else "**not dropped: drop it by hand**"
            lines.append(f"- scratch database `{self.scratch_database}` {dropped}")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def scratch_name(live: str, backup_id: str) -> str:
    return scratch_database_name(live, "verify", backup_id)


@flow(name="verify-backup", log_prints=False)
async def verify_backup(
    environment: str = "sandbox",
    backup_id: str | None = None,
    kind: Literal["daily", "emergency"] = "daily",
    jobs: Annotated[int, Field(ge=1, le=16)] = 2,
    redis_key_tolerance: Annotated[float, Field(ge=0, le=0.5)] = 0.0,
    notify_on_failure: bool = True,
) -> VerificationReport:
    """Restore backup ``backup_id`` (default: the newest completed one) of ``environment`` into a scratch
    PostgreSQL database and a throwaway Redis, check it against its manifest with Great Expectations and
    record it as verified. ``redis_key_tolerance`` (a fraction of the key count) allows for writes between the
    manifest's key count and the BGSAVE on a busy Redis."""
    logger = get_run_logger()
    started = time.perf_counter()
    env = await load_environment(environment)
    report = VerificationReport(environment=environment, kind=kind, backup_id=backup_id)
    failure: BaseException | None = None
    try:
        manifest: Manifest = await find_backup(env.backups, kind, environment, backup_id)
        report.backup_id, report.backup_prefix = manifest.backup_id, manifest.prefix
        report.backup_completed_at = manifest.completed_at
        await _verify(env, manifest, report, jobs, redis_key_tolerance)
        if report.failures:
            raise BackupVerificationError(manifest.prefix, report.failures)
        flow_run = FlowRunContext.get()
        run_id = str(flow_run.flow_run.id) if flow_run and flow_run.flow_run else None
        record = new_verified_record(manifest, report.database, report.redis, run_id)
        report.verified_key = await write_verified(env.backups, manifest, record)
    except BaseException as err:
        failure = err
        report.status = "failed"
        report.error = f"{type(err).__name__}: {err}"
    finally:
        if report.scratch_database:
            try:
                await drop_database(env.postgres, report.scratch_database)
                report.scratch_dropped = True
            except Exception as err:  # noqa: BLE001 - reported, and the run fails below
                logger.error("Scratch database %s not dropped: %s", report.scratch_database, err)
                report.notes.append(f"dropping the scratch database failed: {err}")
                if failure is None:
                    failure = err
                    report.status, report.error = "failed", f"{type(err).__name__}: {err}"
        report.duration_s = round(time.perf_counter() - started, 3)
        await acreate_markdown_artifact(
            key=f"verify-backup-{artifact_slug(environment)}",
            markdown=report.to_markdown(),
            description=f"Backup verification of {environment}",
        )
        _emit_verification_event(report)
    if failure is None:
        logger.info("Backup %s verified: %s", report.backup_prefix, report.verified_key)
        return report
    logger.error("Backup verification of %s failed: %s", environment, report.error)
    if notify_on_failure and isinstance(failure, Exception):
        await _notify_failure(env, report, logger)
    raise failure


async def _verify(
    env: RunbookEnvironment, manifest: Manifest, report: VerificationReport, jobs: int, redis_tolerance: float
) -> None:
    logger = get_run_logger()
    postgres = manifest.postgres
    pg_objects = manifest.objects_of("postgres")
    redis_objects = manifest.objects_of("redis")
    if postgres is None or len(pg_objects) != 1:
        raise IncompleteBackupError(manifest.prefix, "it holds no PostgreSQL dump to verify")
    with tempfile.TemporaryDirectory(prefix="rb-verify-") as tmp:
        logger.info("Downloading and checking %s", ", ".join(o.key for o in pg_objects + redis_objects))
        paths = await download_objects(env.backups, pg_objects + redis_objects, Path(tmp))
        report.verified_objects = [o.key for o in pg_objects + redis_objects]
        archive, rdb = paths[0], (paths[1] if redis_objects else None)

        name = scratch_name(env.postgres.dbname, manifest.backup_id)
        if await drop_database(env.postgres, name):  # left over by a run that died: ours to drop
            report.notes.append(f"a leftover scratch database {name} was dropped first")
        await create_database(env.postgres, name)
        report.scratch_database = name
        logger.info("Restoring %s into the scratch database %s", manifest.prefix, name)
        await restore_archive(env.postgres, archive, dbname=name, jobs=jobs)
        keys = await primary_key_columns(env.postgres, name)
        report.database = await validate_database(env.postgres, name, dict(postgres.row_counts), keys)
        report.failures += [o.describe() for o in report.database.failures]
        if not postgres.row_counts:
            report.notes.append("the manifest has no row counts: only the restore itself was checked")

        redis_info = manifest.redis
        if rdb is not None and redis_info is not None:
            report.redis = await verify_redis(rdb, redis_info, tolerance=redis_tolerance)
            if not report.redis.success:
                report.failures.append(report.redis.describe())
        else:
            report.notes.append("the backup has no Redis part: Redis not verified")


def _emit_verification_event(report: VerificationReport) -> None:
    """``backup.verified`` / ``backup.verification_failed`` on ``runbooks.backup.<env>``."""
    emit_event(
        event=VERIFIED_EVENT if report.status == "verified" else FAILED_EVENT,
        resource=backup_resource(report.environment, report.kind),
        payload={
            "backup_id": report.backup_id,
            "prefix": report.backup_prefix,
            "verified": report.verified_key,
            "expectations": len(report.database.outcomes) if report.database else 0,
            "failures": report.failures,
            "redis_keys": report.redis.restored_keys if report.redis else None,
            "error": report.error,
            "duration_s": report.duration_s,
        },
    )


async def _notify_failure(env: RunbookEnvironment, report: VerificationReport, logger: Any) -> None:
    if env.slack is None:
        logger.warning("No Slack block in %s: the failure is only in the run and its event", report.environment)
        return
    details = "\n".join(f"• {f}" for f in report.failures[:10]) or f"• {report.error}"
    backup = f"`{report.backup_prefix}`" if report.backup_prefix else "no backup found"
    try:
        await post_slack_webhook(
            env.slack,
            f"❌ Backup verification failed on {report.environment}: {report.error}",
            [
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": f"*Backup verification failed* on `{report.environment}` ({backup})\n{details}",
                    },
                }
            ],
        )
    except Exception as err:  # noqa: BLE001 - the verification's own failure is raised right after
        logger.error("Slack not notified of the failed verification: %s", err)
