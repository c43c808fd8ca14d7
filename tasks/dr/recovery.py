"""One recovery, start to verified: what ``disaster-recovery`` and ``dr-drill`` both run (a flow never imports another).

1. the backup: the one asked for, else the newest *verified* daily backup, else the newest complete one (said loudly);
2. the preflight (:mod:`tasks.dr.plan`): published before anything changes; a refused target stops here;
3. the restore, in Velero's order: the namespace labelled ``disaster-recovery=true``, the Secrets decrypted in this
   process, the ConfigMaps, then Services, Deployments, Ingress, HPA and Certificates; PostgreSQL (``pg_restore -j``)
   and Redis run concurrently with the Kubernetes chain, a progress artifact counting the parts done;
4. the verification: Deployments available, row counts and Redis keys equal to the manifest (each part checked as
   soon as it is restored, while the others still run), the smoke suite against the recovery environment once every
   part is restored; every failure listed, then one error.

Every phase is timed into :class:`~tasks.dr.report.DrReport`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from tasks.backup.kubernetes import read_encrypted
from tasks.backup.manifest import IncompleteBackupError, Manifest
from tasks.backup.restore import (
    check_row_counts,
    count_table_rows,
    create_database,
    download_objects,
    find_backup,
    restore_archive,
)
from tasks.backup.retention import list_backups
from tasks.backup.verify import drop_database
from tasks.dr.data import (
    count_redis_keys,
    database_exists,
    flush_redis_database,
    list_databases,
    restore_redis,
)
from tasks.dr.manifests import secret_names, secrets_for
from tasks.dr.plan import (
    Action,
    DisasterRecoveryError,
    KubernetesPayload,
    PlannedObject,
    RecoveryPlan,
    check_targets,
    fetch_kubernetes,
)
from tasks.dr.policy import DrPolicy
from tasks.dr.report import DrReport
from tasks.kubernetes.deployments import rollout_status
from tasks.kubernetes.namespaces import create_namespace
from tasks.kubernetes.restore import RESTORABLE, apply_objects, apply_secrets, list_restorable, read_namespace_labels
from tasks.reporting import describe_error, start_progress, update_progress
from tasks.smoke import run_smoke_suite


def admin_block(db: PostgresDatabase) -> PostgresDatabase:
    """The same server, database ``postgres``: where databases are created, dropped and looked up."""
    return PostgresDatabase(dsn=db.conninfo(dbname="postgres"), connect_timeout_s=db.connect_timeout_s)


@dataclass
class RecoveryTarget:
    """Where a recovery goes: the recovery environment's cluster, namespace, PostgreSQL server and database name,
    and Redis database."""

    environment: str
    env: RunbookEnvironment
    namespace: str | None
    postgres: PostgresDatabase
    database: str
    redis: RedisDatabase

    @property
    def cluster(self) -> KubernetesCluster | None:
        return self.env.kubernetes


# ------------------------------------------------------------------------------------------------- the backup
async def choose_backup(env: RunbookEnvironment, environment: str, backup_id: str | None) -> tuple[Manifest, str]:
    """The manifest to recover from, and how it was chosen."""
    if backup_id is not None:
        return await find_backup(env.backups, "daily", environment, backup_id), "asked for"
    backups = [b for b in await list_backups(env.backups, environment, "daily") if b.status == "completed"]
    if not backups:
        raise IncompleteBackupError(f"daily/{environment}/", "there is no completed daily backup under it")
    verified = [b for b in backups if b.verified]
    if verified:
        chosen = max(verified, key=lambda b: b.backup_id)
        return await find_backup(env.backups, "daily", environment, chosen.backup_id), "the newest verified backup"
    newest = max(backups, key=lambda b: b.backup_id)
    get_run_logger().warning(
        "NO VERIFIED BACKUP of %s: recovering from the newest complete one, %s, which no verify-backup has restored",
        environment,
        newest.backup_id,
    )
    manifest = await find_backup(env.backups, "daily", environment, newest.backup_id)
    return manifest, "⚠️ NO VERIFIED BACKUP: the newest complete one, never verified"


# ------------------------------------------------------------------------------------------------- preflight
async def build_plan(
    source: RunbookEnvironment,
    source_name: str,
    target: RecoveryTarget,
    manifest: Manifest,
    choice: str,
    *,
    overwrite: bool,
) -> tuple[RecoveryPlan, KubernetesPayload | None]:
    """The preflight: reads only."""
    plan = RecoveryPlan(
        source_environment=source_name,
        recovery_environment=target.environment,
        backup_id=manifest.backup_id,
        backup_prefix=manifest.prefix,
        backup_choice=choice,
        snapshot_at=manifest.started_at,
        overwrite=overwrite,
    )
    plan.refused = check_targets(source, target.namespace, target.postgres, target.database, target.redis)
    action: Action = "overwrite" if overwrite else "skip"

    async def kubernetes() -> KubernetesPayload | None:
        source_ns = source.kubernetes.namespace if source.kubernetes is not None else None
        if source_ns is None or target.cluster is None or not target.namespace:
            return None
        payload = await fetch_kubernetes(source.backups, manifest, source_ns)
        if payload is None:
            return None
        plan.source_namespace, plan.namespace = payload.source_namespace, target.namespace
        labels, secrets = await asyncio.gather(
            read_namespace_labels(target.cluster, target.namespace), _secret_names(source, payload)
        )
        plan.namespace_exists = labels is not None
        existing = (
            await list_restorable(target.cluster, target.namespace, list(RESTORABLE)) if plan.namespace_exists else {}
        )
        names = [("Secret", n) for n in secrets]
        names += [(o["kind"], str(o["metadata"]["name"])) for o in payload.restore.objects]
        for kind, name in names:
            exists = name in existing.get(kind, [])
            plan.objects.append(
                PlannedObject(
                    kind=kind,
                    name=name,
                    action=action if exists else "create",
                    note="exists in the target" + (": will be REPLACED" if overwrite else ": left as it is")
                    if exists
                    else "",
                )
            )
        plan.left_out = payload.restore.left_out
        return payload

    async def postgres() -> None:
        if manifest.postgres is None or len(manifest.objects_of("postgres")) != 1:
            return
        plan.database, plan.database_address = target.database, target.postgres.safe_address.rsplit("/", 1)[0]
        plan.database_exists = await database_exists(admin_block(target.postgres), target.database)
        plan.database_action = action if plan.database_exists else "create"
        plan.expected_rows = dict(manifest.postgres.row_counts)

    async def redis() -> None:
        if manifest.redis is None or len(manifest.objects_of("redis")) != 1:
            return
        plan.redis_address, plan.redis_source_db = target.redis.safe_address, manifest.redis.db
        plan.redis_existing_keys = await count_redis_keys(target.redis)
        plan.redis_action = action if plan.redis_existing_keys else "create"
        plan.expected_redis_keys = manifest.redis.key_count

    # the three parts' reads at once (each writes its own fields of the plan)
    payload, _, _ = await asyncio.gather(kubernetes(), postgres(), redis())
    if payload is None:
        plan.skipped.append("Kubernetes: the backup holds no export of the source namespace, or no cluster/namespace")
    if not plan.database:
        plan.skipped.append("PostgreSQL: the backup holds no dump")
    if not plan.redis_address:
        plan.skipped.append("Redis: the backup holds no RDB")
    return plan, payload


async def _secret_names(source: RunbookEnvironment, payload: KubernetesPayload) -> list[str]:
    """The names of the backup's Secrets (decrypted in memory to read them; the values go nowhere)."""
    if payload.secrets_object is None:
        return []
    key = source.require_backup_encryption()
    import yaml

    clear = await asyncio.to_thread(read_encrypted, source.backups, payload.secrets_object, key)
    names = secret_names(yaml.safe_load(clear.get_secret_value()) or {})
    del clear
    return names


