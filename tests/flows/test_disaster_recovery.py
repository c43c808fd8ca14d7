"""disaster-recovery and dr-drill against the sandbox's real Kubernetes API server, PostgreSQL, Redis and S3, into the
recovery target (a second PostgreSQL and a second redis-server, ``recovery_environment``), from a backup taken here.
Effects are checked with the clients a user would use: kubectl, psql, redis-cli. The backup's Secrets never in clear:
test_backup checks the stored objects; here the artifacts, the events and the run's logs."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run

from blocks.environment import RunbookEnvironment
from flows.disaster_recovery import disaster_recovery, dr_drill
from sandbox.manager import Sandbox
from tasks.backup.manifest import Manifest
from tasks.backup.restore import read_manifest
from tasks.dr.plan import RecoveryRefusedError
from tasks.dr.recovery import admin_block
from tasks.kubernetes.restore import restore_service_selector
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.test_backup import NO_RETENTION, events

# the first test here also starts the recovery target (a PostgreSQL cluster and a redis-server) and may start the
# session's sandbox: the failing drill alone used most of the suite's 300 s once on a busy machine
pytestmark = pytest.mark.timeout(600)

API = "ai-multimodel-api"
DR_RESOURCE = f"runbooks.dr.{TEST_ENVIRONMENT}"


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60, check=check
    )


def kjson(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, *args, "-o", "json").stdout)


def psql(dsn: str, query: str) -> str:
    return subprocess.run(
        ["psql", "-X", "-A", "-t", "-d", dsn, "-c", query], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


def redis_cli(url: str, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-u", url, *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def row_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    return {t: int(psql(dsn, f"SELECT count(*) FROM ONLY {t}")) for t in tables}


async def paused_run(flow_name: str, parameter: str, value: str, run: asyncio.Task[Any], timeout_s: float = 300) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if run.done():
            raise AssertionError(f"{flow_name} did not pause: {run.result()}")
        async with get_client() as client:
            paused = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for flow_run in paused:
            if flow_run.parameters.get(parameter) == value:
                return flow_run.id
        await asyncio.sleep(0.5)
    raise AssertionError(f"{flow_name} never paused within {timeout_s}s")


async def dr_event(name: str, namespace: str, since: datetime, timeout_s: float = 30) -> Any:
    """The one ``name`` event of the recovery into ``namespace`` (events are persisted asynchronously: polled)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = [e for e in await events([name], DR_RESOURCE, since) if e.payload.get("namespace") == namespace]
        if found or asyncio.get_running_loop().time() > deadline:
            assert len(found) == 1, f"{len(found)} {name} event(s) for {namespace}"
            return found[0]
        await asyncio.sleep(0.5)


async def artifact(key: str) -> str:
    async with get_client() as client:
        found = await client.read_latest_artifacts()
        for a in found:
            if a.key == key:
                return str(a.data)
    raise AssertionError(f"no artifact {key}")


