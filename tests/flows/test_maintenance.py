"""weekly-maintenance against the sandbox's real services: a crash-looping pod turns health to fail and is named;
a missing verification turns backups to warn and runs the verification; no trivy skips the scan (never a pass)
and a trivy that answers (a fake printing trivy's JSON) gives counts and the change from last week; the 168 h log
archive is in S3 with the SHA-256 its manifest says; a dry run deletes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.registry import save_environment
from flows.backup import daily_backup
from flows.maintenance import STEP_NAMES, weekly_maintenance
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tasks.backup.manifest import VERIFIED_NAME, Manifest
from tasks.backup.retention import list_backups
from tasks.maintenance.report import EVENT, MaintenanceReport
from tasks.storage import delete_stored, get_bytes, object_key, put_bytes, s3_client
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.conftest import received
from tests.flows.test_backup import NO_RETENTION, events

TRIVY_DOC = {
    "SchemaVersion": 2,
    "ArtifactName": "placeholder",
    "ArtifactType": "container_image",
    "Results": [
        {
            "Target": "placeholder (debian 12.5)",
            "Class": "os-pkgs",
            "Type": "debian",
            "Vulnerabilities": [
                {
                    "VulnerabilityID": "CVE-2024-0001",
                    "PkgName": "openssl",
                    "InstalledVersion": "3.0.11-1~deb12u2",
                    "FixedVersion": "3.0.13-1~deb12u1",
                    "Severity": "CRITICAL",
                },
                {
                    "VulnerabilityID": "CVE-2024-0002",
                    "PkgName": "zlib1g",
                    "InstalledVersion": "1:1.2.13.dfsg-1",
                    "FixedVersion": "",
                    "Severity": "HIGH",
                },
                {
                    "VulnerabilityID": "CVE-2024-0003",
                    "PkgName": "libc6",
                    "InstalledVersion": "2.36-9+deb12u4",
                    "Severity": "MEDIUM",
                },
            ],
        },
        {"Target": "app/requirements.txt", "Class": "lang-pkgs", "Type": "pip", "Vulnerabilities": None},
    ],
}


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


def kubectl(admin_kubeconfig: Path, *args: str) -> str:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(admin_kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


@pytest.fixture()
async def crashing_pod(kubernetes_cluster: KubernetesCluster, admin_kubeconfig: Path) -> AsyncIterator[str]:
    """A bare pod in the flows' namespace whose container crash-loops (the node agent's ``crashloop`` behaviour);
    deleted afterwards."""
    name = f"rb-maint-crash-{uuid.uuid4().hex[:6]}"
    api = await k8s_config.new_client_from_config(config_file=str(admin_kubeconfig))
    async with api:
        core = k8s_client.CoreV1Api(api)
        await core.create_namespaced_pod(
            kubernetes_cluster.namespace,
            {
                "metadata": {
                    "name": name,
                    "labels": {"app": "rb-maint-crash"},
                    "annotations": {"sandbox.runbooks.io/behaviour": "crashloop"},
                },
                "spec": {"containers": [{"name": "crash", "image": "ghcr.io/genspark/crash:v1"}]},
            },
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                pods = await k8s.list_pods.fn(kubernetes_cluster, label_selector="app=rb-maint-crash")
                if pods and pods[0].status == "CrashLoopBackOff":
                    break
                assert time.monotonic() < deadline, f"the pod never crash-looped: {pods}"
                await asyncio.sleep(0.5)
            yield name
        finally:
            await core.delete_namespaced_pod(name, kubernetes_cluster.namespace, grace_period_seconds=0)


@pytest.fixture()
async def no_verification(env: RunbookEnvironment) -> AsyncIterator[None]:
    """Every ``verified.json`` of the environment's daily backups set aside (so no backup counts as verified), and
    put back afterwards; those this test's run writes are removed."""
    backups = await list_backups.fn(env.backups, TEST_ENVIRONMENT)
    saved = {}
    for b in backups:
        key = f"{b.prefix}{VERIFIED_NAME}"
        data = get_bytes(env.backups, key) if b.verified else None
        if data is not None:
            saved[key] = data
    delete_stored(env.backups, list(saved))
    yield
    after = await list_backups.fn(env.backups, TEST_ENVIRONMENT)
    delete_stored(env.backups, [f"{b.prefix}{VERIFIED_NAME}" for b in after if b.verified])
    for key, data in saved.items():
        put_bytes(env.backups, key, data)