# --------------------------------------------------------------------------------------------------- restore
@asynccontextmanager
async def phase(report: DrReport, name: str) -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.phases[name] = round(time.perf_counter() - started, 3)


class _Progress:
    """A progress artifact counting the restore's steps done (a display only: a refused update stops it)."""

    def __init__(self, key: str, total: int) -> None:
        self.key, self.total, self.done = key, max(total, 1), 0
        self.artifact: Any = None

    async def start(self, description: str) -> None:
        try:
            self.artifact = await start_progress(self.key, description)
        except Exception as err:  # noqa: BLE001 - only a display
            get_run_logger().warning("No progress artifact: %s", describe_error(err))

    async def step(self, what: str) -> None:
        self.done += 1
        get_run_logger().info("Restore step %d/%d done: %s", self.done, self.total, what)
        if self.artifact is not None:
            try:
                await update_progress(self.artifact, 100.0 * self.done / self.total, what)
            except Exception:  # noqa: BLE001 - only a display
                self.artifact = None


async def restore(
    source: RunbookEnvironment,
    target: RecoveryTarget,
    manifest: Manifest,
    plan: RecoveryPlan,
    payload: KubernetesPayload | None,
    policy: DrPolicy,
    report: DrReport,
    progress_key: str,
) -> None:
    """The Kubernetes chain, PostgreSQL and Redis, concurrently; the first failure cancels the others.

    Each part is checked as soon as it is restored, while the others still run (its Deployments available, its row
    counts, its keys), and the smoke suite starts once every part is restored: what they find is collected in
    ``report.verification_failures`` and :func:`verify` raises it."""
    overwrite = plan.overwrite
    steps = (4 if payload is not None else 0) + (2 if plan.database else 0) + (1 if plan.redis_address else 0)
    progress = _Progress(progress_key, steps)
    await progress.start(f"Restoring {manifest.prefix} into {target.environment}")
    restored: list[asyncio.Event] = []  # one per part: set once it is restored (or left as it was)

    async def kubernetes(done: asyncio.Event) -> None:
        assert payload is not None and target.cluster is not None and target.namespace is not None
        cluster, ns = target.cluster, target.namespace
        async with phase(report, "kubernetes"):
            created = await create_namespace(cluster, ns, labels=policy.label)
            report.namespace_created = created.created
            await progress.step(f"namespace {ns} labelled {policy.namespace_label}")
            if payload.secrets_object is not None:
                key = source.require_backup_encryption()
                clear = await asyncio.to_thread(read_encrypted, source.backups, payload.secrets_object, key)
                result = await apply_secrets(cluster, ns, secrets_for(clear, manifest.prefix), overwrite=overwrite)
                del clear
                report.add_applied(result)
            await progress.step("Secrets (decrypted in memory)")
            configmaps = [o for o in payload.restore.objects if o["kind"] == "ConfigMap"]
            report.add_applied(await apply_objects(cluster, ns, configmaps, overwrite=overwrite))
            await progress.step("ConfigMaps")
            rest = [o for o in payload.restore.objects if o["kind"] != "ConfigMap"]
            report.add_applied(await apply_objects(cluster, ns, rest, overwrite=overwrite))
            await progress.step("Services, Deployments, Ingress, HPA, Certificates")
        done.set()
        await check_deployments(target, plan, policy, report)

    async def postgres(tmp: Path, done: asyncio.Event) -> None:
        async with phase(report, "postgres"):
            admin = admin_block(target.postgres)
            download = download_objects(source.backups, manifest.objects_of("postgres"), tmp)
            if plan.database_exists:  # nothing is dropped before the dump is downloaded and checked
                [archive] = await download
                await progress.step("PostgreSQL dump downloaded and verified")
                if not overwrite:
                    report.skipped.append(f"PostgreSQL: database {target.database} exists, left as it is")
                    done.set()
                    return
                await drop_database(admin, target.database)
                report.replaced.append(f"database {target.database}")
                await create_database(admin, target.database)
            else:
                [archive] = await _with_new_database(download, admin, target.database)
                await progress.step("PostgreSQL dump downloaded and verified")
            report.database_created = True
            await restore_archive(
                target.postgres,
                archive,
                dbname=target.database,
                jobs=policy.pg_restore_jobs,
                no_owner=policy.pg_restore_no_owner,
                no_privileges=policy.pg_restore_no_privileges,
            )
            archive.unlink(missing_ok=True)  # its disk back while the others still run
            await progress.step(f"pg_restore -j {policy.pg_restore_jobs} into {target.database}")
        done.set()
        await check_rows(target, plan, policy, report)

    async def redis(tmp: Path, done: asyncio.Event) -> None:
        async with phase(report, "redis"):
            info = manifest.redis
            assert info is not None
            if plan.redis_existing_keys and not overwrite:
                report.skipped.append(
                    f"Redis: {target.redis.safe_address} holds {plan.redis_existing_keys} key(s), left as they are"
                )
                done.set()
                return
            if plan.redis_existing_keys:
                await flush_redis_database(target.redis)
                report.replaced.append(f"Redis {target.redis.safe_address} ({plan.redis_existing_keys} keys flushed)")
            [rdb] = await download_objects(source.backups, manifest.objects_of("redis"), tmp)
            copied = await restore_redis(rdb, target.redis, source_db=info.db)
            rdb.unlink(missing_ok=True)
            report.redis_restored_keys, report.redis_expired_keys = copied.restored, copied.expired
            report.redis_copy = copied
            if copied.expired:
                report.notes.append(f"Redis: {copied.expired} key(s) of the backup had expired since: not restored")
            report.redis_touched = True
            await progress.step(f"Redis db {info.db} of the backup into {target.redis.safe_address}")
        done.set()
        await check_redis(target, plan, policy, report)

    async def smoke() -> None:
        await asyncio.gather(*(e.wait() for e in restored))
        await check_smoke(target, report)

    def done() -> asyncio.Event:
        restored.append(asyncio.Event())
        return restored[-1]

    with tempfile.TemporaryDirectory(prefix="rb-dr-") as tmp_dir:
        tmp = Path(tmp_dir)
        jobs: list[Awaitable[None]] = []
        if payload is not None:
            jobs.append(kubernetes(done()))
        if plan.database:
            (tmp / "pg").mkdir()
            jobs.append(postgres(tmp / "pg", done()))
        if plan.redis_address:
            (tmp / "redis").mkdir()
            jobs.append(redis(tmp / "redis", done()))
        jobs.append(smoke())
        await _all_or_nothing(jobs)


