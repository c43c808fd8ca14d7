"""One backup verification, start to end: what ``verify-backup`` runs, and what ``weekly-maintenance`` runs when
the newest backup's verification is missing or stale (a flow never imports another flow; both call this).

1. the newest completed backup of the environment (or ``backup_id``), its objects downloaded and verified
   (size, SHA-256, zstd checksum) with the restore flow's tasks;
2. PostgreSQL: ``pg_restore`` into a scratch database on the *verification target* (:func:`choose_restore_server`):
   the recovery target's server (the ``<environment>-recovery`` environment block, or the one named), never the
   application's own server unless there is none (said loudly in the report, and ``pg_restore -j 1`` there); then
   Great Expectations on it: every table of the manifest present, its row count equal to the manifest's, its
   primary-key columns not null;
3. Redis: the RDB loaded by a throwaway ``redis-server`` on a free loopback port, its key count compared with
   the manifest's;
4. on success ``verified.json`` next to the manifest and ``backup.verified``; on failure
   ``backup.verification_failed`` and a Slack message. Either way an artifact ``verify-backup-<environment>``
   with every expectation, and the scratch database dropped.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger
from prefect.context import FlowRunContext

from blocks.environment import RunbookEnvironment, load_environment
from blocks.postgres import PostgresDatabase
from kernel.errors import ConfigurationError, PostgresError
from tasks.backup.manifest import IncompleteBackupError, Manifest
from tasks.backup.report import VerificationReport, artifact_slug, emit_verification_event
from tasks.backup.restore import (
    create_database,
    download_objects,
    find_backup,
    restore_archive,
    scratch_database_name,
)
from tasks.backup.verify import (
    BackupVerificationError,
    drop_database,
    new_verified_record,
    primary_key_columns,
    validate_database,
    verify_redis,
    write_verified,
)
from tasks.notify import post_slack_webhook
from tasks.reporting import describe_error, publish_markdown

#: ``restore_target`` that asks for the application's own server knowingly
SOURCE_SERVER = "source"
#: pg_restore's parallel jobs when the restore runs on the application's own server (it competes with its writes)
SOURCE_SERVER_JOBS = 1


def scratch_name(live: str, backup_id: str) -> str:
    return scratch_database_name(live, "verify", backup_id)


def server_address(db: PostgresDatabase) -> str:
    """``user@host:port`` of the block's server (no database, no password)."""
    return db.safe_address.rsplit("/", 1)[0]


def same_server(a: PostgresDatabase, b: PostgresDatabase) -> bool:
    return server_address(a).rsplit("@", 1)[-1] == server_address(b).rsplit("@", 1)[-1]


@dataclass
class RestoreServer:
    """Where the verification restores: ``admin`` is database ``postgres`` of that server (where the scratch
    database is created, looked up and dropped); ``live`` is the database there that must never be touched."""

    where: Literal["recovery", "source"]
    admin: PostgresDatabase
    live: str
    environment: str
    reason: str

    @property
    def address(self) -> str:
        return server_address(self.admin)


def _on(db: PostgresDatabase, where: Literal["recovery", "source"], environment: str, reason: str) -> RestoreServer:
    admin = PostgresDatabase(dsn=db.conninfo(dbname="postgres"), connect_timeout_s=db.connect_timeout_s)
    return RestoreServer(where=where, admin=admin, live=db.dbname, environment=environment, reason=reason)


async def choose_restore_server(env: RunbookEnvironment, environment: str, restore_target: str | None) -> RestoreServer:
    """The verification target: ``restore_target`` (an environment block whose PostgreSQL server takes the
    scratch restore, or ``"source"`` for the application's own server knowingly); by default the recovery target,
    ``<environment>-recovery``, when that block exists, else the application's own server. A named block that
    cannot be loaded is an error (nothing restored where nobody asked); so is one on the application's server."""
    if restore_target == SOURCE_SERVER:
        return _on(env.postgres, "source", environment, "asked for (restore_target=source)")
    name = restore_target or f"{environment}-recovery"
    try:
        target = await load_environment(name)
    except ConfigurationError as err:
        if restore_target is not None:
            raise
        why = f"no `{name}` environment block" if "no such block" in str(err) else describe_error(err)
        get_run_logger().warning(
            "NO VERIFICATION TARGET for %s (%s): restoring on the application's own server", environment, why
        )
        return _on(env.postgres, "source", environment, why)
    if same_server(target.postgres, env.postgres):
        raise ConfigurationError(
            f"{RunbookEnvironment.get_block_type_slug()}/{name}",
            "postgres",
            f"its server {server_address(target.postgres)} is {environment}'s own: not a verification target",
            hint=f"point {name} at another server, or pass restore_target={SOURCE_SERVER!r} to restore there knowingly",
        )
    return _on(target.postgres, "recovery", name, "the recovery target" if restore_target is None else "asked for")


