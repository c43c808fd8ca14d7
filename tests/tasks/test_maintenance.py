"""The weekly maintenance's steps against the sandbox's real API server and PostgreSQL: the cleanup keeps the
current, previous and last known good ReplicaSets and every mounted ConfigMap (checked with the real ``kubectl``),
in a namespace of the test's own; the database inspection finds a duplicate index and the bloat of a table with
half its rows deleted, in a scratch database; the step runner turns a step that raises into that step's fail."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, AppsV1Api, Configuration, CoreV1Api
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.postgres import PostgresDatabase
from sandbox.manager import Sandbox
from tasks.kubernetes import LAST_KNOWN_GOOD, LastKnownGood, record_last_known_good, set_image
from tasks.maintenance import checks
from tasks.maintenance.checks import MaintenanceContext
from tasks.maintenance.policy import load_maintenance_policy
from tasks.maintenance.steps import StepResult, run_step
from tasks.postgres import analyze_database, inspect_database
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.test_backup import admin_dsn
from tests.tasks.test_kubernetes import REGISTRY, make_deployment, ready

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")

PREFIX = "deployment-alerts-"


@pytest.fixture(scope="module")
async def admin(admin_kubeconfig: Path) -> AsyncIterator[ApiClient]:
    """Cluster admin, for set-up only; the steps under test use the flows' credentials."""
    configuration = Configuration()
    await config.load_kube_config(config_file=str(admin_kubeconfig), client_configuration=configuration)
    async with ApiClient(configuration) as api:
        yield api


@pytest.fixture()
async def scratch(admin: ApiClient) -> AsyncIterator[str]:
    """A namespace of this test's own, deleted afterwards (with everything the test made in it)."""
    name = f"rb-maint-{uuid.uuid4().hex[:6]}"
    core = CoreV1Api(admin)
    await core.create_namespace({"metadata": {"name": name, "labels": {"runbooks-test": "true"}}})
    yield name
    await core.delete_namespace(name)