async def _with_new_database(download: Awaitable[list[Path]], admin: PostgresDatabase, name: str) -> list[Path]:
    """The dump's download and the (new, empty) database's creation at once; when the download fails, the database
    just created is dropped again, so a later run finds the target as this one did."""
    create = asyncio.ensure_future(create_database(admin, name))
    try:
        paths = await download
    except BaseException:
        await asyncio.gather(create, return_exceptions=True)
        if create.done() and not create.cancelled() and create.exception() is None:
            await asyncio.shield(drop_database(admin, name))
        raise
    await create
    return paths


async def _all_or_nothing(jobs: list[Awaitable[None]]) -> None:
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---------------------------------------------------------------------------------------------------- verify
async def check_deployments(target: RecoveryTarget, plan: RecoveryPlan, policy: DrPolicy, report: DrReport) -> None:
    """Every restored Deployment available (within the policy's timeout); timed as phase ``verify-kubernetes``."""
    if not (target.cluster is not None and target.namespace and plan.namespace):
        return
    async with phase(report, "verify-kubernetes"):
        deployments = [o.name for o in plan.objects if o.kind == "Deployment"]
        results = await asyncio.gather(
            *[
                rollout_status(
                    target.cluster,
                    name,
                    target.namespace,
                    timeout_s=policy.deployments_timeout_s,
                    poll_s=policy.deployments_poll_s,
                )
                for name in deployments
            ],
            return_exceptions=True,
        )
        for name, result in zip(deployments, results, strict=True):
            if isinstance(result, BaseException):
                report.verification_failures.append(
                    f"Deployment {target.namespace}/{name} not available: {describe_error(result)}"
                )
            else:
                report.deployments[name] = f"{result.deployment.available}/{result.deployment.replicas} available"
        report.checks.append("deployments")


