"""Disaster recovery against the raw tools (``python -m benchmarks.dr``).

Run on demand, never in the tests. Needs the sandbox (``uv run runbooks sandbox up``), with its recovery target
(``recovery-postgres``, ``recovery-redis``), Kubernetes control plane and Prefect server. The source is the data of
:mod:`benchmarks.backup` (``rb_bench`` on the sandbox's PostgreSQL, a redis-server of the benchmark's own, the
``bench-backup`` environment, reused with ``--keep-data``); the recovery environment ``bench-backup-recovery`` is the
sandbox's recovery target with that database name. A daily backup (PostgreSQL, Redis, Kubernetes) is taken first, not
timed. Then, in one run:

raw_restore_parts_s  the raw tools restoring every part at once from local files (downloaded and decompressed
                     beforehand, not timed) into the same targets: ``pg_restore -j <jobs>`` into a new database of
                     the recovery server, a redis-server loading the RDB, ``kubectl apply -f`` of the exported YAML
                     (rewritten for a namespace, as the flow restores it; Secrets through stdin, never a file).
dr_flow_s            the ``disaster-recovery`` flow from S3 (download with size, SHA-256 and zstd checks, the
                     preflight, every part, and every verification: Deployments available, row counts, keys, the
                     smoke suite), no traffic switch.
rta_ratio            dr_flow_s / raw_restore_parts_s (goal ≤ 1.5), with the flow's phase breakdown.

The last line printed is one JSON object with every figure.

    uv run python -m benchmarks.dr                               # about 2 GB of PostgreSQL, 1 GB of Redis
    uv run python -m benchmarks.dr --pg-mib 50 --redis-mib 25    # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import yaml

from benchmarks.backup import (
    BENCH_DB,
    BENCH_ENVIRONMENT,
    BenchError,
    BenchRedis,
    MiB,
    check_sandbox,
    delete_bench_environment,
    drop_database,
    prepare_postgres,
    ratio,
    run_tool,
    save_bench_environment,
    say,
)
from sandbox.config import SandboxSettings, SandboxState

RECOVERY_ENVIRONMENT = f"{BENCH_ENVIRONMENT}-recovery"
RAW_DB = "rb_bench_raw_dr"
GOAL_RTA_RATIO = 1.5


async def save_recovery_environment(settings: SandboxSettings, state: SandboxState) -> Any:
    """The sandbox's recovery environment with the benchmark's database name, saved as ``bench-backup-recovery``."""
    from psycopg.conninfo import make_conninfo

    from blocks.postgres import PostgresDatabase
    from blocks.registry import save_environment
    from sandbox.blocks import recovery_environment
    from sandbox.components import RecoveryPostgresComponent

    env = recovery_environment(settings, state)
    if env is None:
        raise BenchError("the sandbox's recovery target is not up: `uv run runbooks sandbox up`")
    admin = RecoveryPostgresComponent(settings, state).admin_dsn()
    env.postgres = PostgresDatabase(dsn=make_conninfo(admin, dbname=BENCH_DB))
    await save_environment(env, RECOVERY_ENVIRONMENT)
    return env


async def delete_namespace(kube: str, namespace: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", kube, "delete", "namespace", namespace, "--ignore-not-found", "--wait=false",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()


def kubeconfig(state: SandboxState) -> str:
    return str(state.get("kubernetes").get("admin_kubeconfig") or "")


async def take_backup(environment: str) -> Any:
    from flows.backup import RetentionSettings, daily_backup
    from tasks.backup.restore import read_manifest

    report = await daily_backup(
        environment=environment, parts=["postgres", "redis", "kubernetes"], retention=RetentionSettings(enabled=False)
    )
    env_backups = (await _env(environment)).backups
    manifest = await read_manifest(env_backups, report.prefix)
    assert manifest is not None
    return manifest


async def _env(name: str) -> Any:
    from blocks.environment import load_environment

    return await load_environment(name)


def local_parts(source: Any, manifest: Any, work: Path) -> dict[str, Any]:
    """Every part downloaded and decompressed to ``work`` (the raw tools' input); the Secrets decrypted in memory."""
    from tasks.backup.kubernetes import read_encrypted
    from tasks.backup.pipeline import download_verified
    from tasks.dr.manifests import secrets_for
    from tasks.dr.plan import download_kubernetes

    [dump] = manifest.objects_of("postgres")
    [rdb] = manifest.objects_of("redis")
    parts: dict[str, Any] = {
        "dump": download_verified(source.backups, dump, work / "db.dump"),
        "rdb": download_verified(source.backups, rdb, work / "dump.rdb"),
    }
    payload = download_kubernetes(source.backups, manifest, source.kubernetes.namespace, work)
    assert payload is not None
    listing = {"apiVersion": "v1", "kind": "List", "items": payload.restore.objects}
    parts["yaml"] = work / "objects.yaml"
    parts["yaml"].write_text(yaml.safe_dump(listing, sort_keys=False))
    secrets = None
    if payload.secrets_object is not None:
        clear = read_encrypted(source.backups, payload.secrets_object, source.require_backup_encryption())
        secrets = secrets_for(clear, manifest.prefix)
    parts["secrets"] = secrets
    return parts


async def raw_restore(parts: dict[str, Any], recovery: Any, admin_dsn: str, kube: str, jobs: int) -> dict[str, Any]:
    """pg_restore, the RDB loaded by a redis-server, kubectl apply: all at once; seconds of each and of the whole."""
    from tasks.pgtools import libpq_target, pg_binary
    from tasks.redis import rdb_server

    drop_database(admin_dsn, RAW_DB)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{RAW_DB}" TEMPLATE template0')
    namespace = f"bench-dr-raw-{uuid.uuid4().hex[:6]}"
    conninfo, pg_env = libpq_target(recovery.postgres, dbname=RAW_DB)

    async def pg() -> float:
        argv = [pg_binary("pg_restore"), "--no-password", "--exit-on-error", f"--jobs={jobs}", f"--dbname={conninfo}"]
        argv += ["--no-owner", "--no-privileges"]  # as the flow (tasks/dr/policy.yaml)
        return await run_tool([*argv, str(parts["dump"])], env=pg_env)

    async def redis_load() -> float:
        started = time.perf_counter()

        def load() -> None:
            with rdb_server(parts["rdb"], timeout_s=3600):
                pass

        await asyncio.to_thread(load)
        return time.perf_counter() - started

    async def kubectl() -> float:
        started = time.perf_counter()
        await run_tool(["kubectl", "--kubeconfig", kube, "create", "namespace", namespace])
        if parts["secrets"] is not None:
            proc = await asyncio.create_subprocess_exec(
                "kubectl", "--kubeconfig", kube, "-n", namespace, "apply", "-f", "-",
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate(parts["secrets"].get_secret_value().encode())
            if proc.returncode:
                raise BenchError(f"kubectl apply of the Secrets failed: {err.decode()[-300:]}")
        await run_tool(["kubectl", "--kubeconfig", kube, "-n", namespace, "apply", "-f", str(parts["yaml"])])
        return time.perf_counter() - started

    started = time.perf_counter()
    try:
        pg_s, redis_s, kube_s = await asyncio.gather(pg(), redis_load(), kubectl())
        total = time.perf_counter() - started
    finally:
        await delete_namespace(kube, namespace)
        drop_database(admin_dsn, RAW_DB)
    return {"total": total, "pg_restore": pg_s, "redis_load": redis_s, "kubectl_apply": kube_s}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from flows.disaster_recovery import disaster_recovery
    from sandbox.components import PostgresComponent, RecoveryPostgresComponent
    from tasks.storage import delete_stored, list_stored

    settings = SandboxSettings()
    state = SandboxState(settings.home)
    admin_dsn = check_sandbox(settings, state)
    pg_env = PostgresComponent(settings, state).env()
    if pg_env.get("RUNBOOKS_PG_BIN_DIR"):
        os.environ["RUNBOOKS_PG_BIN_DIR"] = pg_env["RUNBOOKS_PG_BIN_DIR"]
    recovery_admin = RecoveryPostgresComponent(settings, state).admin_dsn()
    kube = kubeconfig(state)
    if not kube:
        raise BenchError("the sandbox has no Kubernetes control plane: `uv run runbooks sandbox up`")
    work = Path(tempfile.mkdtemp(prefix="rb-bench-dr-"))
    bench_home = settings.home / "bench"
    bench_redis = BenchRedis(bench_home / "redis")
    source_env: Any = None
    namespace = f"bench-dr-{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {}
    try:
        dsn, _ = await asyncio.to_thread(prepare_postgres, admin_dsn, args.pg_mib)
        await asyncio.to_thread(bench_redis.start)
        await asyncio.to_thread(bench_redis.fill, args.redis_mib)
        source_env = await save_bench_environment(settings, state, dsn, bench_redis.url)
        recovery = await save_recovery_environment(settings, state)
        say("a daily backup of bench-backup (postgres, redis, kubernetes) ...")
        manifest = await take_backup(BENCH_ENVIRONMENT)
        say("downloading the parts for the raw tools (not timed) ...")
        parts = await asyncio.to_thread(local_parts, source_env, manifest, work)

        say(f"raw_restore_parts_s: pg_restore -j {args.jobs}, the RDB loaded, kubectl apply, at once ...")
        raw = await raw_restore(parts, recovery, recovery_admin, kube, args.jobs)

        drop_database(recovery_admin, BENCH_DB)
        with redis.Redis.from_url(recovery.redis.url.get_secret_value()) as client:
            client.flushdb()
        say("dr_flow_s: disaster-recovery from S3, verification included ...")
        started = time.perf_counter()
        report = await disaster_recovery(
            environment=BENCH_ENVIRONMENT,
            recovery_environment=RECOVERY_ENVIRONMENT,
            backup_id=manifest.backup_id,
            recovery_namespace=namespace,
        )
        dr_flow_s = time.perf_counter() - started
        result = {
            "raw_restore_parts_s": round(raw["total"], 2),
            "raw_each_s": {k: round(v, 2) for k, v in raw.items() if k != "total"},
            "dr_flow_s": round(dr_flow_s, 2),
            "rta_ratio": ratio(dr_flow_s, raw["total"]),
            "rta_s": report.rta_s,
            "rpo_s": report.rpo_s,
            "phases_s": report.phases,
            "goal_met": (ratio(dr_flow_s, raw["total"]) or 99) <= GOAL_RTA_RATIO,
            "pg_mib": args.pg_mib,
            "redis_mib": args.redis_mib,
            "pg_dump_bytes": parts["dump"].stat().st_size,
            "rdb_bytes": parts["rdb"].stat().st_size,
            "jobs": args.jobs,
            "cpus": os.cpu_count(),
            "load_after": round(os.getloadavg()[0], 2),
        }
    finally:
        say("cleaning up ...")
        await delete_namespace(kube, namespace)
        drop_database(recovery_admin, BENCH_DB)
        if source_env is not None:
            keys = [
                o.key for o in await asyncio.to_thread(list_stored, source_env.backups, f"daily/{BENCH_ENVIRONMENT}/")
            ]
            if keys:
                await asyncio.to_thread(delete_stored, source_env.backups, keys)
            if not args.keep_data:
                await delete_bench_environment(source_env)
        await asyncio.to_thread(bench_redis.stop, keep=args.keep_data)
        if not args.keep_data:
            shutil.rmtree(bench_home, ignore_errors=True)
            drop_database(admin_dsn, BENCH_DB)
        shutil.rmtree(work, ignore_errors=True)
    if result:
        print()
        print(
            f"PostgreSQL {args.pg_mib} MiB (dump {result['pg_dump_bytes'] / MiB:.0f} MiB), Redis {args.redis_mib} MiB"
        )
        print(f"raw_restore_parts_s {result['raw_restore_parts_s']:8.1f} s   {result['raw_each_s']}")
        print(f"dr_flow_s           {result['dr_flow_s']:8.1f} s   phases {result['phases_s']}")
        print(f"rta_ratio           {result['rta_ratio']}×   (goal ≤ {GOAL_RTA_RATIO})")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-mib", type=int, default=2048, help="PostgreSQL data, MiB of pg_database_size")
    parser.add_argument("--redis-mib", type=int, default=1024, help="Redis data, MiB of used_memory")
    parser.add_argument("--keep-data", action="store_true", help="keep the source data and blocks for the next run")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j, raw and flow (the policy's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: SandboxSettings().prefect_api_url}):
            result = asyncio.run(bench(args))
    except BenchError as err:
        say(f"benchmark failed: {err}")
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
