"""Backups of an environment to its S3 bucket: streaming parts, the manifest, restore and retention.

* :mod:`tasks.backup.manifest`: the layout on S3, the manifest model, the errors;
* :mod:`tasks.backup.pipeline`: stream → zstd → SHA-256 → S3 multipart, and the verified way back;
* :mod:`tasks.backup.parts`: one task per system (PostgreSQL, its schema, Redis);
* :mod:`tasks.backup.registry`: the parts a backup is made of (:data:`~tasks.backup.registry.PART_BUILDERS`);
* :mod:`tasks.backup.orchestration`: one backup, start to end (parts concurrently, the manifest last);
* :mod:`tasks.backup.progress`: the progress artifact of a running backup;
* :mod:`tasks.backup.report`: the reports and events of the backup, restore and verification runbooks;
* :mod:`tasks.backup.quiesce`: stopping the API around a restore over the live database;
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
