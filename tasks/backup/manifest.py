"""What a backup is on S3: its prefix, its objects, its manifest (written last), and the errors of backups.

Layout (keys relative to the bucket block's folder)::

    <kind>/<environment>/<YYYYMMDDTHHMMSSZ>/postgres/<database>.dump.zst   pg_dump -Fc -Z0, zstd
    <kind>/<environment>/<YYYYMMDDTHHMMSSZ>/redis/dump.rdb.zst              the RDB, zstd
    <kind>/<environment>/<YYYYMMDDTHHMMSSZ>/manifest.json                   written last: no manifest = incomplete
    <kind>/<environment>/<YYYYMMDDTHHMMSSZ>/verified.json                   written by a later verify flow

``kind`` is ``daily`` (the scheduled backup), ``emergency`` (taken before a restore), ``schema``, ``pre-deploy`` or
``weekly-logs`` (the weekly maintenance's 168 h archive of the API's logs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from kernel.errors import RunbookError

BackupKind = Literal["daily", "emergency", "schema", "pre-deploy", "weekly-logs"]
BACKUP_ID_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST_NAME = "manifest.json"
VERIFIED_NAME = "verified.json"
MANIFEST_FORMAT_VERSION = 1


class BackupError(RunbookError):
    system = "backup"


class BackupCancelledError(BackupError):
    """A part stopped because another part of the same backup failed."""

    def __init__(self, part: str) -> None:
        super().__init__(f"{part}: stopped because another part of the backup failed", transient=False)


class IncompleteBackupError(BackupError):
    """The backup has no manifest, or its manifest does not say completed: it must not be restored."""

    def __init__(self, prefix: str, why: str) -> None:
        self.prefix = prefix
        super().__init__(f"backup {prefix} is not usable: {why}", hint="pick another backup", transient=False)


class CorruptObjectError(BackupError):
    """A stored object does not match its manifest entry (size, SHA-256) or cannot be decompressed."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(
            f"backup object {key} is corrupt: {problem}",
            hint="nothing was restored; restore an older backup and check the bucket's storage",
            transient=False,
        )


class RowCountMismatchError(BackupError):
    """The restored database does not hold the rows the manifest counted."""

    def __init__(self, database: str, mismatches: dict[str, tuple[int, int | None]]) -> None:
        self.mismatches = mismatches
        shown = ", ".join(
            f"{table} expected {want} got {'missing' if got is None else got}"
            for table, (want, got) in sorted(mismatches.items())[:5]
        )
        more = f" and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
        super().__init__(
            f"restored database {database} differs from the backup in {len(mismatches)} table(s): {shown}{more}",
            hint="inspect pg_restore's output; do not put the API back on this database",
            transient=False,
        )


def new_backup_id(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime(BACKUP_ID_FORMAT)


def parse_backup_id(backup_id: str) -> datetime | None:
    try:
        return datetime.strptime(backup_id, BACKUP_ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def environment_prefix(kind: BackupKind, environment: str) -> str:
    return f"{kind}/{environment}/"


def backup_resource(environment: str, kind: str) -> dict[str, str]:
    """The Prefect event resource of an environment's backups (what the 26 h automation matches on)."""
    return {
        "prefect.resource.id": f"runbooks.backup.{environment}",
        "prefect.resource.name": f"{environment} backups",
        "runbooks.backup.kind": kind,
    }


def backup_prefix(kind: BackupKind, environment: str, backup_id: str) -> str:
    """``daily/<environment>/<YYYYMMDDTHHMMSSZ>/``."""
    return f"{environment_prefix(kind, environment)}{backup_id}/"


class BackupObject(BaseModel):
    """One stored object of a backup, as the manifest lists it."""

    key: str
    part: str
    format: str = Field(description="pg_dump-custom, pg_dump-schema-sql, redis-rdb, ...")
    size: int = Field(description="stored (compressed) bytes")
    sha256: str = Field(description="SHA-256 of the stored bytes")
    raw_size: int = Field(description="bytes before compression")
    compression: Literal["zstd"] = "zstd"
    compression_level: int
    encrypted: bool = Field(
        default=False, description="an encrypted envelope (Kubernetes Secrets): the part's info says the cipher and key"
    )
    s3_parts: int
    started_at: datetime
    duration_s: float

    @property
    def throughput_mib_s(self) -> float:
        return self.raw_size / 2**20 / self.duration_s if self.duration_s > 0 else 0.0


class PostgresInfo(BaseModel):
    address: str
    database: str
    server_version: str
    pg_dump_version: str
    database_size_bytes: int
    snapshot: str | None = Field(description="exported snapshot shared by pg_dump and the row counts")
    row_counts: dict[str, int] = Field(default_factory=dict, description="schema.table → exact rows in the snapshot")


class RedisInfo(BaseModel):
    address: str
    db: int
    redis_version: str
    key_count: int = Field(description="keys of the block's database when the RDB was taken")
    keyspace: dict[int, int] = Field(description="keys per database (the RDB holds every database)")
    bgsave_duration_s: float | None = Field(default=None, description="a separate BGSAVE before the sync, if any")
    lastsave: datetime = Field(description="LASTSAVE after the RDB was fetched")
    snapshot: str = Field(default="bgsave, then sync", description="how the RDB was taken")


class PartResult(BaseModel):
    """What one part of a backup stored, and what it knows about its source (versions, counts)."""

    name: str
    objects: list[BackupObject]
    info: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime
    duration_s: float
    attempts: int = 1


class Manifest(BaseModel):
    """``manifest.json``: the proof a backup is complete, and everything needed to check a restore."""

    format_version: int = MANIFEST_FORMAT_VERSION
    kind: BackupKind
    environment: str
    backup_id: str
    prefix: str
    bucket: str
    status: Literal["completed", "failed"]
    started_at: datetime
    completed_at: datetime
    duration_s: float
    objects: list[BackupObject]
    parts: dict[str, dict[str, Any]] = Field(description="part name → what that part recorded")
    tools: dict[str, str] = Field(default_factory=dict)
    flow_run_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.prefix}{MANIFEST_NAME}"

    @property
    def postgres(self) -> PostgresInfo | None:
        data = self.parts.get("postgres")
        return PostgresInfo.model_validate(data) if data else None

    @property
    def redis(self) -> RedisInfo | None:
        data = self.parts.get("redis")
        return RedisInfo.model_validate(data) if data else None

    def objects_of(self, part: str) -> list[BackupObject]:
        return [o for o in self.objects if o.part == part]
