"""The preflight of a recovery: what the backup holds, what already exists in the target, what will be created,
skipped or refused; published before anything changes (:meth:`RecoveryPlan.to_markdown`).

Existing objects are never overwritten unless the run says so (``overwrite``), and then they are listed. A target
that is the source environment's own live namespace, database or Redis database is refused outright.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from kernel.errors import RunbookError
from tasks.backup.kubernetes import NamespaceExport, is_encrypted
from tasks.backup.manifest import BackupObject, IncompleteBackupError, Manifest
from tasks.backup.pipeline import download_verified
from tasks.dr.manifests import LeftOut, RestoreSet, restore_set

Action = Literal["create", "skip", "overwrite"]


class DisasterRecoveryError(RunbookError):
    system = "disaster-recovery"


class RecoveryRefusedError(DisasterRecoveryError):
    """The preflight refused the target: nothing was changed."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(
            "recovery refused, nothing changed: " + "; ".join(reasons),
            hint="pick another recovery namespace / environment, or pass overwrite=true knowingly",
            transient=False,
        )


class PlannedObject(BaseModel):
    kind: str
    name: str
    action: Action
    note: str = ""


class RecoveryPlan(BaseModel):
    """What a recovery will do, decided before it does anything."""

    source_environment: str
    recovery_environment: str
    backup_id: str
    backup_prefix: str
    backup_choice: str = Field(description="how the backup was picked (asked, newest verified, newest complete)")
    snapshot_at: datetime
    source_namespace: str | None = None
    namespace: str | None = None
    namespace_exists: bool = False
    objects: list[PlannedObject] = Field(default_factory=list)
    left_out: list[LeftOut] = Field(default_factory=list)
    database: str | None = None
    database_address: str | None = None
    database_exists: bool = False
    database_action: Action | None = None
    expected_rows: dict[str, int] = Field(default_factory=dict)
    redis_address: str | None = None
    redis_source_db: int | None = None
    redis_existing_keys: int = 0
    redis_action: Action | None = None
    expected_redis_keys: int | None = None
    overwrite: bool = False
    refused: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="parts of the backup not restored, and why")

    @property
    def existing(self) -> list[PlannedObject]:
        return [o for o in self.objects if o.action != "create"]

    def to_markdown(self) -> str:
        lines = [
            f"# Disaster-recovery preflight: `{self.source_environment}` → `{self.recovery_environment}`",
            "",
            f"Backup `{self.backup_prefix}` ({self.backup_choice}), snapshot {self.snapshot_at:%Y-%m-%d %H:%M:%S} UTC.",
            "",
        ]
        held = []
        if self.expected_rows:
            held.append(f"PostgreSQL: {len(self.expected_rows)} tables, {sum(self.expected_rows.values())} rows")
        if self.expected_redis_keys is not None:
            held.append(f"Redis: {self.expected_redis_keys} keys in db {self.redis_source_db}")
        if self.source_namespace:
            held.append(
                f"Kubernetes namespace {self.source_namespace}: {len(self.objects)} objects to restore, "
                f"{len(self.left_out)} left out"
            )
        lines += ["The backup holds: " + ("; ".join(held) or "nothing this recovery can restore"), ""]
        if self.refused:
            lines += ["## ⛔ Refused: nothing will change", ""] + [f"- {r}" for r in self.refused] + [""]
        lines += [
            "| part | target | exists | action |",
            "|---|---|---|---|",
        ]
        if self.namespace:
            lines.append(
                f"| namespace | `{self.namespace}` (from `{self.source_namespace}`) | "
                f"{'yes' if self.namespace_exists else 'no'} | {'label' if self.namespace_exists else 'create'} |"
            )
        if self.database:
            lines.append(
                f"| PostgreSQL | `{self.database_address}` database `{self.database}` | "
                f"{'yes' if self.database_exists else 'no'} | {self.database_action} |"
            )
        if self.redis_address:
            lines.append(
                f"| Redis | `{self.redis_address}` (db {self.redis_source_db} of the backup) | "
                f"{self.redis_existing_keys} key(s) | {self.redis_action} |"
            )
        lines.append("")
        if self.objects:
            counts = {a: sum(1 for o in self.objects if o.action == a) for a in ("create", "skip", "overwrite")}
            lines += [
                f"## Kubernetes objects: {counts['create']} to create, {counts['skip']} existing left alone, "
                f"{counts['overwrite']} to overwrite",
                "",
                "| kind | name | action | note |",
                "|---|---|---|---|",
            ]
            lines += [f"| {o.kind} | {o.name} | {o.action} | {o.note} |" for o in self.objects]
            lines.append("")
        if self.left_out:
            lines += ["## Left out (controllers recreate them)", ""]
            lines += [f"- {o.label}: {o.reason}" for o in self.left_out]
            lines.append("")
        if self.skipped:
            lines += ["## Skipped", ""] + [f"- {s}" for s in self.skipped] + [""]
        return "\n".join(lines)


