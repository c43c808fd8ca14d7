"""Backups of an environment to its S3 bucket: streaming parts, the manifest, restore and retention.

* :mod:`tasks.backup.manifest`: the layout on S3, the manifest model, the errors;
* :mod:`tasks.backup.pipeline`: stream → zstd → SHA-256 → S3 multipart, and the verified way back;
* :mod:`tasks.backup.parts`: one task per system (PostgreSQL, its schema, Redis);
* :mod:`tasks.backup.restore`: find, download, verify, create, restore, count;
* :mod:`tasks.backup.retention`: daily / weekly / monthly retention.
"""

from tasks.backup.manifest import (
    BackupCancelledError,
    BackupError,
    BackupKind,
    BackupObject,
    CorruptObjectError,
    IncompleteBackupError,
    Manifest,
    PartResult,
    PostgresInfo,
    RedisInfo,
    RowCountMismatchError,
    backup_prefix,
    new_backup_id,
)
from tasks.backup.pipeline import Progress, UploadTarget, compress_and_upload, download_verified
from tasks.backup.retention import RetentionPlan, RetentionPolicy, StoredBackup, plan_retention

__all__ = [
    "BackupCancelledError",
    "BackupError",
    "BackupKind",
    "BackupObject",
    "CorruptObjectError",
    "IncompleteBackupError",
    "Manifest",
    "PartResult",
    "PostgresInfo",
    "Progress",
    "RedisInfo",
    "RetentionPlan",
    "RetentionPolicy",
    "RowCountMismatchError",
    "StoredBackup",
    "UploadTarget",
    "backup_prefix",
    "compress_and_upload",
    "download_verified",
    "new_backup_id",
    "plan_retention",
]
