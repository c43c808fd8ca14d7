"""Backup and restore, side by side with the raw tools and with the seed's script (``python -m benchmarks.backup``).

Run on demand, never in the tests. Needs the sandbox (``uv run runbooks sandbox up``): its PostgreSQL server, moto
S3, Kubernetes control plane and Prefect server. Nothing of the sandbox's own data is touched:

- PostgreSQL: a database ``rb_bench`` on the sandbox's server, filled by :mod:`sandbox.datagen` to ``--pg-mib``
  (pg_database_size; realistic prompt/response text, about 4.5x with zstd -3, not pgbench padding);
- Redis: a redis-server of its own under ``<sandbox home>/bench/redis`` (Redis 7 defaults, but no automatic saves
  and ``repl-diskless-sync-delay 0``: ``redis-cli --rdb`` does not wait 5 s for more replicas), filled to
  ``--redis-mib`` of used_memory. Not a database number of the shared server: an RDB holds every database of a
  server, so 1 GB there would slow every other Redis backup taken on it;
- an environment block ``bench-backup`` (the sandbox's blocks with those two swapped in) for the flows;
- backups go to the sandbox bucket (``daily/bench-backup/...``, ``benchmarks/seed/...``) and are deleted after.

``--keep-data`` keeps the database, the Redis data and the block for the next run (reused when the size and seed
match); the default drops them. Then, in one run:

raw_dump_s      ``pg_dump -Fc -Z0 > /dev/null``: the read limit for PostgreSQL.
raw_parts_s     the raw readers of every part at once, to /dev/null: ``pg_dump -Fc -Z0``, ``redis-cli --rdb -``,
                GETs of the namespace's objects (kubectl's ``all``, ConfigMaps, Secrets) and of the 24 h logs of
                every pod of ai-multimodel-api: the read limit for the whole backup.
backup_flow_s   the ``daily-backup`` flow with its default parts, run in a child process
                (:mod:`benchmarks.backup_child`), into the sandbox S3 (moto: pure Python, on the same cores).
seed_way_s      the seed's "Daily Backup Procedures" script, step by step: plain ``pg_dump`` to a file;
                ``BGSAVE``, waited for (the script as written copies whatever dump.rdb was there: stale or
                half-written), then a copy of dump.rdb from the server's ``dir`` (local here: no ``kubectl cp``);
                ``kubectl get all|configmaps|secrets -n production -o yaml`` as the same API GETs written as YAML;
                ``kubectl logs deployment/ai-multimodel-api --since=24h`` (one pod, as kubectl picks it);
                ``tar -czf``; ``aws s3 cp`` as boto3's ``upload_file`` (the same s3transfer engine and defaults).
raw_restore_s   ``pg_restore -j <jobs>`` from a local ``pg_dump -Fc -Z0`` file into a new database.
restore_flow_s  the ``restore-database`` flow from S3 into a scratch database: download with size, SHA-256 and
                zstd checks, ``pg_restore -j <jobs>``, row counts against the manifest (child process too).

Peak RSS is the flow's Python process alone (``VmHWM``); ``backup_tree_peak_rss_mb`` adds its children (pg_dump)
as sampled every 0.25 s. The last line printed is one JSON object with every figure.

    uv run python -m benchmarks.backup                               # about 2 GB of PostgreSQL, 1 GB of Redis
    uv run python -m benchmarks.backup --pg-mib 100 --redis-mib 50   # a quick one
    uv run python -m benchmarks.backup --pipeline --size-mib 512     # the pipeline alone (benchmarks.backup_pipeline)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import psycopg
import redis
from psycopg import sql

from sandbox.config import PROJECT_DIR, SandboxSettings, SandboxState

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from blocks.environment import RunbookEnvironment
    from blocks.kubernetes import KubernetesCluster
    from blocks.postgres import PostgresDatabase

MiB = 2**20
SEED = 42
BENCH_ENVIRONMENT = "bench-backup"
BENCH_DB = "rb_bench"
RAW_RESTORE_DB = "rb_bench_raw_restore"
FLOW_RESTORE_DB = "rb_bench_flow_restore"
API_DEPLOYMENT = "ai-multimodel-api"
LOG_SINCE_S = 24 * 3600
MARKER_KEY = "benchmarks:backup:dataset"
GOALS = {"backup_ratio": 1.3, "speedup_vs_seed": 2.0, "backup_peak_rss_mb": 300.0, "restore_ratio": 1.25}

T = TypeVar("T")


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def timed(what: Awaitable[T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await what
    return time.perf_counter() - started, result


# ---------------------------------------------------------------------------------------------------- processes


async def run_tool(argv: Sequence[str], *, env: dict[str, str] | None = None, stdout: Any = None) -> float:
    """Run a raw tool (stdout to /dev/null unless given), its own session; seconds; a failure raises."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        tail = " / ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        raise BenchError(f"{Path(argv[0]).name} exited {proc.returncode}: {tail}")
    return time.perf_counter() - started


