"""What the backup runbooks tell the world: their reports (markdown artifacts) and events, redacted on the way out
(:mod:`tasks.reporting`), under stable artifact keys (``backup-<environment>``, ``restore-<environment>``,
``verify-backup-<environment>``: :func:`artifact_slug`).

* a backup: :class:`BackupReport`, ``backup.completed`` / ``backup.failed`` (:func:`emit_backup_event`);
* a restore: :class:`RestoreReport`, ``restore.completed`` / ``restore.failed`` (:func:`emit_restore_event`);
* a verification: :class:`VerificationReport`, ``backup.verified`` / ``backup.verification_failed``
  (:func:`emit_verification_event`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.backup.manifest import BackupKind, PartResult, backup_resource
from tasks.backup.retention import RetentionPlan
from tasks.backup.verify import DatabaseValidation, RedisVerification
from tasks.reporting import emit


def artifact_slug(environment: str) -> str:
    """``environment`` as it goes into an artifact key (lower case, ``-`` for anything else)."""
    return re.sub(r"[^a-z0-9-]+", "-", environment.lower()).strip("-") or "default"


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


def emit_backup_event(report: BackupReport) -> None:
    """``backup.completed`` / ``backup.failed`` on ``runbooks.backup.<environment>`` (redacted on the way out)."""
    completed = report.status == "completed"
    emit(
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


class RestoreReport(BaseModel):
    environment: str
    backup_prefix: str
    backup_completed_at: datetime
    target: Literal["scratch", "live"]
    database: str
    dry_run: bool
    status: Literal["completed", "failed", "dry-run"] = "completed"
    emergency_backup: str | None = None
    verified_objects: list[str] = Field(default_factory=list)
    expected_rows: dict[str, int] = Field(default_factory=dict)
    restored_rows: dict[str, int | None] = Field(default_factory=dict)
    approved_by_reason: str | None = None
    duration_s: float = 0.0
    error: str | None = None
    notes: list[str] = Field(default_factory=list)

    def to_markdown(self) -> str:
        icon = {"completed": "✅", "failed": "❌", "dry-run": "🧪"}[self.status]
        lines = [
            f"# Restore of `{self.environment}` ({self.target} database `{self.database}`): {icon} {self.status}",
            "",
            f"From `{self.backup_prefix}` (completed {self.backup_completed_at:%Y-%m-%d %H:%M:%S} UTC), "
            f"{self.duration_s:.1f} s.",
            "",
        ]
        if self.emergency_backup:
            lines += [f"Emergency backup taken first: `{self.emergency_backup}`", ""]
        if self.error:
            lines += [f"**Error:** {self.error}", ""]
        if self.verified_objects:
            lines += ["Verified (size, SHA-256, zstd): " + ", ".join(f"`{k}`" for k in self.verified_objects), ""]
        if self.expected_rows:
            lines += ["| table | rows in backup | rows restored |", "|---|---|---|"]
            for table, want in self.expected_rows.items():
                got = self.restored_rows.get(table, "—") if self.restored_rows else "—"
                mark = "" if not self.restored_rows else (" ✅" if got == want else " ❌")
                lines.append(f"| {table} | {want} | {got}{mark} |")
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def emit_restore_event(environment: str, status: str, payload: dict[str, Any]) -> None:
    """``restore.completed`` / ``restore.failed`` on resource ``runbooks.database.<environment>``."""
    emit(
        f"restore.{status}",
        resource={
            "prefect.resource.id": f"runbooks.database.{environment}",
            "prefect.resource.name": f"{environment} database",
        },
        related=[{"prefect.resource.id": f"runbooks.backup.{environment}", "prefect.resource.role": "backup"}],
        payload=payload,
    )


VERIFIED_EVENT = "backup.verified"
FAILED_EVENT = "backup.verification_failed"


class VerificationReport(BaseModel):
    environment: str
    kind: str
    backup_id: str | None = None
    backup_prefix: str | None = None
    backup_completed_at: datetime | None = None
    status: Literal["verified", "failed"] = "verified"
    restore_where: Literal["recovery", "source"] | None = Field(
        default=None, description="the recovery target's server, or (loudly) the application's own"
    )
    restore_server: str | None = Field(default=None, description="user@host:port the scratch restore ran on")
    restore_environment: str | None = Field(default=None, description="the environment block naming that server")
    restore_reason: str | None = None
    restore_jobs: int | None = None
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
        if self.restore_server:
            lines += [self.restored_on, ""]
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
            on = f" on `{self.restore_server}`" if self.restore_server else ""
            lines.append(f"- scratch database `{self.scratch_database}`{on} {dropped}")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    @property
    def restored_on(self) -> str:
        """One line: which server the PostgreSQL dump was restored on (loud when it was the application's)."""
        jobs = f"pg_restore -j {self.restore_jobs}" if self.restore_jobs else "pg_restore"
        if self.restore_where == "recovery":
            return (
                f"PostgreSQL restored on the verification target `{self.restore_server}` "
                f"(environment `{self.restore_environment}`, {self.restore_reason}; {jobs}): "
                "the application's server carried no restore."
            )
        return (
            f"⚠️ **PostgreSQL RESTORED ON THE APPLICATION'S OWN SERVER** `{self.restore_server}` "
            f"({self.restore_reason}; throttled to {jobs}): the restore competed with the application's writes. "
            f"Add a `{self.environment}-recovery` environment block (the recovery target) to restore there instead."
        )


def emit_verification_event(report: VerificationReport) -> None:
    """``backup.verified`` / ``backup.verification_failed`` on ``runbooks.backup.<env>``."""
    emit(
        VERIFIED_EVENT if report.status == "verified" else FAILED_EVENT,
        resource=backup_resource(report.environment, report.kind),
        payload={
            "backup_id": report.backup_id,
            "prefix": report.backup_prefix,
            "verified": report.verified_key,
            "expectations": len(report.database.outcomes) if report.database else 0,
            "failures": report.failures,
            "redis_keys": report.redis.restored_keys if report.redis else None,
            "error": report.error,
            "restore_where": report.restore_where,
            "restore_server": report.restore_server,
            "duration_s": report.duration_s,
        },
    )
