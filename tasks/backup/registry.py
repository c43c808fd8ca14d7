"""The parts a backup is made of: each a :class:`PartSpec` of :data:`PART_BUILDERS`.

A part's ``run`` streams one system's bytes through :func:`tasks.backup.pipeline.compress_and_upload` under
``ctx.prefix`` and returns a :class:`~tasks.backup.manifest.PartResult`; its ``describe`` says, for a dry run,
what it would do. Its name is in :data:`BackupPart` (and in :data:`DEFAULT_PARTS` to back it up daily). Besides
PostgreSQL and Redis, ``kubernetes`` (``kubectl get all``, ConfigMaps, and the Secrets encrypted client-side with
the environment's ``backup_encryption`` key, see :mod:`tasks.backup.crypto`) and ``logs`` (the application logs
of the last 24 h of every Deployment) back up the namespaces the runbooks cover (:func:`kubernetes_namespaces`);
in an environment without a Kubernetes block they are skipped with a log line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import get_run_logger

from blocks.environment import RunbookEnvironment
from tasks.backup.kubernetes import LOG_WINDOW_S, backup_application_logs, backup_kubernetes, plan_kubernetes
from tasks.backup.manifest import BackupKind, PartResult
from tasks.backup.parts import dump_postgres, dump_postgres_schema, dump_redis
from tasks.backup.pipeline import UploadTarget
from tasks.postgres import check_postgres
from tasks.redis import bgsave, redis_server_info

#: The parts a daily backup can take.
BackupPart = Literal["postgres", "redis", "kubernetes", "logs"]
#: "kubernetes" and "logs" back up nothing (a log line says so) where the environment has no Kubernetes block.
DEFAULT_PARTS: tuple[str, ...] = ("postgres", "redis", "kubernetes", "logs")


@dataclass
class BackupContext:
    """What a part builder gets: the environment's blocks, where to write, and the shared upload settings."""

    env: RunbookEnvironment
    environment: str
    kind: BackupKind
    backup_id: str
    prefix: str
    target: UploadTarget
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartSpec:
    name: str
    run: Callable[[BackupContext], Awaitable[PartResult]]
    describe: Callable[[BackupContext], Awaitable[str]]


async def _postgres(ctx: BackupContext) -> PartResult:
    return await dump_postgres(ctx.env.postgres, ctx.target, ctx.prefix)


async def _postgres_plan(ctx: BackupContext) -> str:
    health = await check_postgres(ctx.env.postgres)
    return (
        f"pg_dump -Fc of {health.address} (PostgreSQL {health.server_version}, "
        f"{health.database_size_bytes / 2**20:.1f} MiB on disk) with row counts in the same snapshot"
    )


async def _schema(ctx: BackupContext) -> PartResult:
    return await dump_postgres_schema(ctx.env.postgres, ctx.target, ctx.prefix)


async def _schema_plan(ctx: BackupContext) -> str:
    health = await check_postgres(ctx.env.postgres)
    return f"pg_dump -s of {health.address} (PostgreSQL {health.server_version})"


async def _redis(ctx: BackupContext) -> PartResult:
    server = await redis_server_info(ctx.env.redis)
    # the runbook's BGSAVE + LASTSAVE wait as its own step only when asked: the SYNC is a fresh snapshot already
    saved = await bgsave(ctx.env.redis) if ctx.options.get("redis_separate_bgsave") else None
    return await dump_redis(ctx.env.redis, ctx.target, ctx.prefix, server, saved)


async def _redis_plan(ctx: BackupContext) -> str:
    server = await redis_server_info(ctx.env.redis)
    return (
        f"the RDB of {server.address} over SYNC, one fresh snapshot (Redis {server.version}, "
        f"{server.key_count} keys in db {server.db}, {server.used_memory_bytes / 2**20:.1f} MiB used)"
    )