class TreeRss:
    """Samples the summed RSS of a process and its descendants (every ``interval_s``, from /proc)."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-rss")

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _rss(self, pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0

    def _children(self, pid: int) -> list[int]:
        """Children of every thread of ``pid`` (a thread that forks owns the child: pg_dump starts in one)."""
        found: list[int] = []
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    found += [int(c) for c in Path(f"{task.path}/children").read_text().split()]
        except OSError:
            pass
        return found

    def _sample(self) -> int:
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            total += self._rss(pid)
            todo.extend(self._children(pid))
        return total

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._sample())
            if self._stop.wait(self.interval_s):
                return


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (and its waited-for children) from /proc; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def deployment_env(name: str) -> dict[str, str]:
    """The ``job_variables.env`` of deployment ``name`` in prefect.yaml: what the worker sets for its runs."""
    from deployments.apply import load_spec

    for deployment in load_spec().get("deployments") or []:
        if deployment.get("name") == name:
            return {str(k): str(v) for k, v in ((deployment.get("job_variables") or {}).get("env") or {}).items()}
    return {}


async def run_child(args: Sequence[str], env: dict[str, str], log: Path) -> tuple[dict[str, Any], int, float]:
    """``python -m benchmarks.backup_child <args>``: (its JSON line, peak RSS of its process tree, wall seconds)."""
    started = time.perf_counter()
    err = await asyncio.to_thread(open, log, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.backup_child",
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=PROJECT_DIR,
            start_new_session=True,
        )
        with TreeRss(proc.pid) as sampler:
            try:
                out, _ = await proc.communicate()
            except BaseException:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                raise
    finally:
        err.close()
    wall = time.perf_counter() - started
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"ok": False, "error": f"no result (exit {proc.returncode})"}
    if not result.get("ok"):
        text = await asyncio.to_thread(log.read_text, errors="replace")
        tail = "\n".join(text.splitlines()[-25:])
        raise BenchError(f"benchmarks.backup_child {args[0]} failed: {result.get('error')}\n{tail}")
    return result, sampler.peak, wall


# ----------------------------------------------------------------------------------------------------- the data


def database_comment(admin_dsn: str, name: str) -> str | None:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    return None if row is None else row[0]


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_bytes(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def prepare_postgres(admin_dsn: str, mib: int) -> tuple[str, float | None]:
    """``rb_bench`` filled to ``mib`` MiB; reused as it is when a previous run left the same size and seed.
    Returns its DSN and the seconds spent generating (None: reused)."""
    from sandbox.datagen import ensure_database, generate_postgres

    marker = f"benchmarks.backup dataset: {mib} MiB, seed {SEED}"
    if database_comment(admin_dsn, BENCH_DB) == marker:
        dsn = ensure_database(admin_dsn, BENCH_DB)
        say(f"PostgreSQL: reusing {BENCH_DB} ({marker})")
        return dsn, None
    drop_database(admin_dsn, BENCH_DB)
    dsn = ensure_database(admin_dsn, BENCH_DB)
    say(f"PostgreSQL: generating {mib} MiB into {BENCH_DB} ...")
    started = time.perf_counter()
    generate_postgres(dsn, mib * MiB, seed=SEED, reset=True)
    elapsed = time.perf_counter() - started
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(BENCH_DB), sql.Literal(marker)))
    return dsn, elapsed


@dataclass
class BenchRedis:
    """A redis-server of the benchmark's own, its data in ``directory`` (dump.rdb is loaded back at start)."""

    directory: Path
    port: int = 0
    pid: int | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory.parent / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=600)

    def start(self) -> None:
        from kernel import processes
        from sandbox.components import wait_until
        from tasks.redis import redis_server_binary

        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        # no automatic saves; a diskless SYNC (redis-cli --rdb) starts at once instead of waiting 5 s for replicas
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--repl-diskless-sync-delay", "0"]
        self.pid = processes.spawn_daemon(argv, log_path=self.log)

        def ready() -> bool:
            try:
                return int(self.client().info("persistence").get("loading", 1)) == 0
            except redis.RedisError:
                return False

        wait_until(ready, timeout_s=300, what="the benchmark's redis-server", log=self.log)

    def fill(self, mib: int) -> float | None:
        """Fill to ``mib`` MiB of used_memory unless the loaded data already is that; seconds spent (None: reused)."""
        from sandbox.datagen import generate_redis

        marker = f"{mib} MiB, seed {SEED}"
        client = self.client()
        if client.get(MARKER_KEY) == marker.encode():
            say(f"Redis: reusing the data of a previous run ({marker})")
            return None
        say(f"Redis: generating {mib} MiB ...")
        client.flushall()
        started = time.perf_counter()
        generate_redis(self.url, mib * MiB, seed=SEED, flush=False)
        client.set(MARKER_KEY, marker)
        return time.perf_counter() - started

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def stop(self, *, keep: bool) -> None:
        from kernel import processes

        if self.pid is None:
            return
        try:
            self.client().shutdown(save=keep, nosave=not keep)
        except redis.RedisError:
            pass  # the connection drops as it exits
        deadline = time.monotonic() + 120
        while processes.is_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if processes.is_alive(self.pid):
            processes.stop_group(self.pid)
        self.pid = None