class KubernetesPayload(BaseModel):
    """The backup's Kubernetes part for one namespace, downloaded: the objects to restore and the encrypted
    Secrets' object (decrypted only when they are applied)."""

    source_namespace: str
    restore: RestoreSet
    secrets_object: BackupObject | None = None


def _objects(manifest: Manifest) -> dict[str, BackupObject]:
    return {o.key: o for o in manifest.objects}


def download_kubernetes(bucket: S3Bucket, manifest: Manifest, namespace: str, dest: Path) -> KubernetesPayload | None:
    """The exported Lists of ``namespace`` (resources, ConfigMaps, custom resources), verified and parsed;
    None when the backup has no Kubernetes part for it. Blocking."""
    info = manifest.parts.get("kubernetes") or {}
    exports = [NamespaceExport.model_validate(n) for n in info.get("namespaces") or []]
    export = next((e for e in exports if e.namespace == namespace), None)
    if export is None:
        return None
    by_key = _objects(manifest)
    lists: list[dict[str, Any]] = []
    secrets_object: BackupObject | None = None
    for role, key in export.objects.items():
        obj = by_key.get(key)
        if obj is None:
            raise IncompleteBackupError(manifest.prefix, f"its manifest lists {key} for {role} but not as an object")
        if is_encrypted(obj):
            secrets_object = obj
            continue
        path = download_verified(bucket, obj, dest / f"{namespace}-{role}.yaml")
        lists.append(yaml.safe_load(path.read_text()) or {})
    return KubernetesPayload(
        source_namespace=namespace, restore=restore_set(lists, manifest.prefix), secrets_object=secrets_object
    )


async def fetch_kubernetes(bucket: S3Bucket, manifest: Manifest, namespace: str) -> KubernetesPayload | None:
    with tempfile.TemporaryDirectory(prefix="rb-dr-k8s-") as tmp:
        return await asyncio.to_thread(download_kubernetes, bucket, manifest, namespace, Path(tmp))


def check_targets(
    source: RunbookEnvironment,
    namespace: str | None,
    target_db: PostgresDatabase | None,
    database: str | None,
    target_redis: RedisDatabase | None,
) -> list[str]:
    """Why the target may not be used at all: it is the source's own live namespace, database or Redis database."""
    from tasks.dr.data import same_database, same_redis

    refused = []
    if namespace and source.kubernetes is not None and namespace == source.kubernetes.namespace:
        refused.append(f"namespace {namespace} is the source environment's live namespace")
    if target_db is not None and database and same_database(source.postgres, target_db, database):
        refused.append(f"database {source.postgres.safe_address} is the source environment's live database")
    if target_redis is not None and same_redis(source.redis, target_redis):
        refused.append(f"Redis {source.redis.safe_address} is the source environment's live Redis database")
    return refused
