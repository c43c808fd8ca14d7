"""Session-wide fixtures: a Prefect test harness, and the sandbox's real services on private ports.

The services are the sandbox's own components (the production code of ``runbooks sandbox up``) run from a
temporary home, on free ports, with a scratch PostgreSQL database and a Redis database index of their own,
so the suite never touches a developer's running sandbox.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the suite runs against the sandbox's own cluster, never a cluster the developer's KUBECONFIG points at
os.environ.pop("KUBECONFIG", None)

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from blocks.kubernetes import KubernetesCluster  # noqa: E402
from sandbox.components import port_free  # noqa: E402
from sandbox.config import SandboxSettings  # noqa: E402
from sandbox.manager import Sandbox  # noqa: E402

TEST_ENVIRONMENT = "sandbox-test"
SERVICES = ["postgres", "redis", "s3", "platform", "receivers", "kubernetes"]


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(span: int = 1) -> int:
    """A free port (with the ``span - 1`` after it) below the kernel's ephemeral range.

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


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_settings(home: Path, **overrides: object) -> SandboxSettings:
    values: dict[str, object] = {
        "home": home,
        "environment": TEST_ENVIRONMENT,
        "postgres_admin_dsn": os.environ.get(
            "RUNBOOKS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        "postgres_db": f"rb_test_{uuid.uuid4().hex[:8]}",
        "postgres_size": "3MB",
        "redis_url": os.environ.get("RUNBOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"),
        "redis_size": "1MB",
        "redis_port": free_port(),
        "s3_port": free_port(),
        "platform_port": free_port(),
        "receivers_port": free_port(),
        "prefect_port": free_port(),
        "k8s_api_port": free_port(),
        "k8s_etcd_port": free_port(span=12),  # etcd client/peer, controller-manager +10, scheduler +11
        "k8s_kubelet_port": free_port(),
        "k8s_metrics_port": free_port(),
        "startup_timeout_s": 60.0,
    }
    values.update(overrides)
    return SandboxSettings(**values)  # type: ignore[arg-type]


def drop_database(admin_dsn: str, dbname: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Sandbox]:
    """The sandbox's services (not its Prefect server: the harness stands in), blocks saved as ``sandbox-test``."""
    import asyncio

    import redis

    from sandbox.blocks import apply_blocks

    settings = make_settings(tmp_path_factory.mktemp("sandbox"))
    box = Sandbox(settings)
    redis.Redis.from_url(settings.redis_url).flushdb()
    try:
        box.up(SERVICES)
        asyncio.run(apply_blocks(settings, box.state))
        yield box
    finally:
        box.down(SERVICES)
        drop_database(settings.postgres_admin_dsn, settings.postgres_db)
        redis.Redis.from_url(settings.redis_url).flushdb()


@pytest.fixture()
def receivers_url(sandbox: Sandbox) -> Iterator[str]:
    """The notification receivers' URL, cleared before each test."""
    import httpx

    url = sandbox.settings.url(sandbox.settings.receivers_port)
    httpx.delete(f"{url}/_received").raise_for_status()
    yield url


@pytest.fixture()
def platform_admin(sandbox: Sandbox) -> Iterator[tuple[str, dict[str, str]]]:
    """(platform URL, admin headers); faults are cleared before and after each test."""
    import httpx

    url = sandbox.settings.url(sandbox.settings.platform_port)
    headers = {"Authorization": f"Bearer {sandbox.state.secrets()['platform_admin_token']}"}
    httpx.post(f"{url}/_sandbox/reset", headers=headers).raise_for_status()
    yield url, headers
    httpx.post(f"{url}/_sandbox/reset", headers=headers).raise_for_status()


@pytest.fixture(scope="session")
def kubernetes_cluster(sandbox: Sandbox) -> KubernetesCluster:
    """The sandbox's real Kubernetes API server, as the flows see it (RBAC-bound token), namespace production."""
    from blocks.environment import RunbookEnvironment

    env = RunbookEnvironment.load(TEST_ENVIRONMENT)
    assert env.kubernetes is not None, "the sandbox fixture did not bring Kubernetes up"
    return env.kubernetes


@pytest.fixture(scope="session")
def admin_kubeconfig(sandbox: Sandbox) -> Path:
    """Cluster-admin kubeconfig, for test set-up only (product code uses the flows' credentials)."""
    return Path(sandbox.state.get("kubernetes")["admin_kubeconfig"])