async def run_verification(
    env: RunbookEnvironment,
    environment: str,
    *,
    backup_id: str | None = None,
    kind: Literal["daily", "emergency"] = "daily",
    jobs: int = 2,
    redis_key_tolerance: float = 0.0,
    notify_on_failure: bool = True,
    restore_target: str | None = None,
) -> tuple[VerificationReport, BaseException | None]:
    """Verify backup ``backup_id`` (default: the newest completed one), its PostgreSQL dump restored on the server
    :func:`choose_restore_server` picks from ``restore_target``; returns the report and, when it failed, the
    exception (for the caller to raise once it has what it needs)."""
    logger = get_run_logger()
    started = time.perf_counter()
    report = VerificationReport(environment=environment, kind=kind, backup_id=backup_id)
    failure: BaseException | None = None
    server: RestoreServer | None = None
    try:
        server = await choose_restore_server(env, environment, restore_target)
        report.restore_where, report.restore_server = server.where, server.address
        report.restore_environment, report.restore_reason = server.environment, server.reason
        report.restore_jobs = jobs if server.where == "recovery" else min(jobs, SOURCE_SERVER_JOBS)
        manifest: Manifest = await find_backup(env.backups, kind, environment, backup_id)
        report.backup_id, report.backup_prefix = manifest.backup_id, manifest.prefix
        report.backup_completed_at = manifest.completed_at
        await _verify(env, server, manifest, report, redis_key_tolerance)
        if report.failures:
            raise BackupVerificationError(manifest.prefix, report.failures)
        flow_run = FlowRunContext.get()
        run_id = str(flow_run.flow_run.id) if flow_run and flow_run.flow_run else None
        record = new_verified_record(manifest, report.database, report.redis, run_id)
        report.verified_key = await write_verified(env.backups, manifest, record)
    except BaseException as err:
        failure = err
        report.status = "failed"
        report.error = describe_error(err)
    finally:
        if report.scratch_database and server is not None:
            try:
                await drop_database(server.admin, report.scratch_database)
                report.scratch_dropped = True
            except Exception as err:  # noqa: BLE001 - reported, and the run fails below
                logger.error("Scratch database %s not dropped: %s", report.scratch_database, err)
                report.notes.append(f"dropping the scratch database failed: {describe_error(err)}")
                if failure is None:
                    failure = err
                    report.status, report.error = "failed", describe_error(err)
        report.duration_s = round(time.perf_counter() - started, 3)
        await publish_markdown(
            f"verify-backup-{artifact_slug(environment)}",
            report.to_markdown(),
            f"Backup verification of {environment}",
        )
        emit_verification_event(report)
    if failure is None:
        logger.info("Backup %s verified: %s", report.backup_prefix, report.verified_key)
        return report, None
    logger.error("Backup verification of %s failed: %s", environment, report.error)
    if notify_on_failure and isinstance(failure, Exception):
        await _notify_failure(env, report, logger)
    return report, failure


async def _verify(
    env: RunbookEnvironment,
    server: RestoreServer,
    manifest: Manifest,
    report: VerificationReport,
    redis_tolerance: float,
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
        if name == server.live:
            raise PostgresError(
                f"refusing to restore into {name} on {server.address}: it is the live database of {server.environment}",
                hint="the scratch database must be a database of its own; name another verification target",
                transient=False,
            )
        if await drop_database(server.admin, name):  # left over by a run that died: ours to drop
            report.notes.append(f"a leftover scratch database {name} was dropped first")
        await create_database(server.admin, name)
        report.scratch_database = name
        where = "the recovery target" if server.where == "recovery" else "THE APPLICATION'S OWN SERVER"
        logger.info("Restoring %s into the scratch database %s on %s %s", manifest.prefix, name, where, server.address)
        other = server.where == "recovery"  # the dump's roles may not exist there: the objects become the user's
        await restore_archive(
            server.admin, archive, dbname=name, jobs=report.restore_jobs, no_owner=other, no_privileges=other
        )
        keys = await primary_key_columns(server.admin, name)
        report.database = await validate_database(server.admin, name, dict(postgres.row_counts), keys)
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
        logger.error("Slack not notified of the failed verification: %s", describe_error(err))
