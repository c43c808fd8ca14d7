"""high-memory on the session's sandbox: ``runbooks sandbox fault memory-growth`` (at a test-scale rate) grows the
API pods' memory on the simulated node, the sandbox's Prometheus scraping the kubelet fires HighMemoryUsage (the
product's rule at a test-scale ``for:``), and the run for the alert's pod describes first (observe changes nothing),
then two alerts' runs at once delete their pods in the sandbox's auto mode one after the other (kubectl sees them
replaced), once per incident. A raise stops at the policy's cap; past it, it asks even in auto mode, and unanswered
it changes nothing (kubectl sees the limit)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from blocks.kubernetes import KubernetesCluster
from flows.high_memory import high_memory
from sandbox import faults
from sandbox.components import PrometheusComponent
from sandbox.config import SandboxState
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tasks.memory import policy as memory_policy
from tests.conftest import TEST_ENVIRONMENT, free_port
from tests.flows.conftest import API, history_as_found, production_kubectl, set_node_behaviour

ROOT = Path(__file__).resolve().parents[2]
#: MiB a minute: from the API pods' ~0.6 GiB to 90% of their 4 GiB limit in about 8 s (the fault's 50 MiB/min would
#: take an hour)
TEST_GROWTH = 24_000.0


def api_pods(kubeconfig: Path) -> dict[str, dict[str, Any]]:
    """The API's pods as ``kubectl get pods -o json`` shows them, by name (terminating ones left out)."""
    items = json.loads(production_kubectl(kubeconfig, "get", "pods", "-l", f"app={API}", "-o", "json"))["items"]
    return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}


def memory_limit(kubeconfig: Path) -> str:
    path = "{.spec.template.spec.containers[0].resources.limits.memory}"
    return production_kubectl(kubeconfig, "get", f"deployment/{API}", "-o", f"jsonpath={path}").strip()


def revision(kubeconfig: Path) -> str:
    path = "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
    return production_kubectl(kubeconfig, "get", f"deployment/{API}", "-o", f"jsonpath={path}").strip()


