"""Incident triage scenarios on the real sandbox: inject a fault, send the alert, check severity, findings,
notifications and the mitigation actually applied."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from blocks.kubernetes import KubernetesCluster
from flows.triage import incident_triage
from flows.triage_policy import load_policy
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tests.conftest import TEST_ENVIRONMENT

API = "ai-multimodel-api"


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


async def test_model_down_opens_its_circuit_breaker(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, clean_node: None
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["gemini-pro"]}).raise_for_status()
    report = await incident_triage(
        alert_name="ModelDown",
        incident_id=f"inc-{uuid.uuid4().hex[:8]}",
        alert_severity="warning",
        environment=TEST_ENVIRONMENT,
        dry_run=False,
        auto_approve=True,
    )
    # a model down is P2, unless the platform's error rate or latency already crossed P1's thresholds
    p1 = report.facts["error_rate"] > 0.10 or report.facts["response_time_p95_s"] > 3
    assert report.severity == ("P1" if p1 else "P2")
    escalation = load_policy().escalation[report.severity]
    models = next(f for f in report.findings if f.enricher == "models")
    assert not models.ok and "gemini-pro" in models.title
    assert [(m.action, m.target, m.outcome) for m in report.mitigations] == [
        ("open_circuit_breaker", "gemini-pro", "applied")
    ]
    config = httpx.get(f"{url}/admin/models/gemini-pro/config", headers=headers).json()
    assert config["fallback_model"] == "claude-3-5-sonnet"
    breakers = httpx.get(f"{url}/api/v1/load-balancer/circuit-breakers").json()
    assert next(b for b in breakers if b["model"] == "gemini-pro")["state"] == "OPEN"
    received = httpx.get(f"{receivers_url}/_received").json()
    slack = [e for e in received if e["system"] == "slack"]
    assert slack[0]["body"]["channel"] == f"#ai-multimodel-{escalation.slack}"  # the escalation matrix's channel
    assert "gemini-pro" in json.dumps(slack[0]["body"]["blocks"])
    assert all(e["body"].get("thread_ts") == slack[0]["ts"] for e in slack[1:])
    paged = [e["system"] for e in received if e["system"] == "pagerduty"]
    assert bool(paged) == bool(escalation.pagerduty)  # P2 pages nobody, P1 pages the on-call
    assert [e["body"]["priority"] for e in received if e["system"] == "opsgenie"] == [escalation.opsgenie]


async def test_crashlooping_release_is_rolled_back(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    clean_node: None,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
) -> None:
    before = await k8s.get_deployment.fn(kubernetes_cluster, API)
    await set_node_behaviour(admin_kubeconfig, {"failing_images": ["*:v9.9.9-broken"]})
    await k8s.set_image.fn(
        kubernetes_cluster, API, "ghcr.io/genspark/ai-multimodel-api:v9.9.9-broken", change_cause="deploy v9.9.9-broken"
    )
    pods_crashing = False
    for _ in range(60):  # until the new ReplicaSet's pods crash-loop
        pods = await k8s.list_pods.fn(kubernetes_cluster, label_selector=f"app={API}")
        if any(p.reason == "CrashLoopBackOff" for p in pods):
            pods_crashing = True
            break
        await asyncio.sleep(1)
    assert pods_crashing
    report = await incident_triage(
        alert_name="HighErrorRate",
        incident_id=f"inc-{uuid.uuid4().hex[:8]}",
        alert_severity="critical",
        environment=TEST_ENVIRONMENT,
        dry_run=False,
    )
    assert report.severity == "P1"
    assert report.facts["crashlooping_pods"] > 0 and report.facts["recent_rollout"] is True
    assert [(m.action, m.outcome) for m in report.mitigations] == [("rollback", "applied")]
    after = await k8s.get_deployment.fn(kubernetes_cluster, API)
    assert after.images == before.images and after.ready == after.replicas
    assert report.resolved
    received = httpx.get(f"{receivers_url}/_received").json()
    pagerduty = [e["kind"] for e in received if e["system"] == "pagerduty"]
    assert pagerduty == ["trigger", "resolve"]
    slack = [e for e in received if e["system"] == "slack"]
    assert slack[0]["body"]["channel"] == "#ai-multimodel-incidents"
    assert any("RESOLVED" in e["body"]["text"] for e in slack[1:])


async def test_dry_run_changes_nothing(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, clean_node: None
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["qwen"]}).raise_for_status()
    report = await incident_triage(
        alert_name="ModelDown", incident_id=f"inc-{uuid.uuid4().hex[:8]}", environment=TEST_ENVIRONMENT, dry_run=True
    )
    assert [(m.action, m.target, m.outcome) for m in report.mitigations] == [
        ("open_circuit_breaker", "qwen", "dry-run")
    ]
    config = httpx.get(f"{url}/admin/models/qwen/config", headers=headers).json()
    assert config["fallback_model"] is None  # the mitigation was only described, not applied