def kubectl(admin_kubeconfig: Path, *args: str) -> str:
    argv = ["kubectl", "--kubeconfig", str(admin_kubeconfig), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


def revisions_left(admin_kubeconfig: Path, namespace: str, deployment: str) -> list[int]:
    """The revisions of ``deployment``'s ReplicaSets, as ``kubectl get rs -o json`` shows them."""
    items = json.loads(kubectl(admin_kubeconfig, "get", "rs", "-n", namespace, "-o", "json"))["items"]
    return sorted(
        int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
        for rs in items
        if rs["metadata"]["name"].startswith(f"{deployment}-")
    )


async def test_cleanup_keeps_current_previous_last_known_good_and_mounted(
    sandbox: Sandbox, kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str, admin_kubeconfig: Path
) -> None:
    # demo-api: revisions 1..8 (no pods, so each image is a new revision at once); revision 2 is last known good
    await make_deployment(admin, scratch, "demo-api", replicas=0)
    for tag in range(2, 9):
        await set_image.fn(kubernetes_cluster, "demo-api", f"{REGISTRY}/demo-api:v{tag}", scratch)
        await ready(kubernetes_cluster, scratch, "demo-api")
    assert revisions_left(admin_kubeconfig, scratch, "demo-api") == list(range(1, 9))
    good = LastKnownGood(revision=2, images=[f"{REGISTRY}/demo-api:v2"], time=datetime.now(UTC))
    await record_last_known_good.fn(kubernetes_cluster, "demo-api", good, scratch)
    # five alert ConfigMaps; the oldest is still mounted by a Deployment
    core = CoreV1Api(admin)
    names = [f"{PREFIX}2026110{day}-120000" for day in range(1, 6)]
    for name in [*names, "ai-multimodel-config"]:
        await core.create_namespaced_config_map(scratch, {"metadata": {"name": name}, "data": {"k": "v"}})
    await AppsV1Api(admin).create_namespaced_deployment(
        scratch,
        {
            "metadata": {"name": "demo-web"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "demo-web"}},
                "template": {
                    "metadata": {"labels": {"app": "demo-web"}},
                    "spec": {
                        "containers": [{"name": "web", "image": f"{REGISTRY}/demo-web:v1"}],
                        "volumes": [{"name": "alerts", "configMap": {"name": names[0]}}],
                    },
                },
            },
        },
    )
    env = await RunbookEnvironment.aload(TEST_ENVIRONMENT)
    policy = load_maintenance_policy()
    policy.cleanup.keep_replicasets = 2  # history of 2 besides the current one
    ctx = MaintenanceContext(
        env=env.model_copy(update={"kubernetes": kubernetes_cluster.model_copy(update={"namespace": scratch})}),
        environment=TEST_ENVIRONMENT,
        policy=policy,
        dry_run=True,
    )

    dry = await checks.cleanup(ctx)

    assert dry.status == "warn" and dry.summary == "dry run: would delete 4 ReplicaSet(s), 1 ConfigMap(s)"
    assert revisions_left(admin_kubeconfig, scratch, "demo-api") == list(range(1, 9))  # nothing deleted

    ctx.dry_run = False
    done = await checks.cleanup(ctx)

    assert done.status == "pass", done.summary
    assert done.figures["replicasets_deleted"] == 4 and done.figures["configmaps_deleted"] == 1
    # 8 current, 7 the one before it, 6 history, 2 last known good; 1, 3, 4, 5 gone
    assert revisions_left(admin_kubeconfig, scratch, "demo-api") == [2, 6, 7, 8]
    assert any("last known good" in line for line in done.details)
    left = set(kubectl(admin_kubeconfig, "get", "configmaps", "-n", scratch, "-o", "name").split())
    assert left == {f"configmap/{n}" for n in [names[0], *names[2:], "ai-multimodel-config", "kube-root-ca.crt"]}
    assert any(names[0] in line and "mounted by demo-web" in line for line in done.details)
    # and `kubectl rollout undo` still has its target: the previous revision
    kubectl(admin_kubeconfig, "rollout", "undo", "deployment/demo-api", "-n", scratch)
    await ready(kubernetes_cluster, scratch, "demo-api")
    deployment = json.loads(kubectl(admin_kubeconfig, "get", "deployment/demo-api", "-n", scratch, "-o", "json"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{REGISTRY}/demo-api:v7"

    # kubectl's undo replaced the Deployment's annotations with the old ReplicaSet's: the record is gone, so a
    # re-run keeps 9 (was 7, now current), 8 (the one before it) and 6, and lets revision 2 go
    assert LAST_KNOWN_GOOD not in deployment["metadata"].get("annotations", {})
    again = await checks.cleanup(ctx)
    assert again.status == "pass" and again.figures["replicasets_deleted"] == 1, again.summary
    assert revisions_left(admin_kubeconfig, scratch, "demo-api") == [6, 8, 9]
    assert (await checks.cleanup(ctx)).summary == "nothing to delete"


@pytest.fixture()
def scratch_database(sandbox: Sandbox) -> Iterator[PostgresDatabase]:
    name = f"rb_test_maint_{uuid.uuid4().hex[:8]}"
    admin_conninfo = admin_dsn(sandbox)
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(**{**conninfo_to_dict(admin_conninfo), "dbname": name})
    try:
        yield PostgresDatabase(dsn=SecretStr(dsn))
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_database_inspection_finds_bloat_duplicates_and_unused(scratch_database: PostgresDatabase) -> None:
    with psycopg.connect(scratch_database.dsn.get_secret_value(), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, body text, n int)")
        conn.execute("INSERT INTO events (body, n) SELECT md5(g::text), g FROM generate_series(1, 40000) g")
        conn.execute("CREATE INDEX events_n ON events (n)")
        conn.execute("CREATE INDEX events_n_again ON events (n)")
        conn.execute("DELETE FROM events WHERE id % 2 = 0")  # half the rows dead: about half the pages are bloat

    analyzed = await analyze_database.fn(scratch_database)
    found = await inspect_database.fn(scratch_database)

    assert analyzed.database == found.database == scratch_database.dbname
    assert found.largest_tables[0].name == "events" and found.largest_tables[0].total_bytes > 0
    assert {i.name for i in found.largest_indexes} == {"events_pkey", "events_n", "events_n_again"}
    [bloat] = [b for b in found.bloat if b.table == "events"]
    assert 35 <= bloat.bloat_percent <= 65, bloat  # the estimate, from pg_stats and reltuples after ANALYZE
    [dupes] = found.duplicate_indexes
    assert dupes.table == "events" and dupes.indexes == ["events_n", "events_n_again"]
    assert {u.index for u in found.unused_indexes} == {"events_n", "events_n_again"}  # never the primary key
    mine = next(x for x in found.xid if x.database == scratch_database.dbname)
    assert mine.freeze_max_age > 0 and 0 <= mine.percent < 100
    assert {(c.table, c.column) for c in found.column_stats} >= {("events", "id"), ("events", "n")}


async def test_a_step_that_raises_is_that_steps_fail(sandbox: Sandbox) -> None:
    async def broken() -> StepResult:
        raise RuntimeError("the database went away")

    async def judged() -> StepResult:
        return StepResult(number=2, name="two", title="Two", status="fail", summary="3 pods not running")

    async def fine() -> StepResult:
        return StepResult(number=3, name="three", title="Three", status="warn", summary="1 pod slow")

    first = await run_step(1, "one", "One", broken)
    second = await run_step(2, "two", "Two", judged)
    third = await run_step(3, "three", "Three", fine)

    assert first.status == "fail" and "the database went away" in first.summary
    assert second.status == "fail" and second.summary == "3 pods not running"
    assert third.status == "warn"