# ------------------------------------------------------------------------------------------------- environment


async def save_bench_environment(
    settings: SandboxSettings, state: SandboxState, pg_dsn: str, redis_url: str
) -> RunbookEnvironment:
    """The sandbox's environment with the benchmark's database and Redis, saved as ``bench-backup``."""
    from blocks.postgres import PostgresDatabase
    from blocks.redis import RedisDatabase
    from blocks.registry import register_block_types, save_environment
    from sandbox.blocks import sandbox_environment

    env = sandbox_environment(settings, state)
    env.postgres = PostgresDatabase(dsn=pg_dsn)
    env.redis = RedisDatabase(url=redis_url)
    await register_block_types()
    await save_environment(env, BENCH_ENVIRONMENT)
    return env


def nested_blocks(block: Block) -> list[Block]:
    """``block`` and every block it references, parents first."""
    from prefect.blocks.core import Block

    found = [block]
    for name in type(block).model_fields:
        value = getattr(block, name, None)
        if isinstance(value, Block):
            found += nested_blocks(value)
    return found


async def delete_bench_environment(env: RunbookEnvironment) -> None:
    """Delete the ``bench-backup`` documents :func:`save_bench_environment` saved (the environment first)."""
    from prefect.exceptions import ObjectNotFound

    for block in nested_blocks(env):
        try:
            await type(block).adelete(BENCH_ENVIRONMENT)
        except (ObjectNotFound, ValueError):
            pass


# ------------------------------------------------------------------------------------------------- raw readers


def pg_dump_argv(db: PostgresDatabase, *extra: str) -> tuple[list[str], dict[str, str]]:
    from tasks.pgtools import libpq_target, pg_binary

    conninfo, env = libpq_target(db)
    return [pg_binary("pg_dump"), "--no-password", *extra, f"--dbname={conninfo}"], env


def redis_cli_argv(url: str) -> list[str]:
    from urllib.parse import urlsplit

    cli = shutil.which("redis-cli")
    if cli is None:
        raise BenchError("redis-cli not found on PATH (the raw Redis reader)")
    parts = urlsplit(url)
    return [cli, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "--rdb", "-"]


async def list_bodies(cluster: KubernetesCluster, plurals: Sequence[str]) -> dict[str, bytes]:
    """``GET <group>/namespaces/<ns>/<plural>`` for each kind, as the API sends it (kinds it lacks: skipped)."""
    from kubernetes_asyncio.client.exceptions import ApiException

    from tasks.kubernetes._api import kube, namespace_of
    from tasks.kubernetes.export import KINDS

    ns = namespace_of(cluster, None)
    bodies: dict[str, bytes] = {}
    async with kube(cluster, f"benchmark: listing namespace {ns}") as k:
        for plural in plurals:
            try:
                bodies[plural] = await k.get_raw(f"{KINDS[plural][0]}/namespaces/{ns}/{plural}")
            except ApiException as err:
                if err.status != 404:
                    raise
    return bodies


