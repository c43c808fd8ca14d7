"""What the triage scenarios share (tests/flows/test_triage.py, test_triage_ui.py): the node agent's behaviour, an
environment of kind production on the sandbox's services, a crash-looping release, and waiting for a paused run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.registry import save_environment
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tests.conftest import TEST_ENVIRONMENT, fresh_api_pods

API = "ai-multimodel-api"
PRODUCTION = f"{TEST_ENVIRONMENT}-production"
BROKEN = "ghcr.io/genspark/ai-multimodel-api:v9.9.9-broken"


async def set_node_behaviour(admin_kubeconfig: Path, rules: dict[str, Any]) -> None:
    """Test set-up with the admin credentials: steer the simulated node agent."""
    api_client = await k8s_config.new_client_from_config(config_file=str(admin_kubeconfig))
    async with api_client:
        core = k8s_client.CoreV1Api(api_client)
        body = {
            "metadata": {"name": "sandbox-node-behaviour", "namespace": "kube-system"},
            "data": {"rules.json": json.dumps(rules)},
        }
        try:
            await core.replace_namespaced_config_map("sandbox-node-behaviour", "kube-system", body)
        except k8s_client.ApiException as err:
            if err.status != 404:
                raise
            await core.create_namespaced_config_map("kube-system", body)


@pytest.fixture()
async def clean_node(admin_kubeconfig: Path) -> Any:
    await set_node_behaviour(admin_kubeconfig, {})
    yield
    await set_node_behaviour(admin_kubeconfig, {})


async def paused_triage(incident_id: str, run: asyncio.Task[Any], timeout_s: float = 120) -> Any:
    """The id of the triage run of ``incident_id`` once it is paused for approval (``run`` is its asyncio task)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.done():  # finished without pausing: show why
            raise AssertionError(f"the triage did not pause: {run.result()}")
        async with get_client() as client:
            paused = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["incident-triage"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for flow_run in paused:
            if flow_run.parameters.get("incident_id") == incident_id:
                return flow_run.id
        await asyncio.sleep(0.5)
    raise AssertionError(f"the triage never paused for approval within {timeout_s}s")


# ------------------------------------------------------------------- an environment of kind production, same services
@pytest.fixture(scope="session")
def production_environment(sandbox: Sandbox) -> str:
    """A second environment block of kind ``production`` on the sandbox's services: the policy asks for approval."""
    env = RunbookEnvironment.load(TEST_ENVIRONMENT)
    asyncio.run(save_environment(env.model_copy(update={"kind": "production"}), PRODUCTION))
    assert RunbookEnvironment.load(PRODUCTION).kind == "production"
    return PRODUCTION


def received(receivers_url: str, system: str) -> list[dict[str, Any]]:
    return [e for e in httpx.get(f"{receivers_url}/_received").json() if e["system"] == system]


def rollout_history(admin_kubeconfig: Path) -> list[int]:
    """The revisions ``kubectl rollout history`` lists (the user's own client, not ours)."""
    out = subprocess.run(
        [
            "kubectl",
            "--kubeconfig",
            str(admin_kubeconfig),
            "rollout",
            "history",
            f"deployment/{API}",
            "-n",
            "production",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return sorted(int(m.group(1)) for m in re.finditer(r"^(\d+)\s", out, re.MULTILINE))


@pytest.fixture()
async def broken_release(
    kubernetes_cluster: KubernetesCluster, admin_kubeconfig: Path, clean_node: None
) -> AsyncIterator[k8s.DeploymentInfo]:
    """A fresh release whose pods crash-loop (P1). Yields the Deployment as it was before; afterwards the good
    release is back (rolled back here when the test did not)."""
    before = await k8s.get_deployment.fn(kubernetes_cluster, API)
    await set_node_behaviour(admin_kubeconfig, {"failing_images": ["*:v9.9.9-broken"]})
    await k8s.set_image.fn(kubernetes_cluster, API, BROKEN, change_cause="deploy v9.9.9-broken")
    deadline = time.monotonic() + 90
    while not any(
        p.reason == "CrashLoopBackOff" for p in await k8s.list_pods.fn(kubernetes_cluster, label_selector=f"app={API}")
    ):
        assert time.monotonic() < deadline, "the broken release never crash-looped"
        await asyncio.sleep(1)
    try:
        yield before
    finally:
        if (await k8s.get_deployment.fn(kubernetes_cluster, API)).images != before.images:
            await k8s.rollout_undo.fn(kubernetes_cluster, API)
        await set_node_behaviour(admin_kubeconfig, {})
        await k8s.rollout_status.fn(kubernetes_cluster, API, timeout_s=180)
        await fresh_api_pods(kubernetes_cluster)


def production_kubectl(kubeconfig: Path, *args: str) -> str:
    """The real ``kubectl`` in the production namespace."""
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", "production", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


@contextlib.contextmanager
def history_as_found(admin_kubeconfig: Path, names: Sequence[str]) -> Iterator[None]:
    """The Deployments' rollout history and *last known good* annotation as the block found them.

    The sandbox's Kubernetes (1.20) prunes a Deployment's old ReplicaSets beyond ``revisionHistoryLimit`` by creation
    time, oldest first (later releases sort them by revision), so once a module's releases fill the history, the
    seeded release's ReplicaSet (the oldest, even when a rollback reused it) is the next to go.
    A later ``rollout undo`` then lands on another test's release: seen in CI, where incident-triage's rollback
    of a fresh bad release went to ``v9.9.9-broken``. So the idle ReplicaSets made inside the block are deleted at
    its end, and the *last known good* recorded inside it is taken off again."""

    def replicasets(name: str) -> list[dict[str, Any]]:
        out = production_kubectl(admin_kubeconfig, "get", "rs", "-l", f"app={name}", "-o", "json")
        items = json.loads(out)["items"]
        return [rs for rs in items if any(o["name"] == name for o in rs["metadata"].get("ownerReferences", []))]

    found = {name: {rs["metadata"]["name"] for rs in replicasets(name)} for name in names}
    try:
        yield
    finally:
        for name, kept in found.items():
            made = [rs for rs in replicasets(name) if rs["metadata"]["name"] not in kept]
            idle = [rs["metadata"]["name"] for rs in made if not rs["spec"].get("replicas")]
            if idle:
                production_kubectl(admin_kubeconfig, "delete", "rs", *idle, "--wait=false")
            production_kubectl(admin_kubeconfig, "annotate", f"deployment/{name}", "runbooks.io/last-known-good-")