async def poll(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        await asyncio.sleep(0.5)


@pytest.fixture()
def prometheus(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The sandbox's Prometheus (its kubelet and cAdvisor jobs) with the product's memory rule at ``for: 5s``."""
    rules = tmp_path / "rules"
    rules.mkdir()
    text = (ROOT / "alerting" / "rules" / "memory.yml").read_text()
    assert "for: 1m" in text
    (rules / "memory.yml").write_text(text.replace("for: 1m", "for: 5s"))
    monkeypatch.setattr("sandbox.components.RULES_DIR", rules)
    settings = sandbox.settings.model_copy(update={"prometheus_port": free_port(), "alertmanager_port": free_port()})
    component = PrometheusComponent(settings, SandboxState(settings.home))
    assert {"kubelet", "kubelet-cadvisor"} <= {j["job_name"] for j in component.config()["scrape_configs"]}
    component.up()
    try:
        yield component.address
    finally:
        component.down()


@pytest.fixture()
async def fresh_api_afterwards(
    kubernetes_cluster: KubernetesCluster, admin_kubeconfig: Path
) -> AsyncIterator[list[str]]:
    """Yields the incident ids the test uses; afterwards the node's rules are cleared, the claims taken off the
    Deployment, and every API pod that grew is replaced by a fresh one (a leak keeps what it took until then)."""
    incidents: list[str] = []
    before = set(api_pods(admin_kubeconfig))
    try:
        yield incidents
    finally:
        await set_node_behaviour(admin_kubeconfig, {})
        for incident in incidents:
            for action in ("delete-pod", "raise-limit"):
                name = k8s.claim_annotation(f"{incident}.{action}")
                production_kubectl(admin_kubeconfig, "annotate", f"deployment/{API}", f"{name}-")
        grown = sorted(before & set(api_pods(admin_kubeconfig)))
        if grown:
            production_kubectl(admin_kubeconfig, "delete", "pod", *grown, "--wait=false")

        async def fresh() -> bool:
            pods = api_pods(admin_kubeconfig)
            ready = [
                n
                for n, p in pods.items()
                if n not in before
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            ]
            return len(ready) == 3 and len(pods) == 3

        await poll(fresh, 120, "three fresh API pods")


async def test_memory_growth_fires_high_memory_usage_and_the_pod_is_replaced(
    sandbox: Sandbox,
    prometheus: str,
    admin_kubeconfig: Path,
    fresh_api_afterwards: list[str],
    platform_admin: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faults, "POD_MEMORY_GROWTH_MIB_PER_MIN", TEST_GROWTH)
    assert "HighMemoryUsage" in faults.inject("memory-growth", sandbox.settings, sandbox.state)

    async def firing() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "HighMemoryUsage"
            and a["state"] == "firing"
            and a["labels"].get("namespace") == "production"
            and a["labels"].get("container") == API
        ]

    async def two_firing() -> list[dict[str, Any]]:
        alerts = await firing()
        return alerts if len({a["labels"]["pod"] for a in alerts}) >= 2 else []

    alert, other = (await poll(two_firing, 90, "HighMemoryUsage firing for two API pods"))[:2]
    faults.inject("clear", sandbox.settings, sandbox.state)  # the leak stops; what it took stays until a restart
    labels = alert["labels"]
    incident, other_incident = (f"test-mem-{uuid.uuid4().hex[:8]}" for _ in range(2))
    fresh_api_afterwards.extend([incident, other_incident])
    alert_run = {
        "environment": TEST_ENVIRONMENT,
        "alert_name": "HighMemoryUsage",
        "incident_id": incident,
        "namespace": labels["namespace"],
        "pod": labels["pod"],
        "container": labels["container"],
    }
    before = api_pods(admin_kubeconfig)
    assert labels["pod"] in before

    # observe (a dry run): described and planned, nothing changed
    state = await high_memory(**alert_run, dry_run=True, return_state=True)  # type: ignore[call-overload]
    assert state.is_completed(), state.message
    observed = await state.result()
    [record] = observed["actions"]
    assert (record.action, record.decision, record.outcome) == ("delete-pod", "observed", "not-done")
    assert observed["target"].ratio > 0.9 and observed["heap"].heap_used_bytes > 0
    assert set(api_pods(admin_kubeconfig)) == set(before)  # kubectl: the same pods
    assert memory_limit(admin_kubeconfig) == "4Gi"

    # the two alerts' runs at once, in the sandbox's mode (auto): each pod deleted and replaced, one after the
    # other (the Deployment's turn), so never two of the API's three replicas down together
    other_run = {**alert_run, "incident_id": other_incident, "pod": other["labels"]["pod"]}
    states = await asyncio.gather(
        high_memory(**alert_run, return_state=True),  # type: ignore[call-overload]
        high_memory(**other_run, return_state=True),  # type: ignore[call-overload]
    )
    records = []
    for state in states:
        assert state.is_completed(), state.message
        [record] = (await state.result())["actions"]
        assert (record.action, record.decision, record.outcome) == ("delete-pod", "auto", "done"), record.detail
        assert record.data["replaced"] is True
        records.append(record)
    first, second = sorted(records, key=lambda r: r.data["deleted_at"])
    assert second.data["deleted_at"] >= first.data["replaced_at"], (first.detail, second.detail)
    after = api_pods(admin_kubeconfig)
    gone = {labels["pod"], other["labels"]["pod"]}
    assert not gone & set(after) and len(after) == 3  # kubectl: both gone, the ReplicaSet made two more
    assert set(after) - set(before) == {n for r in records for n in r.data["replacements"]}

    # the same incident again (a re-run, another worker): nothing more is deleted
    state = await high_memory(**{**alert_run, "pod": None}, return_state=True)  # type: ignore[call-overload]
    assert state.is_completed(), state.message
    again = (await state.result())["actions"]
    assert all(r.outcome != "done" for r in again), [r.detail for r in again]
    assert set(api_pods(admin_kubeconfig)) == set(after)


async def test_a_raise_stops_at_the_cap_and_past_it_asks_even_in_auto_mode(
    admin_kubeconfig: Path,
    kubernetes_cluster: KubernetesCluster,
    fresh_api_afterwards: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API's limit 4Gi, the step 1Gi, the policy's cap 4608Mi: in the sandbox's auto mode the raise stops at the
    cap (kubectl sees 4608Mi rolled out, not 5Gi); a second incident finds the container at the cap, so the step
    past it asks even in auto mode, and no answer within the timeout is a denial: kubectl sees the limit and the
    revision as they were."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(memory_policy.POLICY_PATH.read_text().replace("cap: 6Gi", "cap: 4608Mi"))
    monkeypatch.setattr(memory_policy, "POLICY_PATH", policy)
    first, second = (f"test-cap-{uuid.uuid4().hex[:8]}" for _ in range(2))
    fresh_api_afterwards.extend([first, second])

    async def run(incident: str, pod: str) -> Any:
        state = await high_memory(  # type: ignore[call-overload]
            environment=TEST_ENVIRONMENT,
            incident_id=incident,
            pod=pod,
            raise_limit=True,
            approval_timeout_s=10,
            return_state=True,
        )
        assert state.is_completed(), state.message
        [record] = (await state.result())["actions"]  # the pods use ~15% of their limit: nothing to delete
        return record

    with history_as_found(admin_kubeconfig, [API]):
        try:
            raised = await run(first, sorted(api_pods(admin_kubeconfig))[0])
            assert raised.action == "raise-limit" and raised.data["to"] == "4608Mi"
            assert (raised.decision, raised.outcome) == ("auto", "done"), raised.detail
            assert "successfully rolled out" in raised.detail
            assert memory_limit(admin_kubeconfig) == "4608Mi"  # the cap, not 5Gi
            rolled = revision(admin_kubeconfig)

            asked = await run(second, sorted(api_pods(admin_kubeconfig))[0])
            assert asked.data == {"from": "4608Mi", "to": "5632Mi", "cap": "4608Mi"}
            assert (asked.decision, asked.outcome) == ("denied", "not-done")
            assert memory_limit(admin_kubeconfig) == "4608Mi" and revision(admin_kubeconfig) == rolled
        finally:
            await k8s.set_resources.fn(kubernetes_cluster, API, limits={"memory": "4Gi"})
            await k8s.rollout_status.fn(kubernetes_cluster, API, timeout_s=120)


async def test_outside_the_sandbox_a_manual_run_only_describes(
    admin_kubeconfig: Path, production_environment: str
) -> None:
    """An environment of kind production: a manual run (no dry_run given) is a dry run, whatever it asks for."""
    before = revision(admin_kubeconfig)
    pod = sorted(api_pods(admin_kubeconfig))[0]
    state = await high_memory(  # type: ignore[call-overload]
        environment=production_environment, pod=pod, raise_limit=True, return_state=True
    )
    assert state.is_completed(), state.message
    result = await state.result()
    [record] = result["actions"]
    assert result["mode"] == "observe" and (record.action, record.decision) == ("raise-limit", "observed")
    assert memory_limit(admin_kubeconfig) == "4Gi" and revision(admin_kubeconfig) == before