def kubernetes_namespaces(ctx: BackupContext) -> list[str]:
    """The namespaces the runbooks cover: ``options["kubernetes_namespaces"]``, else the cluster block's."""
    cluster = ctx.env.require_kubernetes()
    return list(dict.fromkeys(ctx.options.get("kubernetes_namespaces") or [cluster.namespace]))


def _skipped(ctx: BackupContext, name: str) -> PartResult | None:
    """A part that needs Kubernetes, in an environment without it: nothing to back up, said once in the log."""
    if ctx.env.kubernetes is not None:
        return None
    reason = f"environment {ctx.environment!r} has no Kubernetes block"
    get_run_logger().info("Backup part %s skipped: %s", name, reason)
    return PartResult(name=name, objects=[], info={"skipped": reason}, started_at=datetime.now(UTC), duration_s=0.0)


async def _kubernetes(ctx: BackupContext) -> PartResult:
    skipped = _skipped(ctx, "kubernetes")
    if skipped is not None:
        return skipped
    include_secrets = bool(ctx.options.get("kubernetes_secrets", True))
    key = ctx.env.require_backup_encryption() if include_secrets else None  # refuses before reading anything
    return await backup_kubernetes(
        ctx.env.require_kubernetes(),
        ctx.target,
        ctx.prefix,
        key,
        namespaces=kubernetes_namespaces(ctx),
        include_secrets=include_secrets,
        context={"environment": ctx.environment, "backup_id": ctx.backup_id},
    )


async def _kubernetes_plan(ctx: BackupContext) -> str:
    if ctx.env.kubernetes is None:
        return f"skipped: environment {ctx.environment!r} has no Kubernetes block"
    include_secrets = bool(ctx.options.get("kubernetes_secrets", True))
    key = ctx.env.require_backup_encryption() if include_secrets else None
    counts = await plan_kubernetes(ctx.env.kubernetes, kubernetes_namespaces(ctx))
    where = "; ".join(
        f"{ns}: {c['deployments']} Deployments, {c['pods']} pods, {c['configmaps']} ConfigMaps, {c['secrets']} Secrets"
        for ns, c in counts.items()
    )
    secrets = (
        f"Secrets encrypted with AES-256-GCM under a new data key wrapped by key {key.key_id!r} ({key.fingerprint})"
        if key is not None
        else "Secrets left out"
    )
    return f"kubectl get all, configmaps -o yaml of {where}; {secrets}"


async def _logs(ctx: BackupContext) -> PartResult:
    skipped = _skipped(ctx, "logs")
    if skipped is not None:
        return skipped
    return await backup_application_logs(
        ctx.env.require_kubernetes(),
        ctx.target,
        ctx.prefix,
        namespaces=kubernetes_namespaces(ctx),
        since_seconds=int(ctx.options.get("log_since_seconds") or LOG_WINDOW_S),
        deployments=ctx.options.get("log_deployments"),
    )


async def _logs_plan(ctx: BackupContext) -> str:
    if ctx.env.kubernetes is None:
        return f"skipped: environment {ctx.environment!r} has no Kubernetes block"
    counts = await plan_kubernetes(ctx.env.kubernetes, kubernetes_namespaces(ctx))
    where = ", ".join(f"{c['pods']} pods of {c['deployments']} Deployments in {ns}" for ns, c in counts.items())
    hours = int(ctx.options.get("log_since_seconds") or LOG_WINDOW_S) / 3600
    only = ctx.options.get("log_deployments")
    return f"logs of the last {hours:g} h of {where}{f' (only {only})' if only else ''}, as NDJSON"


PART_BUILDERS: dict[str, PartSpec] = {
    "postgres": PartSpec("postgres", _postgres, _postgres_plan),
    "redis": PartSpec("redis", _redis, _redis_plan),
    "schema": PartSpec("schema", _schema, _schema_plan),
    "kubernetes": PartSpec("kubernetes", _kubernetes, _kubernetes_plan),
    "logs": PartSpec("logs", _logs, _logs_plan),
}