async def check_rows(target: RecoveryTarget, plan: RecoveryPlan, policy: DrPolicy, report: DrReport) -> None:
    """Exact row counts of the restored database equal to the manifest's, counted over ``pg_restore_jobs``
    connections at once; timed as phase ``verify-postgres``."""
    if not (plan.database and report.database_created):
        return
    async with phase(report, "verify-postgres"):
        tables = list(plan.expected_rows)
        lanes = max(1, min(policy.pg_restore_jobs, len(tables)))
        counted = await asyncio.gather(
            *[count_table_rows(target.postgres, target.database, tables[i::lanes]) for i in range(lanes)]
        )
        rows: dict[str, int | None] = {}
        for counts in counted:
            rows.update(counts)
        report.restored_rows = {t: rows.get(t) for t in tables}
        try:
            check_row_counts(target.database, plan.expected_rows, report.restored_rows)
        except Exception as err:  # noqa: BLE001 - listed with the others
            report.verification_failures.append(describe_error(err))
        report.checks.append("rows")


async def check_redis(target: RecoveryTarget, plan: RecoveryPlan, policy: DrPolicy, report: DrReport) -> None:
    """The target's keys against the manifest and the copy's accounting; timed as phase ``verify-redis``."""
    if not (plan.redis_address and report.redis_touched and plan.expected_redis_keys is not None):
        return
    async with phase(report, "verify-redis"):
        problem = await _verify_redis_keys(target, plan, policy, report)
        if problem:
            report.verification_failures.append(problem)
        report.checks.append("redis-keys")