async def seed_log_body(cluster: KubernetesCluster) -> bytes:
    """``kubectl logs deployment/ai-multimodel-api --since=24h``: the default container of the pod kubectl picks."""
    from tasks.kubernetes._api import deployment_pods, kube, namespace_of, pick_pod
    from tasks.kubernetes.logs import default_container

    ns = namespace_of(cluster, None)
    async with kube(cluster, f"benchmark: logs of {ns}/{API_DEPLOYMENT}") as k:
        pod = pick_pod(await deployment_pods(k, ns, API_DEPLOYMENT))
        if pod is None:
            return b""
        return await k.get_raw(
            f"/api/v1/namespaces/{ns}/pods/{pod.metadata.name}/log",
            container=default_container(pod),
            sinceSeconds=LOG_SINCE_S,
        )


async def all_log_bodies(cluster: KubernetesCluster) -> dict[str, bytes]:
    """What the flow's logs part reads: the last 24 h, with timestamps, of every container of every live pod of
    every Deployment of the namespace, and the previous run of a restarted container."""
    from kubernetes_asyncio.client.exceptions import ApiException

    from tasks.kubernetes._api import kube, namespace_of, selector_string

    ns = namespace_of(cluster, None)
    bodies: dict[str, bytes] = {}
    async with kube(cluster, f"benchmark: logs of namespace {ns}") as k:
        for dep in (await k.apps.list_namespaced_deployment(ns)).items:
            selector = selector_string(dep.spec.selector)
            for pod in (await k.core.list_namespaced_pod(ns, label_selector=selector)).items:
                if pod.metadata.deletion_timestamp is not None:
                    continue
                statuses = pod.status.container_statuses or [] if pod.status else []
                restarts = {cs.name: cs.restart_count or 0 for cs in statuses}
                for container in pod.spec.containers:
                    for previous in ([True] if restarts.get(container.name, 0) else []) + [False]:
                        try:
                            bodies[f"{pod.metadata.name}/{container.name}/{previous}"] = await k.get_raw(
                                f"/api/v1/namespaces/{ns}/pods/{pod.metadata.name}/log",
                                container=container.name,
                                sinceSeconds=LOG_SINCE_S,
                                timestamps="true",
                                previous="true" if previous else None,
                            )
                        except ApiException as err:
                            if err.status not in (400, 404):
                                raise
    return bodies


def export_plurals() -> list[str]:
    from tasks.kubernetes.export import ALL

    return [*ALL, "configmaps", "secrets"]


async def raw_parts(
    db: PostgresDatabase, redis_url: str, cluster: KubernetesCluster | None
) -> tuple[float, dict[str, float], dict[str, int]]:
    """Every part's raw reader at once: (wall seconds, seconds per reader, bytes read by the API readers)."""
    times: dict[str, float] = {}
    sizes: dict[str, int] = {}

    async def part(name: str, work: Callable[[], Awaitable[Any]]) -> None:
        seconds, result = await timed(work())
        times[name] = round(seconds, 3)
        if isinstance(result, dict):
            sizes[name] = sum(len(v) for v in result.values())

    argv, env = pg_dump_argv(db, "--format=custom", "--compress=0")
    jobs = [
        part("postgres", lambda: run_tool(argv, env=env)),
        part("redis", lambda: run_tool(redis_cli_argv(redis_url))),
    ]
    if cluster is not None:
        jobs.append(part("kubernetes", lambda: list_bodies(cluster, export_plurals())))
        jobs.append(part("logs", lambda: all_log_bodies(cluster)))
    seconds, _ = await timed(asyncio.gather(*jobs))
    return seconds, times, sizes


# ---------------------------------------------------------------------------------------------------- the seed


def wait_bgsave(client: redis.Redis) -> None:
    """``BGSAVE``, then until it finished (``rdb_saves``, Redis >= 7, else LASTSAVE moving)."""
    before = client.info("persistence")
    last = client.lastsave()
    client.bgsave()
    while True:
        time.sleep(0.1)
        info = client.info("persistence")
        if int(info.get("rdb_bgsave_in_progress", 0)):
            continue
        if "rdb_saves" in info and int(info["rdb_saves"]) > int(before.get("rdb_saves", 0)):
            break
        if "rdb_saves" not in info and client.lastsave() > last:
            break
    if info.get("rdb_last_bgsave_status") != "ok":
        raise BenchError(f"BGSAVE failed: {info.get('rdb_last_bgsave_status')}")


