"""Which backups to keep: N daily, N weekly, N monthly (the newest completed backup of each of the N most recent
days, ISO weeks and months that have one), the newest verified backup always, and nothing at all deleted
while the newest backup is not complete. Incomplete or failed backups older than a grace period go.

:func:`plan_retention` is pure (the tests and the dry run use it as is); :func:`list_backups` and
:func:`apply_retention` are the S3 side.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel, Field

from kernel.retry import idempotent_task, read_task
from tasks.backup.manifest import (
    MANIFEST_NAME,
    VERIFIED_NAME,
    BackupKind,
    Manifest,
    environment_prefix,
    parse_backup_id,
)
from tasks.storage import delete_stored, get_bytes, list_stored

BackupStatus = Literal["completed", "failed", "incomplete"]

#: what the runbook's script left on local disk (``/backups/<date>/`` and ``backup-<date>.tar.gz``), and what an
#: interrupted restore may leave in a staging directory
LOCAL_PATTERNS = ("backup-*.tar.gz", "*.dump", "*.rdb", "*.sql", "*.sql.gz")


class LocalCleanup(BaseModel):
    directory: str
    older_than_days: float
    deleted: list[str] = Field(default_factory=list, description="deleted, or would be in a dry run")
    kept: int = 0
    dry_run: bool = True


class StoredBackup(BaseModel):
    """One backup prefix as found in the bucket."""

    backup_id: str
    prefix: str
    started_at: datetime
    object_keys: list[str]
    size: int
    status: BackupStatus = Field(description="completed / failed (manifest says so) / incomplete (no manifest)")
    verified: bool


class RetentionPolicy(BaseModel):
    keep_daily: int = Field(default=7, ge=1, le=366, description="newest backup of each of the last N days")
    keep_weekly: int = Field(default=4, ge=0, le=520, description="newest backup of each of the last N ISO weeks")
    keep_monthly: int = Field(default=6, ge=0, le=240, description="newest backup of each of the last N months")
    incomplete_grace_hours: float = Field(
        default=24, ge=1, le=24 * 30, description="incomplete or failed backups younger than this are kept"
    )


class RetentionDecision(BaseModel):
    backup_id: str
    prefix: str
    status: BackupStatus
    verified: bool
    size: int
    delete: bool
    reasons: list[str]


class RetentionPlan(BaseModel):
    environment: str
    kind: BackupKind
    policy: RetentionPolicy
    decisions: list[RetentionDecision] = Field(default_factory=list)
    skipped_reason: str | None = Field(default=None, description="why nothing at all is deleted, if so")
    applied: bool = False
    local: LocalCleanup | None = Field(default=None, description="the local staging clean-up, when asked for")

    @property
    def to_delete(self) -> list[RetentionDecision]:
        return [d for d in self.decisions if d.delete]

    def to_markdown(self) -> str:
        mode = "applied" if self.applied else "dry run, nothing deleted"
        lines = [
            f"# Backup retention of `{self.environment}` ({self.kind}): {mode}",
            "",
            f"Policy: {self.policy.keep_daily} daily, {self.policy.keep_weekly} weekly, "
            f"{self.policy.keep_monthly} monthly; incomplete backups kept {self.policy.incomplete_grace_hours:g} h.",
            "",
        ]
        if self.skipped_reason:
            lines += [f"**Nothing deleted:** {self.skipped_reason}", ""]
        lines += ["| backup | status | verified | size | action | why |", "|---|---|---|---|---|---|"]
        for d in self.decisions:
            action = "🗑 delete" if d.delete else "keep"
            lines.append(
                f"| {d.backup_id} | {d.status} | {'✅' if d.verified else ''} | {d.size / 2**20:.1f} MiB "
                f"| {action} | {'; '.join(d.reasons)} |"
            )
        if self.local is not None:
            verb = "would delete" if self.local.dry_run else "deleted"
            lines += [
                "",
                f"Local staging `{self.local.directory}`: {verb} {len(self.local.deleted)} file(s) older than "
                f"{self.local.older_than_days:g} days, kept {self.local.kept}.",
                *[f"- `{name}`" for name in self.local.deleted[:50]],
            ]
        return "\n".join(lines)


def plan_retention(
    backups: list[StoredBackup],
    policy: RetentionPolicy,
    *,
    environment: str,
    kind: BackupKind = "daily",
    now: datetime | None = None,
) -> RetentionPlan:
    """Decide, without touching anything, which backups go."""
    now = now or datetime.now(UTC)
    plan = RetentionPlan(environment=environment, kind=kind, policy=policy)
    ordered = sorted(backups, key=lambda b: b.started_at, reverse=True)
    if not ordered:
        return plan
    reasons: dict[str, list[str]] = defaultdict(list)
    newest = ordered[0]
    if newest.status != "completed":
        plan.skipped_reason = (
            f"the newest backup {newest.backup_id} is {newest.status}; nothing is deleted until a backup completes"
        )
    completed = [b for b in ordered if b.status == "completed"]
    for label, limit, bucket_of in (
        ("daily", policy.keep_daily, lambda d: d.strftime("%Y-%m-%d")),
        ("weekly", policy.keep_weekly, lambda d: f"{d.isocalendar()[0]}-W{d.isocalendar()[1]:02d}"),
        ("monthly", policy.keep_monthly, lambda d: d.strftime("%Y-%m")),
    ):
        seen: set[str] = set()
        for b in completed:
            period = bucket_of(b.started_at)
            if period in seen:
                continue
            if len(seen) >= limit:
                break
            seen.add(period)
            reasons[b.backup_id].append(f"{label} {period}")
    newest_verified = next((b for b in ordered if b.verified), None)
    if newest_verified is not None:
        reasons[newest_verified.backup_id].append("newest verified backup")
    grace = timedelta(hours=policy.incomplete_grace_hours)
    for b in ordered:
        keep = list(reasons.get(b.backup_id, []))
        delete = False
        if keep:
            pass
        elif b.status != "completed":
            if now - b.started_at > grace:
                delete = True
                keep = [f"{b.status} for more than {policy.incomplete_grace_hours:g} h"]
            else:
                keep = [f"{b.status}, younger than {policy.incomplete_grace_hours:g} h (may still be running)"]
        else:
            delete = True
            keep = ["beyond the retention policy"]
        if delete and plan.skipped_reason:
            delete = False
            keep = [*keep, "kept: the newest backup is not complete"]
        plan.decisions.append(
            RetentionDecision(
                backup_id=b.backup_id,
                prefix=b.prefix,
                status=b.status,
                verified=b.verified,
                size=b.size,
                delete=delete,
                reasons=keep,
            )
        )
    return plan


@read_task
async def list_backups(bucket: S3Bucket, environment: str, kind: BackupKind = "daily") -> list[StoredBackup]:
    """Every backup prefix of ``environment``, with its status (from its manifest) and verified marker."""
    root = environment_prefix(kind, environment)
    stored = await asyncio.to_thread(list_stored, bucket, root)
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for obj in stored:
        backup_id, _, rest = obj.key[len(root) :].partition("/")
        if rest and parse_backup_id(backup_id) is not None:
            groups[backup_id].append((obj.key, obj.size))
    backups = []
    for backup_id, objects in sorted(groups.items()):
        prefix = f"{root}{backup_id}/"
        names = {key[len(prefix) :] for key, _ in objects}
        status: BackupStatus = "incomplete"
        if MANIFEST_NAME in names:
            data = await asyncio.to_thread(get_bytes, bucket, f"{prefix}{MANIFEST_NAME}")
            if data is not None:
                try:
                    status = "completed" if Manifest.model_validate_json(data).status == "completed" else "failed"
                except ValueError:
                    status = "failed"  # unreadable manifest: not a good backup
        started_at = parse_backup_id(backup_id)
        assert started_at is not None
        backups.append(
            StoredBackup(
                backup_id=backup_id,
                prefix=prefix,
                started_at=started_at,
                object_keys=sorted(key for key, _ in objects),
                size=sum(size for _, size in objects),
                status=status,
                verified=VERIFIED_NAME in names,
            )
        )
    return backups


@idempotent_task
async def apply_retention(bucket: S3Bucket, plan: RetentionPlan, backups: list[StoredBackup]) -> list[str]:
    """Delete the backups the plan marks. Markers (manifest, verified) go first, so a deletion cut short leaves
    an incomplete backup (deleted on a later run), never one that looks complete. Returns the deleted keys."""
    by_id = {b.backup_id: b for b in backups}
    deleted: list[str] = []
    for decision in plan.to_delete:
        keys = by_id[decision.backup_id].object_keys
        markers = [k for k in keys if k.endswith(("/" + MANIFEST_NAME, "/" + VERIFIED_NAME))]
        rest = [k for k in keys if k not in markers]
        await asyncio.to_thread(delete_stored, bucket, markers)
        await asyncio.to_thread(delete_stored, bucket, rest)
        deleted += markers + rest
    return deleted


@idempotent_task
def clean_local_staging(directory: Path, older_than_days: float = 7, *, dry_run: bool = True) -> LocalCleanup:
    """The runbook's ``find /backups -name "backup-*.tar.gz" -mtime +7 -delete``, for the files our flows and the
    old script leave behind (:data:`LOCAL_PATTERNS`), never following symbolic links out of ``directory``.
    Idempotent: a file already gone is not an error."""
    root = directory.resolve()
    result = LocalCleanup(directory=str(root), older_than_days=older_than_days, dry_run=dry_run)
    if not root.is_dir():
        return result
    cutoff = time.time() - older_than_days * 86400
    candidates = {path for pattern in LOCAL_PATTERNS for path in root.rglob(pattern)}
    for path in sorted(candidates):
        if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(root):
            continue
        if path.stat().st_mtime >= cutoff:
            result.kept += 1
            continue
        result.deleted.append(str(path.relative_to(root)))
        if not dry_run:
            path.unlink(missing_ok=True)
    return result
