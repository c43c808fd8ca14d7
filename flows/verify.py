"""``verify-backup``, weekly: a backup counts as good once it has been restored and checked.

1. the newest completed daily backup of the environment (or ``backup_id``), its objects downloaded and verified
   (size, SHA-256, zstd checksum) with the restore flow's tasks;
2. PostgreSQL: ``pg_restore`` into a scratch database on the verification target (the recovery target's server,
   ``<environment>-recovery``, or the environment block ``restore_target`` names; without one the application's
   own server, said loudly in the report and throttled to ``-j 1``), then Great Expectations on it: every table of the
   manifest present, its row count equal to the manifest's, its primary-key columns not null;
3. Redis: the RDB loaded by a throwaway ``redis-server`` on a free loopback port, its key count compared with
   the manifest's;
4. on success ``verified.json`` next to the manifest (retention always keeps the newest verified backup) and
   ``backup.verified``; on failure ``backup.verification_failed``, a Slack message and a
   failed run. Either way an artifact ``verify-backup-<environment>`` with every expectation, and the scratch
   database dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.backup.report import VerificationReport
from tasks.backup.verification import run_verification, scratch_name

__all__ = ["scratch_name", "verify_backup"]


@flow(name="verify-backup", log_prints=False)
@redact_errors
async def verify_backup(
    environment: str = "sandbox",
    backup_id: str | None = None,
    kind: Literal["daily", "emergency"] = "daily",
    jobs: Annotated[int, Field(ge=1, le=16)] = 2,
    redis_key_tolerance: Annotated[float, Field(ge=0, le=0.5)] = 0.0,
    notify_on_failure: bool = True,
    restore_target: str | None = None,
) -> VerificationReport:
    """Restore backup ``backup_id`` (default: the newest completed one) of ``environment`` into a scratch
    PostgreSQL database and a throwaway Redis, check it against its manifest with Great Expectations and
    record it as verified. ``redis_key_tolerance`` (a fraction of the key count) allows for writes between the
    manifest's key count and the BGSAVE on a busy Redis. ``restore_target``: the environment block whose
    PostgreSQL server takes the scratch restore (default ``<environment>-recovery`` when it exists, else the
    application's own server, said loudly); ``source`` restores on the application's own server knowingly."""
    env = await load_environment(environment)
    report, failure = await run_verification(
        env,
        environment,
        backup_id=backup_id,
        kind=kind,
        jobs=jobs,
        redis_key_tolerance=redis_key_tolerance,
        notify_on_failure=notify_on_failure,
        restore_target=restore_target,
    )
    if failure is not None:
        raise failure
    return report