async def seed_way(
    work: Path, db: PostgresDatabase, redis_url: str, cluster: KubernetesCluster | None, env: RunbookEnvironment
) -> tuple[float, dict[str, float], int, str]:
    """The seed's daily script, step by step: (seconds, seconds per step, tarball bytes, its S3 key)."""
    import yaml

    date = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    backups = work / "backups"
    backup_dir = backups / date
    backup_dir.mkdir(parents=True)
    steps: dict[str, float] = {}
    started = time.perf_counter()

    # 1. kubectl exec deployment/postgresql -- pg_dump -U postgres ai_multimodel > $BACKUP_DIR/database.sql
    argv, pg_env = pg_dump_argv(db)
    out = await asyncio.to_thread(open, backup_dir / "database.sql", "wb")
    try:
        steps["pg_dump plain > file"] = await run_tool(argv, env=pg_env, stdout=out)
    finally:
        out.close()

    # 2. redis-cli BGSAVE; kubectl cp <redis pod>:/data/dump.rdb $BACKUP_DIR/redis-dump.rdb
    def redis_step() -> None:
        client = redis.Redis.from_url(redis_url, socket_timeout=600)
        wait_bgsave(client)
        rdb_dir = Path(str(client.config_get("dir")["dir"]))
        shutil.copyfile(rdb_dir / str(client.config_get("dbfilename")["dbfilename"]), backup_dir / "redis-dump.rdb")

    steps["BGSAVE + copy dump.rdb"], _ = await timed(asyncio.to_thread(redis_step))

    # 3. kubectl get all|configmaps|secrets -n production -o yaml > ...; 4. kubectl logs deployment/... --since=24h
    if cluster is not None:

        async def yaml_step() -> None:
            for filename, plurals in (
                ("k8s-resources.yaml", [p for p in export_plurals() if p not in ("configmaps", "secrets")]),
                ("configmaps.yaml", ["configmaps"]),
                ("secrets.yaml", ["secrets"]),
            ):
                items = []
                for body in (await list_bodies(cluster, plurals)).values():
                    items.extend(json.loads(body).get("items", []))
                text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False)
                (backup_dir / filename).write_text(text)

        async def logs_step() -> None:
            (backup_dir / "application.log").write_bytes(await seed_log_body(cluster))

        steps["kubectl get -o yaml (3 files)"], _ = await timed(yaml_step())
        steps["kubectl logs --since=24h"], _ = await timed(logs_step())

    # 5. cd /backups && tar -czf backup-$DATE.tar.gz $DATE/
    tarball = backups / f"backup-{date}.tar.gz"
    steps["tar -czf"] = await run_tool(["tar", "-C", str(backups), "-czf", str(tarball), f"{date}/"])

    # 6. aws s3 cp backup-$DATE.tar.gz s3://ai-multimodel-backups/daily/
    key = f"benchmarks/seed/daily/{tarball.name}"

    def upload() -> None:
        from tasks.storage import object_key

        s3 = env.backups.credentials.get_s3_client()
        s3.upload_file(str(tarball), env.backups.bucket_name, object_key(env.backups, key))

    steps["aws s3 cp"], _ = await timed(asyncio.to_thread(upload))
    total = time.perf_counter() - started
    size = tarball.stat().st_size
    shutil.rmtree(backups)
    return total, {k: round(v, 3) for k, v in steps.items()}, size, key


# ----------------------------------------------------------------------------------------------------- restore


async def raw_restore(admin_dsn: str, db: PostgresDatabase, archive: Path, jobs: int) -> float:
    from tasks.pgtools import libpq_target, pg_binary

    drop_database(admin_dsn, RAW_RESTORE_DB)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(RAW_RESTORE_DB)))
    try:
        conninfo, env = libpq_target(db, dbname=RAW_RESTORE_DB)
        argv = [pg_binary("pg_restore"), "--no-password", "--exit-on-error", f"--jobs={jobs}"]
        return await run_tool([*argv, f"--dbname={conninfo}", str(archive)], env=env)
    finally:
        drop_database(admin_dsn, RAW_RESTORE_DB)