async def check_smoke(target: RecoveryTarget, report: DrReport) -> None:
    """The smoke suite against the recovery environment; timed as phase ``verify-smoke``."""
    async with phase(report, "verify-smoke"):
        smoke = await run_smoke_suite(target.env.platform, target.environment)
        report.smoke = smoke.summary()
        if not smoke.passed:
            report.verification_failures.append(f"smoke suite against {target.environment}: {smoke.summary()}")
        report.checks.append("smoke")


async def verify(
    target: RecoveryTarget, manifest: Manifest, plan: RecoveryPlan, policy: DrPolicy, report: DrReport
) -> None:
    """Deployments available, row counts and Redis keys equal to the manifest, the smoke suite: the checks
    :func:`restore` has not run yet are run here; every failure listed, then one :class:`DisasterRecoveryError`."""
    pending = []
    if "deployments" not in report.checks:
        pending.append(check_deployments(target, plan, policy, report))
    if "rows" not in report.checks:
        pending.append(check_rows(target, plan, policy, report))
    if "redis-keys" not in report.checks:
        pending.append(check_redis(target, plan, policy, report))
    await asyncio.gather(*pending)
    if "smoke" not in report.checks:
        await check_smoke(target, report)
    if report.verification_failures:
        failures = report.verification_failures
        raise DisasterRecoveryError(
            f"recovery of {manifest.prefix} into {target.environment} failed verification: " + "; ".join(failures),
            hint="the recovery target is not fit to take traffic; see the disaster-recovery artifact",
            transient=False,
        )