@pytest.fixture(scope="module")
def source(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


@pytest.fixture(scope="module")
def recovery(recovery_environment: str) -> RunbookEnvironment:
    return RunbookEnvironment.load(recovery_environment)


@pytest.fixture(scope="module")
async def backup(source: RunbookEnvironment) -> Manifest:
    """A daily backup of the sandbox taken here (PostgreSQL, Redis, Kubernetes with its Secrets encrypted)."""
    from flows.backup import daily_backup

    report = await daily_backup(
        environment=TEST_ENVIRONMENT, parts=["postgres", "redis", "kubernetes"], retention=NO_RETENTION
    )
    manifest = await read_manifest(source.backups, report.prefix)
    assert manifest is not None and manifest.status == "completed"
    return manifest


@pytest.fixture()
def recovery_cleanup(
    admin_kubeconfig: Path, recovery: RunbookEnvironment, kubernetes_cluster: Any
) -> Iterator[list[str]]:
    """Namespaces to delete afterwards; the recovery database dropped, the recovery Redis flushed, production's
    Service selector put back if a test left it switched."""
    namespaces: list[str] = []
    yield namespaces
    asyncio.run(restore_service_selector.fn(kubernetes_cluster, API, "production"))
    for ns in namespaces:
        kubectl(admin_kubeconfig, "delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
    psql(admin_block(recovery.postgres).conninfo(), f"DROP DATABASE IF EXISTS {recovery.postgres.dbname} WITH (FORCE)")
    redis_cli(recovery.redis.url.get_secret_value(), "FLUSHDB")


def secrets_of(kubeconfig: Path, namespace: str) -> dict[str, dict[str, str]]:
    items = kjson(kubeconfig, "get", "secrets", "-n", namespace)["items"]
    return {
        s["metadata"]["name"]: s.get("data") or {}
        for s in items
        if s.get("type") != "kubernetes.io/service-account-token"
    }


async def test_full_recovery_then_approved_switch_sends_production_to_recovery_pods(
    sandbox: Sandbox,
    source: RunbookEnvironment,
    recovery: RunbookEnvironment,
    recovery_environment: str,
    backup: Manifest,
    admin_kubeconfig: Path,
    recovery_cleanup: list[str],
) -> None:
    namespace = f"rb-dr-{uuid.uuid4().hex[:6]}"
    recovery_cleanup.append(namespace)
    since = datetime.now(UTC) - timedelta(seconds=2)
    run = asyncio.create_task(
        disaster_recovery(
            environment=TEST_ENVIRONMENT,
            recovery_environment=recovery_environment,
            backup_id=backup.backup_id,
            recovery_namespace=namespace,
            switch_traffic=True,
        )
    )
    run_id = await paused_run("disaster-recovery", "recovery_namespace", namespace, run)

    # verified before the approval is asked: namespace labelled, Deployments available
    ns = kjson(admin_kubeconfig, "get", "namespace", namespace)
    assert ns["metadata"]["labels"]["disaster-recovery"] == "true"
    deployments = kjson(admin_kubeconfig, "get", "deployments", "-n", namespace)["items"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "ai-multimodel-api",
        "ai-multimodel-frontend",
        "postgresql",
        "redis",
    }
    assert all(d["status"].get("availableReplicas") == d["spec"]["replicas"] for d in deployments)
    assert not kjson(admin_kubeconfig, "get", "replicasets", "-n", namespace)["items"] or all(
        rs["metadata"].get("ownerReferences")
        for rs in kjson(admin_kubeconfig, "get", "replicasets", "-n", namespace)["items"]
    )  # every ReplicaSet there is the new Deployments' own: none restored from the backup
    # Secrets equal to the originals
    originals = secrets_of(admin_kubeconfig, "production")
    assert secrets_of(admin_kubeconfig, namespace) == originals and originals
    # row counts and keys equal to the manifest (psql, redis-cli against the recovery servers)
    assert backup.postgres is not None and backup.redis is not None
    expected = backup.postgres.row_counts
    assert row_counts(recovery.postgres.conninfo(), list(expected)) == expected
    keys = int(redis_cli(recovery.redis.url.get_secret_value(), "DBSIZE").strip())
    assert keys == backup.redis.key_count > 0
    # nothing switched before the approval
    service = kjson(admin_kubeconfig, "get", "service", API, "-n", "production")
    assert service["spec"]["selector"] == {"app": API}

    await aresume_flow_run(run_id, run_input={"approve": True, "confirm_namespace": namespace, "reason": "test"})
    report = await asyncio.wait_for(run, timeout=180)

    assert report.status == "completed" and report.switch_approved and not report.switch_rolled_back
    recovery_pods = {
        p["metadata"]["name"]
        for p in kjson(admin_kubeconfig, "get", "pods", "-n", namespace, "-l", f"app={API}")["items"]
    }
    slices = kjson(
        admin_kubeconfig, "get", "endpointslices", "-n", "production", "-l", f"kubernetes.io/service-name={API}"
    )["items"]
    targets = [e["targetRef"] for s in slices for e in s.get("endpoints") or []]
    assert targets and {t["namespace"] for t in targets} == {namespace}
    assert {t["name"] for t in targets} == recovery_pods

    # RTA and RPO in the artifact and the event; no Secret value in either
    assert report.rta_s and report.rta_s > 0 and report.rpo_s is not None and report.rpo_s >= 0
    markdown = await artifact(f"dr-{TEST_ENVIRONMENT}")
    assert "RTA" in markdown and "RPO" in markdown and f"{report.rta_s:.1f} s" in markdown
    event = await dr_event("dr.completed", namespace, since)
    assert event.payload["rta_s"] == report.rta_s and event.payload["rpo_s"] == report.rpo_s
    assert set(event.payload["phases"]) >= {"preflight", "kubernetes", "postgres", "redis", "verify", "switch"}
    preflight = await artifact(f"dr-preflight-{TEST_ENVIRONMENT}")
    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    log_text = "\n".join(entry.message for entry in logs)
    assert "Recovery verified" in log_text  # the run's logs were read
    for data in originals.values():
        for value in data.values():
            clear = base64.b64decode(value).decode(errors="replace")
            if len(clear) < 12:  # POSTGRES_USER=postgres is a word the report uses: only real secrets
                continue
            for text in (markdown, preflight, json.dumps(event.payload), log_text):
                assert value not in text and clear not in text


async def test_refuses_the_source_live_namespace_and_changes_nothing(
    source: RunbookEnvironment, recovery_environment: str, backup: Manifest, admin_kubeconfig: Path
) -> None:
    before = kjson(admin_kubeconfig, "get", "configmaps", "-n", "production")["items"]
    state = await disaster_recovery(
        environment=TEST_ENVIRONMENT,
        recovery_environment=recovery_environment,
        backup_id=backup.backup_id,
        recovery_namespace="production",
        return_state=True,
    )
    assert state.is_failed()
    error = await state.result(raise_on_failure=False)
    assert isinstance(error, RecoveryRefusedError) and "live namespace" in str(error)
    after = kjson(admin_kubeconfig, "get", "configmaps", "-n", "production")["items"]
    assert [c["metadata"]["resourceVersion"] for c in after] == [c["metadata"]["resourceVersion"] for c in before]


async def test_failed_smoke_after_the_switch_puts_the_selector_back(
    source: RunbookEnvironment,
    recovery_environment: str,
    backup: Manifest,
    admin_kubeconfig: Path,
    recovery_cleanup: list[str],
    platform_admin: tuple[str, dict[str, str]],
) -> None:
    namespace = f"rb-dr-{uuid.uuid4().hex[:6]}"
    recovery_cleanup.append(namespace)
    since = datetime.now(UTC) - timedelta(seconds=2)
    run = asyncio.create_task(
        disaster_recovery(
            environment=TEST_ENVIRONMENT,
            recovery_environment=recovery_environment,
            backup_id=backup.backup_id,
            recovery_namespace=namespace,
            switch_traffic=True,
            return_state=True,
        )
    )
    run_id = await paused_run("disaster-recovery", "recovery_namespace", namespace, run)
    url, headers = platform_admin  # verified; now the platform breaks before the switch's smoke suite
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"service_down": True}).raise_for_status()
    await aresume_flow_run(run_id, run_input={"approve": True, "confirm_namespace": namespace, "reason": "test"})
    state = await asyncio.wait_for(run, timeout=180)

    assert state.is_failed() and "smoke suite failed through the switched Services" in (state.message or "")
    service = kjson(admin_kubeconfig, "get", "service", API, "-n", "production")
    assert service["spec"]["selector"] == {"app": API}
    assert "runbooks.io/dr-original-selector" not in (service["metadata"].get("annotations") or {})
    slices = kjson(
        admin_kubeconfig, "get", "endpointslices", "-n", "production", "-l", f"kubernetes.io/service-name={API}"
    )["items"]
    assert all(e["targetRef"]["namespace"] == "production" for s in slices for e in s.get("endpoints") or [])
    event = await dr_event("dr.failed", namespace, since)
    assert event.payload["switch_rolled_back"] is True and event.payload["rta_s"] > 0
    assert "PUT BACK" in await artifact(f"dr-{TEST_ENVIRONMENT}")