# -------------------------------------------------------------------------------------------------------- main


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def check_sandbox(settings: SandboxSettings, state: SandboxState) -> str:
    """The sandbox's PostgreSQL admin DSN, once its Prefect API answers; a clear error otherwise."""
    hint = "run `uv run runbooks sandbox up` first"
    if not state.load():
        raise BenchError(f"no sandbox state under {settings.home}: {hint}")
    try:
        httpx.get(f"{settings.prefect_api_url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        url = settings.prefect_api_url
        raise BenchError(f"the sandbox's Prefect API at {url} does not answer ({err}): {hint}") from err
    return str(state.get("postgres").get("admin_dsn") or settings.postgres_admin_dsn)


def print_table(r: dict[str, Any], details: dict[str, Any]) -> None:
    def s(value: float | None) -> str:
        return "—" if value is None else f"{value:8.1f} s"

    def x(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}×"

    goal = GOALS
    rows = [
        ("raw_dump_s", "pg_dump -Fc -Z0 > /dev/null", s(r["raw_dump_s"]), ""),
        (
            "raw_parts_s",
            "raw readers of every part, concurrently",
            s(r["raw_parts_s"]),
            ", ".join(f"{k} {v:.1f} s" for k, v in details["raw_parts"].items()),
        ),
        (
            "backup_flow_s",
            "daily-backup flow (default parts) → S3",
            s(r["backup_flow_s"]),
            f"backup_ratio {x(r['backup_ratio'])} (goal ≤ {goal['backup_ratio']}); "
            + ", ".join(f"{p['name']} {p['duration_s']:.1f} s" for p in details["flow_parts"])
            + (f" (BGSAVE {details['bgsave_s']:.1f} s before)" if details.get("bgsave_s") else ""),
        ),
        (
            "seed_way_s",
            "the seed's script",
            s(r["seed_way_s"]),
            f"speedup_vs_seed {x(r['speedup_vs_seed'])} (goal ≥ {goal['speedup_vs_seed']})"
            if r["seed_way_s"] is not None
            else "skipped",
        ),
        ("raw_restore_s", f"pg_restore -j {details['jobs']} from a local file", s(r["raw_restore_s"]), ""),
        (
            "restore_flow_s",
            "restore-database flow from S3, verified",
            s(r["restore_flow_s"]),
            f"restore_ratio {x(r['restore_ratio'])} (goal ≤ {goal['restore_ratio']})",
        ),
    ]
    print()
    print(
        f"PostgreSQL {r['db_bytes'] / MiB:.0f} MiB ({BENCH_DB}; pg_dump -Fc {r['pg_dump_bytes'] / MiB:.0f} MiB), "
        f"Redis {r['redis_bytes'] / MiB:.0f} MiB used (RDB {r['rdb_bytes'] / MiB:.0f} MiB); stored "
        f"{r['stored_bytes'] / MiB:.0f} MiB; {r['cpus']} CPUs, load {r['load_before']} → {r['load_after']}"
    )
    for name, what, value, note in rows:
        print(f"{name:<15} {what:<44} {value:>10}   {note}")
    for name, seconds in details.get("seed_steps", {}).items():
        print(f"{'':<15}   seed: {name:<38} {seconds:8.1f} s")
    print(
        f"{'peak RSS':<15} {'daily-backup Python process (VmHWM)':<44} {r['backup_peak_rss_mb']:8.1f} MB   "
        f"goal < {goal['backup_peak_rss_mb']:.0f} MB; {r['backup_imported_rss_mb']:.0f} MB after imports; "
        f"with pg_dump {r['backup_tree_peak_rss_mb']:.0f} MB; restore flow {r['restore_peak_rss_mb']:.0f} MB"
    )
    print(
        f"{'S3 server CPU':<15} {'moto taking the backup upload':<44} {r['backup_s3_server_cpu_s'] or 0:8.1f} s    "
        "on the same cores as the flow"
    )
    print(f"goals: {json.dumps(r['goals_met'])}")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from blocks.postgres import PostgresDatabase
    from sandbox.components import PostgresComponent, prefect_env
    from tasks.storage import delete_stored, list_stored

    settings = SandboxSettings()
    state = SandboxState(settings.home)
    admin_dsn = check_sandbox(settings, state)
    pg_env = PostgresComponent(settings, state).env()
    if pg_env.get("RUNBOOKS_PG_BIN_DIR"):
        os.environ["RUNBOOKS_PG_BIN_DIR"] = pg_env["RUNBOOKS_PG_BIN_DIR"]
    child_env = {**os.environ, **prefect_env(settings), "RUNBOOKS_PG_BIN_DIR": pg_env.get("RUNBOOKS_PG_BIN_DIR", "")}
    if not child_env["RUNBOOKS_PG_BIN_DIR"]:
        del child_env["RUNBOOKS_PG_BIN_DIR"]
    child_env.update(deployment_env("daily-backup"))  # the flow runs as its deployment would (MALLOC_ARENA_MAX)

    workroot = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    need = (args.pg_mib * 3 + args.redis_mib * 2) * MiB
    free = shutil.disk_usage(workroot).free
    if free < need:
        raise BenchError(f"{free / 2**30:.1f} GiB free under {workroot}, about {need / 2**30:.1f} GiB needed")
    work = Path(tempfile.mkdtemp(prefix="rb-bench-backup-", dir=workroot))
    bench_home = settings.home / "bench"
    bench_redis = BenchRedis(bench_home / "redis")
    env: RunbookEnvironment | None = None
    keys: list[str] = []
    result: dict[str, Any] = {}
    details: dict[str, Any] = {"jobs": args.jobs, "compression_level": args.compression_level or 3}
    try:
        dsn, pg_gen_s = await asyncio.to_thread(prepare_postgres, admin_dsn, args.pg_mib)
        await asyncio.to_thread(bench_redis.start)
        redis_gen_s = await asyncio.to_thread(bench_redis.fill, args.redis_mib)
        db = PostgresDatabase(dsn=dsn)
        env = await save_bench_environment(settings, state, dsn, bench_redis.url)
        cluster = env.kubernetes
        if cluster is None:
            say("no Kubernetes cluster in the sandbox: the kubernetes and logs readers are left out")
        from tasks.backup.registry import DEFAULT_PARTS

        flow_parts = list(DEFAULT_PARTS)
        missing = [p for p in ("kubernetes", "logs") if p not in flow_parts]
        if missing and cluster is not None:
            say(f"note: daily-backup's default parts are {flow_parts}: no {' or '.join(missing)} part yet, while")
            say("      raw_parts_s reads them too (small: the namespace's objects and 24 h of one Deployment's logs)")
        load_before = round(os.getloadavg()[0], 2)

        archive = work / "raw.dump"
        say("warm-up: pg_dump -Fc -Z0 to a file (the raw restore's input) ...")
        argv, pg_tool_env = pg_dump_argv(db, "--format=custom", "--compress=0", f"--file={archive}")
        await run_tool(argv, env=pg_tool_env)

        say("raw_dump_s: pg_dump -Fc -Z0 > /dev/null ...")
        argv, pg_tool_env = pg_dump_argv(db, "--format=custom", "--compress=0")
        raw_dump_s = await run_tool(argv, env=pg_tool_env)

        say("raw_parts_s: every raw reader at once ...")
        raw_parts_s, details["raw_parts"], api_bytes = await raw_parts(db, bench_redis.url, cluster)

        say("backup_flow_s: daily-backup in a child process ...")
        s3_pid = int(state.get("s3").get("pid") or 0)
        s3_cpu_before = process_cpu_s(s3_pid)
        level = ["--compression-level", str(args.compression_level)] if args.compression_level else []
        backup, backup_tree_peak, backup_wall = await run_child(
            ["backup", "--environment", BENCH_ENVIRONMENT, *level], child_env, work / "backup-flow.log"
        )
        details["s3_server_cpu_s"] = round(process_cpu_s(s3_pid) - s3_cpu_before, 2) if s3_pid else None
        details["flow_parts"] = backup["parts"]
        details["bgsave_s"] = next((p["bgsave_s"] for p in backup["parts"] if p["name"] == "redis"), None)

        seed_s: float | None = None
        if not args.skip_seed:
            say("seed_way_s: the seed's script ...")
            seed_s, details["seed_steps"], seed_bytes, seed_key = await seed_way(
                work, db, bench_redis.url, cluster, env
            )
            keys.append(seed_key)
            details["seed_tarball_bytes"] = seed_bytes

        say(f"raw_restore_s: pg_restore -j {args.jobs} from a local file ...")
        raw_restore_s = await raw_restore(admin_dsn, db, archive, args.jobs)
        archive.unlink()

        say("restore_flow_s: restore-database in a child process ...")
        drop_database(admin_dsn, FLOW_RESTORE_DB)
        try:
            restore, restore_tree_peak, _ = await run_child(
                [
                    "restore",
                    "--environment",
                    BENCH_ENVIRONMENT,
                    "--backup-id",
                    backup["backup_id"],
                    "--database",
                    FLOW_RESTORE_DB,
                    "--jobs",
                    str(args.jobs),
                ],
                child_env,
                work / "restore-flow.log",
            )
        finally:
            drop_database(admin_dsn, FLOW_RESTORE_DB)

        part_bytes = {p["name"]: p["raw_bytes"] for p in backup["parts"]}
        result = {
            "raw_dump_s": round(raw_dump_s, 2),
            "raw_parts_s": round(raw_parts_s, 2),
            "seed_way_s": None if seed_s is None else round(seed_s, 2),
            "backup_flow_s": round(backup["flow_s"], 2),
            "raw_restore_s": round(raw_restore_s, 2),
            "restore_flow_s": round(restore["flow_s"], 2),
            "db_bytes": database_bytes(dsn),
            "redis_bytes": bench_redis.used_memory(),
            "backup_peak_rss_mb": round(backup["peak_rss_bytes"] / 1e6, 1),
            "backup_ratio": ratio(backup["flow_s"], raw_parts_s),
            "speedup_vs_seed": ratio(seed_s, backup["flow_s"]),
            "restore_ratio": ratio(restore["flow_s"], raw_restore_s),
            "pg_mib": args.pg_mib,
            "redis_mib": args.redis_mib,
            "pg_dump_bytes": part_bytes.get("postgres", 0),
            "rdb_bytes": part_bytes.get("redis", 0),
            "stored_bytes": backup["stored_bytes"],
            "seed_tarball_bytes": details.get("seed_tarball_bytes"),
            "flow_parts": flow_parts,
            "raw_parts_readers": sorted(details["raw_parts"]),
            "raw_parts_each_s": details["raw_parts"],
            "api_reader_bytes": api_bytes,
            "backup_parts_s": {p["name"]: p["duration_s"] for p in backup["parts"]},
            "backup_bgsave_s": details["bgsave_s"],
            # CPU the S3 stand-in (moto, pure Python) burnt taking the upload, on the same cores as the flow
            "backup_s3_server_cpu_s": details["s3_server_cpu_s"],
            "backup_child_wall_s": round(backup_wall, 2),
            "backup_imported_rss_mb": round(backup["imported_rss_bytes"] / 1e6, 1),
            "backup_tree_peak_rss_mb": round(backup_tree_peak / 1e6, 1),
            "restore_peak_rss_mb": round(restore["peak_rss_bytes"] / 1e6, 1),
            "restore_tree_peak_rss_mb": round(restore_tree_peak / 1e6, 1),
            "restored_rows": restore["rows"],
            "seed_steps_s": details.get("seed_steps"),
            "jobs": args.jobs,
            "compression_level": details["compression_level"],
            "generated_s": {
                "postgres": None if pg_gen_s is None else round(pg_gen_s, 1),
                "redis": None if redis_gen_s is None else round(redis_gen_s, 1),
            },
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
        }
        result["goals_met"] = {
            "backup_ratio": result["backup_ratio"] is not None and result["backup_ratio"] <= GOALS["backup_ratio"],
            "speedup_vs_seed": None
            if result["speedup_vs_seed"] is None
            else result["speedup_vs_seed"] >= GOALS["speedup_vs_seed"],
            "backup_peak_rss_mb": result["backup_peak_rss_mb"] < GOALS["backup_peak_rss_mb"],
            "restore_ratio": result["restore_ratio"] is not None and result["restore_ratio"] <= GOALS["restore_ratio"],
        }
        keys += [o.key for o in await asyncio.to_thread(list_stored, env.backups, f"daily/{BENCH_ENVIRONMENT}/")]
    finally:
        say("cleaning up ...")
        if env is not None:
            if keys:
                await asyncio.to_thread(delete_stored, env.backups, keys)
            if not args.keep_data:
                await delete_bench_environment(env)
        await asyncio.to_thread(bench_redis.stop, keep=args.keep_data)
        if not args.keep_data:
            shutil.rmtree(bench_home, ignore_errors=True)
            drop_database(admin_dsn, BENCH_DB)
        shutil.rmtree(work, ignore_errors=True)
    print_table(result, details)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--pipeline" in argv:
        from benchmarks import backup_pipeline

        backup_pipeline.main([a for a in argv if a != "--pipeline"])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-mib", type=int, default=2048, help="PostgreSQL data, MiB of pg_database_size")
    parser.add_argument("--redis-mib", type=int, default=1024, help="Redis data, MiB of used_memory")
    parser.add_argument("--skip-seed", action="store_true", help="leave the seed's script out (no speedup_vs_seed)")
    parser.add_argument("--keep-data", action="store_true", help="keep the data and the block for the next run")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j, for both restores")
    parser.add_argument("--compression-level", type=int, help="the flow's zstd level (default: the flow's own, 3)")
    parser.add_argument("--workdir", help="where the seed's files and the raw dump go (default: the temp dir)")
    parser.add_argument("--pipeline", action="store_true", help="run benchmarks.backup_pipeline instead (its options)")
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
