"""Session-wide fixtures: a Prefect test harness, and the sandbox's real services on private ports.

The services are the sandbox's own components (the production code of ``runbooks sandbox up``) run from a
temporary home, on free ports, with a scratch PostgreSQL database and a Redis database index of their own,
so the suite never touches a developer's running sandbox, and two runs of the suite on one machine share
nothing: every Redis database index is leased (``redis_databases``), every PostgreSQL database and S3 home is
named after the run, every port comes from ``free_port``.

The Prefect harness (a server in a subprocess) starts only for the tests that ask for it (``prefect_harness``,
or the ``sandbox`` fixture); ephemeral servers are disabled, so a test that talks to Prefect without asking for
the harness fails at once instead of starting a server of its own.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"  # only the harness starts a server, and only on request
# the suite runs against the sandbox's own cluster, never a cluster the developer's KUBECONFIG points at
os.environ.pop("KUBECONFIG", None)

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from blocks.kubernetes import KubernetesCluster  # noqa: E402
from blocks.redis import RedisDatabase  # noqa: E402
from sandbox.components import free_port  # noqa: E402
from sandbox.config import SandboxSettings  # noqa: E402
from sandbox.manager import Sandbox  # noqa: E402

TEST_ENVIRONMENT = "sandbox-test"
SERVICES = ["postgres", "redis", "s3", "platform", "receivers", "kubernetes", "cert-manager", "ingress"]
#: the disaster-recovery target (a second PostgreSQL and a second Redis): started only by ``recovery_environment``
RECOVERY_SERVICES = ["recovery-postgres", "recovery-redis"]


def loopback_cidr() -> str:
    """A /16 of 127.0.0.0/8 for a cluster's service range (the node agent listens on an address in it, on a
    ``free_port``, which is checked on 127.0.0.1 only): random in 127.100-199, never a developer sandbox's
    127.64 or the pods' 127.65, so two runs' agents do not meet on one address. (tests/sandbox/k8s only so far:
    the session sandbox keeps the default range.)"""
    return f"127.{random.SystemRandom().randrange(100, 200)}.0.0/16"


RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
REDIS_SERVER = os.environ.get("RUNBOOKS_TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
LEASE_PREFIX = "runbooks:test-db:"
LEASE_TTL_S = 7200
_RELEASE = """if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"""


class RedisDatabases:
    """Redis database indexes leased to this run of the suite, so concurrent runs on one machine never share one.

    A lease is ``runbooks:test-db:<n> = <run id>`` in database 0, taken with ``SET NX EX`` (two runs cannot both
    win it) and expiring on its own if a run dies without releasing it. An index is claimed only when nobody
    holds its lease and it holds no keys (a run of an older suite, or a person, may be using it without a lease).
    Every database handed out is flushed when claimed and when released; nothing else is ever flushed.
    """

    def __init__(self, server: str = REDIS_SERVER, run_id: str = RUN_ID) -> None:
        import redis

        self.server = server.rstrip("/")
        self.run_id = run_id
        self._leases = redis.Redis.from_url(f"{self.server}/0")
        self._held: list[int] = []
        self._pinned: set[int] = set()

    def url(self, index: int) -> str:
        return f"{self.server}/{index}"

    def claim(self) -> str:
        """The URL of a database no other run uses, leased until ``release_all``."""
        import redis

        for index in range(1, 16):
            if index in self._held:
                continue
            with redis.Redis.from_url(self.url(index)) as client:
                if client.dbsize():
                    continue
                if not self._leases.set(f"{LEASE_PREFIX}{index}", self.run_id, nx=True, ex=LEASE_TTL_S):
                    continue
                client.flushdb()  # empty a moment ago; whatever landed since is nobody's but ours
            self._held.append(index)
            return self.url(index)
        raise RuntimeError(
            f"no free Redis database on {self.server}: indexes 1-15 are all leased or hold keys "
            f"(leases: {LEASE_PREFIX}<n> in db 0; set RUNBOOKS_TEST_REDIS_URL to name one)"
        )

    def pin(self, url: str) -> str:
        """Honour an explicit database (``RUNBOOKS_TEST_REDIS_URL``): lease it too, so no other run claims it."""
        index = int(url.rstrip("/").rsplit("/", 1)[1] or 0)
        holder = self._leases.get(f"{LEASE_PREFIX}{index}")
        if holder is not None and holder.decode() != self.run_id:
            raise RuntimeError(f"Redis database {index} ({url}) is leased by another test run ({holder.decode()})")
        self._leases.set(f"{LEASE_PREFIX}{index}", self.run_id, ex=LEASE_TTL_S)
        self._held.append(index)
        self._pinned.add(index)
        return url

    def release_all(self) -> None:
        import redis

        for index in reversed(self._held):
            if index not in self._pinned:
                with redis.Redis.from_url(self.url(index)) as client:
                    client.flushdb()
            self._leases.eval(_RELEASE, 1, f"{LEASE_PREFIX}{index}", self.run_id)
        self._held.clear()
        self._leases.close()


@pytest.fixture(scope="session")
def redis_databases() -> Iterator[Callable[[], str]]:
    """Factory of Redis database URLs leased to this run (flushed on claim and at the end of the session)."""
    databases = RedisDatabases()
    try:
        yield databases.claim
    finally:
        databases.release_all()


@pytest.fixture(scope="session")
def redis_url(redis_databases: Callable[[], str]) -> Iterator[str]:
    """This run's main Redis database: ``RUNBOOKS_TEST_REDIS_URL`` if set (leased, never claimed from the pool),
    else one claimed from the pool. The sandbox fixture keeps its data there."""
    explicit = os.environ.get("RUNBOOKS_TEST_REDIS_URL")
    if not explicit:
        yield redis_databases()
        return
    pinned = RedisDatabases()
    try:
        yield pinned.pin(explicit)
    finally:
        pinned.release_all()


@pytest.fixture(scope="session")
def spare_redis_url(redis_databases: Callable[[], str]) -> str:
    """A second Redis database of this run's, beside the sandbox's (a restore target, a generator's scratch)."""
    return redis_databases()


@pytest.fixture()
def spare_redis(spare_redis_url: str) -> Iterator[RedisDatabase]:
    """``spare_redis_url`` as a block, empty before and after the test."""
    import redis

    with redis.Redis.from_url(spare_redis_url) as client:
        client.flushdb()
        yield RedisDatabase(url=spare_redis_url)  # type: ignore[arg-type]
        client.flushdb()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A Prefect server (in a subprocess, on SQLite) for the session: request it where a test runs flows or
    tasks, or saves or loads blocks (``pytestmark = pytest.mark.usefixtures("prefect_harness")``)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_settings(home: Path, redis_url: str, **overrides: object) -> SandboxSettings:
    """Sandbox settings private to this run: ``redis_url`` from ``redis_databases``/``redis_url``, a uniquely
    named PostgreSQL database, every port from ``free_port``, the S3 double's data under ``home``."""
    values: dict[str, object] = {
        "home": home,
        "environment": TEST_ENVIRONMENT,
        "postgres_admin_dsn": os.environ.get(
            "RUNBOOKS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        "postgres_port": free_port(),  # the sandbox's own cluster, where the machine has PostgreSQL's binaries
        # ... with its data outside pytest's basetemp: every pytest start on the machine strips the others' access
        # to /tmp/pytest-of-<user> (mode 0700), and the cluster runs as the postgres user. Created by the cluster's
        # initdb only (a test that never starts PostgreSQL leaves nothing); release_postgres removes it.
        "postgres_data_dir": Path(tempfile.gettempdir()) / f"runbooks-pg-{RUN_ID}-{uuid.uuid4().hex[:8]}" / "main",
        "postgres_db": f"rb_test_{uuid.uuid4().hex[:8]}",
        "postgres_size": "3MB",
        "redis_url": redis_url,
        "redis_size": "1MB",
        "redis_port": free_port(),
        "recovery_postgres_port": free_port(),
        "recovery_redis_port": free_port(),
        "s3_port": free_port(),
        "platform_port": free_port(),
        "receivers_port": free_port(),
        "prefect_port": free_port(),
        "k8s_api_port": free_port(),
        "k8s_etcd_port": free_port(span=12),  # etcd client/peer, controller-manager +10, scheduler +11
        "k8s_kubelet_port": free_port(),
        "k8s_metrics_port": free_port(),
        "ingress_port": free_port(),
        "gateway_port": free_port(),
        "prometheus_port": free_port(),
        "alertmanager_port": free_port(),
        "startup_timeout_s": 60.0,
    }
    values.update(overrides)
    return SandboxSettings(**values)  # type: ignore[arg-type]


def drop_database(admin_dsn: str, dbname: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def release_postgres(settings: SandboxSettings, record: dict[str, object]) -> None:
    """After ``down``: the run's own cluster is deleted; on a shared server, the run's databases are dropped."""
    from sandbox.components import PostgresComponent
    from sandbox.config import SandboxState

    component = PostgresComponent(settings, SandboxState(settings.home))
    if component.kind(record) == "cluster":
        component.cluster(Path(str(record["bin_dir"]))).destroy()
    if settings.postgres_data_dir is not None:  # make_settings' directory of the run's cluster
        shutil.rmtree(settings.postgres_data_dir.parent, ignore_errors=True)
    if component.kind(record) == "cluster":
        return
    admin_dsn = str(record.get("admin_dsn") or settings.postgres_admin_dsn)
    if component.kind(record) == "server":
        drop_database(admin_dsn, settings.postgres_db)
        drop_database(admin_dsn, f"{settings.postgres_db}_prefect")  # a Prefect server's, where one ran


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, redis_url: str) -> Iterator[Sandbox]:
    """The sandbox's services (not its Prefect server: the harness stands in), blocks saved as ``sandbox-test``."""
    import asyncio

    import redis

    from sandbox.blocks import apply_blocks

    settings = make_settings(tmp_path_factory.mktemp("sandbox"), redis_url)
    box = Sandbox(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        client.flushdb()
    try:
        box.up(SERVICES)
        asyncio.run(apply_blocks(settings, box.state))
        yield box
    finally:
        postgres = box.state.get("postgres")
        box.down(SERVICES)
        release_postgres(settings, postgres)
        with redis.Redis.from_url(settings.redis_url) as client:
            client.flushdb()


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


async def fresh_api_pods(cluster: KubernetesCluster, timeout_s: float = 120) -> None:
    """API pods that restarted during a scenario (a crash-looping release, a fault) are replaced, so later tests see
    the release as seeded (their restarts failed tests/tasks/test_kubernetes.py::test_list_pods_wide)."""
    import asyncio
    import time

    from tasks import kubernetes as k8s

    app = "app=ai-multimodel-api"
    for pod in await k8s.list_pods.fn(cluster, label_selector=app):
        if pod.restarts:
            await k8s.delete_pod.fn(cluster, pod.name)
    deadline = time.monotonic() + timeout_s
    while True:
        pods = [p for p in await k8s.list_pods.fn(cluster, label_selector=app) if p.status != "Terminating"]
        if len(pods) == 3 and all(p.is_ready and not p.restarts for p in pods):
            return
        assert time.monotonic() < deadline, f"the API's pods were not fresh again within {timeout_s}s: {pods}"
        await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
def recovery_environment(sandbox: Sandbox) -> Iterator[str]:
    """The disaster-recovery target, started for the tests that ask for it: a second PostgreSQL (a cluster of the
    sandbox's own, its directory in a ``tempfile.mkdtemp``, outside pytest's tmp dir) and a second redis-server,
    on free ports, and the ``<environment>-recovery`` environment block pointing at them. Yields the block's name;
    stopped and deleted at the end of the session."""
    import asyncio
    import shutil
    import tempfile

    from blocks.registry import save_environment
    from sandbox.blocks import recovery_environment as recovery_block
    from sandbox.blocks import recovery_environment_name

    root = Path(tempfile.mkdtemp(prefix="rb-recovery-pg-"))
    settings = sandbox.settings.model_copy(update={"recovery_postgres_dir": root})
    box = Sandbox(settings)
    try:
        box.up(RECOVERY_SERVICES)
        env = recovery_block(settings, box.state)
        assert env is not None, "the recovery target did not come up"
        name = recovery_environment_name(settings)
        asyncio.run(save_environment(env, name))
        yield name
    finally:
        box.down(RECOVERY_SERVICES)
        shutil.rmtree(root, ignore_errors=True)