async def _verify_redis_keys(target: RecoveryTarget, plan: RecoveryPlan, policy: DrPolicy, report: DrReport) -> str:
    """The RDB held the manifest's keys (less some whose TTL ended, see below), and the target holds every restored
    key whose TTL has not passed since.

    The target may still count a key whose TTL passed (Redis reclaims them lazily), or no longer (its active expiry
    did): its DBSIZE lies between the restored keys less those whose TTL ended by now, and the restored keys. A
    problem as text, or ``""``."""
    copy = report.redis_copy
    expected = plan.expected_redis_keys or 0
    allowed = int(expected * policy.redis_key_tolerance)
    report.redis_keys = await count_redis_keys(target.redis)
    read_at = time.time()
    if copy is None:  # no accounting of the copy (never expected): the plain comparison
        expired = report.redis_expired_keys or 0
        ok = abs(report.redis_keys + expired - expected) <= allowed
        low = high = expected - expired
    else:
        since = min(copy.expired_by(read_at), max(copy.restored - report.redis_keys, 0))
        report.redis_expired_keys = copy.expired + since
        low, high = copy.restored - copy.expired_by(read_at), copy.restored
        # the manifest counted the live server just before its snapshot: a key whose TTL ended in between is in
        # the count, not in the RDB, like the keys that expired since (their number bounds such a deficit)
        short = expected - copy.in_backup
        ok = -allowed <= short <= allowed + copy.expired and low - allowed <= report.redis_keys <= high + allowed
    if ok:
        return ""
    return (
        f"Redis {target.redis.safe_address} holds {report.redis_keys} key(s) (expected {low}..{high}; the RDB held "
        f"{copy.in_backup if copy is not None else '?'}, "
        f"+{report.redis_expired_keys or 0} expired since the backup), the manifest says {expected} "
        f"(db {plan.redis_source_db} of the backup)"
    )


# -------------------------------------------------------------------------------------------------- teardown
async def clear_drill_leftovers(
    target: RecoveryTarget, scratch_prefix: str, policy: DrPolicy, *, redis_keys: int
) -> list[str]:
    """What an earlier drill that died before its teardown left behind, removed before this drill starts: the
    namespaces named ``<drill prefix>-...`` that carry the recovery label, the databases named ``scratch_prefix...``
    on the recovery server, and the keys of the drill's scratch Redis database (``redis_keys`` of them). Returns
    what it removed (an unlabelled namespace of that name is left alone: the preflight then refuses it)."""
    from tasks.kubernetes.restore import delete_recovery_namespace, list_labelled_namespaces

    removed: list[str] = []
    if target.cluster is not None:
        prefix = f"{policy.drill_namespace_prefix}-"
        for ns in await list_labelled_namespaces(target.cluster, policy.namespace_label, prefix):
            await delete_recovery_namespace(
                target.cluster, ns, policy.namespace_label, timeout_s=policy.deployments_timeout_s
            )
            removed.append(f"namespace {ns}")
    admin = admin_block(target.postgres)
    for name in await list_databases(admin, scratch_prefix):
        await drop_database(admin, name)
        removed.append(f"database {name}")
    if redis_keys:
        await flush_redis_database(target.redis)
        removed.append(f"{redis_keys} key(s) of Redis {target.redis.safe_address}")
    return removed


async def teardown(target: RecoveryTarget, policy: DrPolicy, report: DrReport) -> list[str]:
    """A drill's clean-up: its namespace, scratch database and scratch Redis database, each tried even when another
    fails; returns what could not be removed."""
    from tasks.kubernetes.restore import delete_recovery_namespace

    problems: list[str] = []

    async def attempt(what: str, step: Awaitable[Any]) -> None:
        try:
            await step
            report.torn_down.append(what)
        except Exception as err:  # noqa: BLE001 - every part of the teardown is tried
            problems.append(f"{what}: {describe_error(err)}")

    if target.cluster is not None and target.namespace:
        await attempt(
            f"namespace {target.namespace}",
            delete_recovery_namespace(
                target.cluster, target.namespace, policy.namespace_label, timeout_s=policy.deployments_timeout_s
            ),
        )
    await attempt(f"database {target.database}", drop_database(admin_block(target.postgres), target.database))
    await attempt(f"Redis {target.redis.safe_address}", flush_redis_database(target.redis))
    report.teardown_problems = problems
    return problems


__all__ = [
    "RecoveryTarget",
    "admin_block",
    "build_plan",
    "clear_drill_leftovers",
    "choose_backup",
    "check_deployments",
    "check_redis",
    "check_rows",
    "check_smoke",
    "restore",
    "teardown",
    "verify",
]