async def test_existing_objects_in_the_target_are_listed_and_left_alone(
    source: RunbookEnvironment,
    recovery_environment: str,
    backup: Manifest,
    admin_kubeconfig: Path,
    recovery_cleanup: list[str],
) -> None:
    namespace = f"rb-dr-{uuid.uuid4().hex[:6]}"
    recovery_cleanup.append(namespace)
    kubectl(admin_kubeconfig, "create", "namespace", namespace)
    kubectl(
        admin_kubeconfig,
        "-n",
        namespace,
        "create",
        "configmap",
        "ai-multimodel-config",
        "--from-literal=LOG_LEVEL=debug",
    )
    kubectl(
        admin_kubeconfig,
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "ai-multimodel-secrets",
        "--from-literal=ADMIN_TOKEN=mine",
    )
    before = {
        kind: kjson(admin_kubeconfig, "get", kind, name, "-n", namespace)
        for kind, name in (("configmap", "ai-multimodel-config"), ("secret", "ai-multimodel-secrets"))
    }
    report = await disaster_recovery(
        environment=TEST_ENVIRONMENT,
        recovery_environment=recovery_environment,
        backup_id=backup.backup_id,
        recovery_namespace=namespace,
    )
    assert report.status == "completed"
    assert set(report.existing_left) == {"ConfigMap/ai-multimodel-config", "Secret/ai-multimodel-secrets"}
    preflight = await artifact(f"dr-preflight-{TEST_ENVIRONMENT}")
    assert "| ConfigMap | ai-multimodel-config | skip |" in preflight
    assert "| Secret | ai-multimodel-secrets | skip |" in preflight
    for kind, name in (("configmap", "ai-multimodel-config"), ("secret", "ai-multimodel-secrets")):
        after = kjson(admin_kubeconfig, "get", kind, name, "-n", namespace)
        assert after["metadata"]["resourceVersion"] == before[kind]["metadata"]["resourceVersion"]
        assert after.get("data") == before[kind].get("data")
    # the rest of the backup was restored beside them
    assert (
        "Deployment/ai-multimodel-api" in report.created
        and "ConfigMap/deployment-alerts-20261101-120000" in report.created
    )