@pytest.fixture()
def without_trivy(monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without any trivy on it (the machine may have one)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "trivy").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(dirs))


@pytest.fixture()
def fake_trivy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``trivy`` on PATH that checks its arguments, records each image it scans and prints ``report.json``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "report.json").write_text(json.dumps(TRIVY_DOC))
    script = bin_dir / "trivy"
    script.write_text(
        f"""#!{sys.executable}
import pathlib, sys
args = sys.argv[1:]
if args[:4] != ["image", "--format", "json", "--quiet"] or len(args) != 5:
    print("usage: trivy image --format json IMAGE", file=sys.stderr)
    sys.exit(2)
home = pathlib.Path({str(tmp_path)!r})
with open(home / "scanned.txt", "a") as out:
    out.write(args[4] + "\\n")
print((home / "report.json").read_text())
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path


async def latest_artifact(key: str) -> Any:
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    found = [a for a in artifacts if a.key == key]
    assert found, f"no artifact {key}"
    return found[0]


async def run(**parameters: Any) -> tuple[Any, MaintenanceReport]:
    state = await weekly_maintenance(environment=TEST_ENVIRONMENT, return_state=True, **parameters)
    report = state.data if isinstance(state.data, MaintenanceReport) else await state.aresult(raise_on_failure=False)
    assert isinstance(report, MaintenanceReport), state
    return state, report


def only(*steps: str) -> list[str]:
    return [s for s in STEP_NAMES if s not in steps]


async def test_report_names_the_failed_pod_runs_the_stale_verification_and_skips_the_missing_scanner(
    env: RunbookEnvironment,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
    crashing_pod: str,
    no_verification: None,
    without_trivy: None,
    receivers_url: str,
) -> None:
    backup = await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres", "redis"], retention=NO_RETENTION)
    configmaps_before = kubectl(admin_kubeconfig, "get", "configmaps", "-n", kubernetes_cluster.namespace, "-o", "name")
    rs_before = kubectl(admin_kubeconfig, "get", "rs", "-n", kubernetes_cluster.namespace, "-o", "name")
    since = datetime.now(UTC) - timedelta(seconds=2)

    state, report = await run(dry_run=True, skip=["resources", "database", "performance"])

    assert state.is_failed()  # health failed; every other step still ran and has its own verdict
    steps = {s.name: s for s in report.steps}
    assert [s.number for s in report.steps] == list(range(1, 11))
    health = steps["health"]
    assert health.status == "fail" and crashing_pod in health.summary and "CrashLoopBackOff" in health.summary
    assert steps["security"].status == "skipped" and steps["security"].summary == "skipped: trivy not installed"
    # certificate-check's readings (tests/flows/test_certificates.py): the sandbox's certificate is far from expiry
    certificates = steps["certificates"]
    assert certificates.status == "pass" and certificates.summary.startswith("ok: "), certificates.summary
    assert {steps[s].status for s in ("resources", "database", "performance")} == {"skipped"}

    # backups: never verified → warn, and the verification ran on the newest backup (this one), which is now marked
    backups = steps["backups"]
    assert backups.status == "warn" and "never verified" in backups.summary, backups.summary
    assert f"verified now: {backup.backup_id}" in backups.summary
    assert get_bytes(env.backups, f"{backup.prefix}{VERIFIED_NAME}") is not None
    assert backups.figures["missing_objects"] == 0 and backups.figures["objects"] == len(backup.parts)
    # which server the verification restored on, in the details; the application's own one is in the summary too
    [restored] = [d for d in backups.details if "PostgreSQL restored on" in d or "RESTORED ON THE APPLICATION" in d]
    assert ("RESTORED ON THE APPLICATION" in restored) == ("application's own server" in backups.summary), restored

    # logs: the 168 h archive of the API's logs, in S3 with the SHA-256 and size its manifest lists
    logs = steps["logs"]
    assert logs.status == "pass", logs.summary
    [manifest_key] = [a.split("`")[1] for a in logs.actions]
    manifest = Manifest.model_validate_json(get_bytes(env.backups, manifest_key) or b"")
    assert manifest.kind == "weekly-logs" and manifest.parts["logs"]["since_seconds"] == 168 * 3600
    assert {s["deployment"] for s in manifest.parts["logs"]["streams"]} == {env.api_deployment}
    [obj] = manifest.objects
    s3 = s3_client(env.backups)
    body = s3.get_object(Bucket=env.backups.bucket_name, Key=object_key(env.backups, obj.key))["Body"].read()
    assert len(body) == obj.size and hashlib.sha256(body).hexdigest() == obj.sha256
    assert manifest.parts["logs"]["lines"] > 0

    # cleanup: a dry run lists and deletes nothing (checked with kubectl)
    cleanup = steps["cleanup"]
    assert cleanup.status == "warn" and cleanup.summary.startswith("dry run: would delete"), cleanup.summary
    assert kubectl(admin_kubeconfig, "get", "configmaps", "-n", kubernetes_cluster.namespace, "-o", "name") == (
        configmaps_before
    )
    assert kubectl(admin_kubeconfig, "get", "rs", "-n", kubernetes_cluster.namespace, "-o", "name") == rs_before

    # the report: the seed's sections, filled from the steps' own results
    artifact = await latest_artifact(f"weekly-maintenance-{TEST_ENVIRONMENT}")
    markdown = str(artifact.data)
    for section in ("## System Status", "## Resource Usage", "## Actions Taken", "## Next Week Priorities"):
        assert section in markdown
    assert "❌ **System health** — fail: " in markdown and crashing_pod in markdown
    assert "⏭️ **Security scan** — skipped: trivy not installed" in markdown
    assert "⚠️ **Backups** — warn" in markdown
    assert "Security scans passed" not in markdown and "All services running healthy" not in markdown
    figures = await latest_artifact(f"weekly-maintenance-figures-{TEST_ENVIRONMENT}")
    assert figures.type == "table"
    assert steps["report"].status == "pass" and report.figures_key

    slack = [m for m in received(receivers_url, "slack") if "Weekly maintenance" in json.dumps(m)]
    assert slack and "/runs/flow-run/" in json.dumps(slack[-1])
    [event] = await events([EVENT], f"runbooks.environment.{TEST_ENVIRONMENT}", since)
    assert event.payload["steps"]["health"] == "fail" and event.payload["steps"]["security"] == "skipped"


async def test_trivy_counts_by_severity_and_the_change_from_last_week(
    kubernetes_cluster: KubernetesCluster, fake_trivy: Path
) -> None:
    images = {i for found in (await k8s.list_deployment_images.fn(kubernetes_cluster)).values() for i in found}

    _, first = await run(skip=only("security"))

    security = {s.name: s for s in first.steps}["security"]
    scanned = (fake_trivy / "scanned.txt").read_text().split()
    assert sorted(scanned) == sorted(images)  # every image the Deployments run, once each
    assert security.status == "fail"  # a CRITICAL one: the policy fails on CRITICAL
    n = len(images)
    assert security.figures["critical"] == n and security.figures["high"] == n and security.figures["medium"] == n
    assert security.figures["low"] == 0 and security.figures["fixable"] == n and security.figures["images"] == n

    # next week, the CRITICAL one is fixed: the change is measured against the stored figures
    doc = json.loads((fake_trivy / "report.json").read_text())
    doc["Results"][0]["Vulnerabilities"] = doc["Results"][0]["Vulnerabilities"][1:]
    (fake_trivy / "report.json").write_text(json.dumps(doc))
    await asyncio.sleep(1.1)  # the figures are stored per second
    _, second = await run(skip=only("security"))

    security = {s.name: s for s in second.steps}["security"]
    assert security.status == "warn" and security.figures["critical"] == 0  # HIGH left: a warning
    assert "0 CRITICAL (-100% on last week)" in security.summary
    rows = {r["figure"]: r for r in second.figure_rows()}
    assert rows["security.critical"]["last week"] == n and rows["security.critical"]["change"] == -n


async def test_resources_database_and_performance_are_measured(kubernetes_cluster: KubernetesCluster) -> None:
    _, report = await run(skip=only("resources", "database", "performance"))

    steps = {s.name: s for s in report.steps}
    resources = steps["resources"]
    assert resources.status in ("pass", "warn") and resources.figures["nodes"] == len(
        await k8s.top_nodes.fn(kubernetes_cluster)
    )
    kinds = {r["kind"] for r in resources.rows}
    assert kinds == {"node", "pod by cpu", "pod by memory"}
    table = await latest_artifact(f"weekly-maintenance-resources-{TEST_ENVIRONMENT}")
    assert table.type == "table"

    database = steps["database"]
    assert database.status in ("pass", "warn"), database.summary
    assert isinstance(database.figures["size_mib"], float) and database.figures["size_mib"] > 0
    assert isinstance(database.figures["xid_age_percent"], float)
    assert database.actions and database.actions[0].startswith("ANALYZE of ")
    assert any(line.startswith("- pg_stats ") for line in database.details)  # the seed's query, answered

    performance = steps["performance"]
    assert performance.status in ("pass", "warn"), performance.summary
    assert isinstance(performance.figures["requests"], int) and performance.figures["requests"] > 0
    assert "requests" in performance.summary and "p95" in performance.summary


@pytest.fixture()
async def production_like(admin_kubeconfig: Path, kubernetes_cluster: KubernetesCluster) -> AsyncIterator[str]:
    """An environment of kind ``production`` (a dry run by default: the cleanup asks) whose Kubernetes namespace is
    a scratch one holding five ``deployment-alerts-*`` ConfigMaps; the namespace is deleted afterwards."""
    namespace = f"rb-maint-approve-{uuid.uuid4().hex[:5]}"
    name = f"{TEST_ENVIRONMENT}-maint-{uuid.uuid4().hex[:5]}"
    env = await RunbookEnvironment.aload(TEST_ENVIRONMENT)
    cluster = kubernetes_cluster.model_copy(update={"namespace": namespace})
    await save_environment(env.model_copy(update={"kind": "production", "kubernetes": cluster}), name)
    api = await k8s_config.new_client_from_config(config_file=str(admin_kubeconfig))
    async with api:
        core = k8s_client.CoreV1Api(api)
        await core.create_namespace({"metadata": {"name": namespace, "labels": {"runbooks-test": "true"}}})
        try:
            for day in range(1, 6):
                body = {"metadata": {"name": f"deployment-alerts-2026110{day}-120000"}, "data": {"k": "v"}}
                await core.create_namespaced_config_map(namespace, body)
            yield name
        finally:
            await core.delete_namespace(namespace)


async def paused_maintenance(environment: str, run: asyncio.Task[Any], timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.done():
            raise AssertionError(f"the maintenance did not pause: {run.result()}")
        async with get_client() as client:
            paused = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["weekly-maintenance"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for flow_run in paused:
            if flow_run.parameters.get("environment") == environment:
                return flow_run.id
        await asyncio.sleep(0.5)
    raise AssertionError(f"the maintenance never paused for approval within {timeout_s}s")


@pytest.mark.parametrize("answer", ["approve", "no answer"])
async def test_cleanup_outside_the_sandbox_deletes_only_once_approved(
    production_like: str, admin_kubeconfig: Path, answer: str
) -> None:
    env = await RunbookEnvironment.aload(production_like)
    assert env.kubernetes is not None and env.dry_run_by_default
    namespace = env.kubernetes.namespace
    run = asyncio.create_task(
        weekly_maintenance(environment=production_like, skip=only("cleanup"), approval_timeout_s=10, return_state=True)
    )
    run_id = await paused_maintenance(production_like, run)
    if answer == "approve":
        await aresume_flow_run(run_id, run_input={"approve": True, "approver": "alice", "note": "old alerts"})
    state = await asyncio.wait_for(run, timeout=120)
    report = state.data if isinstance(state.data, MaintenanceReport) else await state.aresult(raise_on_failure=False)
    cleanup = {s.name: s for s in report.steps}["cleanup"]
    left = kubectl(admin_kubeconfig, "get", "configmaps", "-n", namespace, "-o", "name").split()
    alerts = sorted(n.removeprefix("configmap/") for n in left if "deployment-alerts-" in n)
    if answer == "approve":
        assert cleanup.status == "pass" and "approved by alice" in cleanup.summary, cleanup.summary
        assert alerts == [f"deployment-alerts-2026110{day}-120000" for day in (3, 4, 5)]
    else:
        assert cleanup.status == "warn" and cleanup.summary.startswith("not approved: would delete"), cleanup.summary
        assert len(alerts) == 5  # default deny: nothing deleted