async def test_failing_drill_tears_everything_down_and_pages(
    source: RunbookEnvironment,
    recovery: RunbookEnvironment,
    recovery_environment: str,
    backup: Manifest,
    admin_kubeconfig: Path,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
) -> None:
    from tests.flows.conftest import received

    scratch_db = 7  # an index of the recovery redis-server, private to this run (its own port)
    namespace = f"dr-drill-{backup.backup_id.lower()}"
    server = recovery.redis.url.get_secret_value().rsplit("/", 1)[0]
    # an earlier drill of the same backup died before its teardown: its namespace (labelled), an older drill's
    # scratch database, keys in the scratch Redis database. They are removed first, not refused.
    kubectl(admin_kubeconfig, "create", "namespace", namespace)
    kubectl(admin_kubeconfig, "label", "namespace", namespace, "disaster-recovery=true")
    kubectl(admin_kubeconfig, "-n", namespace, "create", "configmap", "left-behind", "--from-literal=a=b")
    stale_db = f"{recovery.postgres.dbname}_drill_20260101t000000z"
    psql(admin_block(recovery.postgres).conninfo(), f"CREATE DATABASE {stale_db}")
    redis_cli(f"{server}/{scratch_db}", "SET", "left:behind", "1")

    url, headers = platform_admin  # the verification's smoke suite fails: the drill fails after restoring
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"service_down": True}).raise_for_status()
    since = datetime.now(UTC) - timedelta(seconds=2)
    state = await dr_drill(
        environment=TEST_ENVIRONMENT,
        recovery_environment=recovery_environment,
        backup_id=backup.backup_id,
        scratch_redis_db=scratch_db,
        return_state=True,
    )
    assert state.is_failed() and "smoke suite" in (state.message or "")
    report_md = await artifact(f"dr-drill-report-{TEST_ENVIRONMENT}")
    # the leftovers were removed, then it got as far as restoring, then left nothing behind
    assert f"database {stale_db}" in report_md and "left behind by an earlier drill" in report_md
    assert f"namespace {namespace}" in report_md and "Redis keys after the restore" in report_md
    assert kubectl(admin_kubeconfig, "get", "namespace", namespace, check=False).returncode != 0
    databases = psql(admin_block(recovery.postgres).conninfo(), "SELECT datname FROM pg_database")
    assert "_drill_" not in databases
    assert redis_cli(f"{server}/{scratch_db}", "DBSIZE").strip() == "0"
    event = await dr_event("dr.drill.failed", namespace, since)
    assert event.payload["rpo_s"] is not None and namespace in " ".join(event.payload["torn_down"])
    pages = received(receivers_url, "pagerduty")
    assert pages and "DR drill" in json.dumps(pages[-1])
    table = await artifact(f"dr-drill-{TEST_ENVIRONMENT}")
    assert backup.backup_id in table and "failed" in table
