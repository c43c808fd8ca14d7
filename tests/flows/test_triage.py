"""Incident triage scenarios on the real sandbox: inject a fault, send the alert, check severity, findings,
notifications and the mitigation actually applied."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from prefect import flow
from prefect.flow_runs import aresume_flow_run

from blocks.environment import load_environment
from blocks.kubernetes import KubernetesCluster
from flows.triage import incident_resolved, incident_triage
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tasks.platform import fetch_metrics
from tasks.triage import mitigations
from tasks.triage.mitigations import MitigationRecord, PlannedAction
from tasks.triage.policy import load_policy
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.conftest import (
    API,
    BROKEN,
    history_as_found,
    paused_triage,
    production_kubectl,
    received,
    rollout_history,
    set_node_behaviour,
)


async def test_model_down_is_told_and_left_to_model_unavailable(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, clean_node: None
) -> None:
    """ModelDown: the triage diagnoses and tells (Slack, PagerDuty, Opsgenie by the escalation matrix) and acts on
    nothing: model-unavailable, which the alert starts too (prefect.yaml), reconnects the model or falls back."""
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
    assert report.mitigations == []
    config = httpx.get(f"{url}/admin/models/gemini-pro/config", headers=headers).json()
    assert config["fallback_model"] is None  # no fallback of the triage's: model-unavailable's is the one
    audit = httpx.post(f"{url}/admin/audit/search", headers=headers, json={"hours": 1}).json()["events"]
    assert not [e for e in audit if e["target"] == "gemini-pro"]  # nothing done to the model
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


async def test_two_bad_releases_roll_back_to_the_last_known_good(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    clean_node: None,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
) -> None:
    """Two bad releases in a row: "the previous revision" is the first bad one, so the rollback goes to the release
    deploy-and-validate recorded as last known good (checked with the real kubectl)."""
    with history_as_found(admin_kubeconfig, [API]):
        good = await k8s.get_deployment.fn(kubernetes_cluster, API)
        assert good.revision is not None
        record = k8s.LastKnownGood(revision=good.revision, images=good.images, time=datetime.now(UTC), run="test")
        await k8s.record_last_known_good.fn(kubernetes_cluster, API, record)
        await set_node_behaviour(admin_kubeconfig, {"failing_images": ["*-broken"]})
        for bad in ("v9.9.7-broken", BROKEN.rsplit(":", 1)[1]):
            image = f"ghcr.io/genspark/ai-multimodel-api:{bad}"
            await k8s.set_image.fn(kubernetes_cluster, API, image, change_cause=f"deploy {bad}")
        deadline = time.monotonic() + 90
        while not any(
            p.reason == "CrashLoopBackOff" and BROKEN in p.images
            for p in await k8s.list_pods.fn(kubernetes_cluster, label_selector=f"app={API}")
        ):
            assert time.monotonic() < deadline, "the second bad release never crash-looped"
            await asyncio.sleep(1)
        report = await incident_triage(
            alert_name="HighErrorRate",
            incident_id=f"inc-{uuid.uuid4().hex[:8]}",
            alert_severity="critical",
            environment=TEST_ENVIRONMENT,
            dry_run=False,
        )
        [rollback] = report.mitigations
        assert (rollback.action, rollback.outcome) == ("rollback", "applied")
        assert "last known good" in rollback.detail
        assert report.facts["last_known_good_images"] == good.images
        runs = production_kubectl(
            admin_kubeconfig, "get", f"deployment/{API}", "-o", "jsonpath={.spec.template.spec.containers[*].image}"
        )
        assert runs.split() == good.images  # not v9.9.7-broken, which "rollout undo" would have gone to
        await set_node_behaviour(admin_kubeconfig, {})
        await k8s.rollout_status.fn(kubernetes_cluster, API, timeout_s=180)


async def test_dry_run_changes_nothing(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, clean_node: None
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["qwen"]}).raise_for_status()
    report = await incident_triage(
        alert_name="HighErrorRate",
        incident_id=f"inc-{uuid.uuid4().hex[:8]}",
        environment=TEST_ENVIRONMENT,
        dry_run=True,
    )
    # its breaker (and a scale-out when qwen's timeouts already pushed p95 or the error rate over P1's), described
    assert ("open_circuit_breaker", "qwen", "dry-run") in [(m.action, m.target, m.outcome) for m in report.mitigations]
    assert {m.outcome for m in report.mitigations} == {"dry-run"}
    config = httpx.get(f"{url}/admin/models/qwen/config", headers=headers).json()
    assert config["fallback_model"] is None  # the mitigation was only described, not applied


@pytest.fixture()
async def fresh_api_hpa(admin_kubeconfig: Path) -> Any:
    """After the test: the API's HPA recreated as it was before (its bounds, and no memory), replicas as before.

    Scaled to 10, an HPA remembers a recommendation of about 7 for its 5-minute scale-down window: left alone it
    would keep 6 or 7 pods after the test, and later tests would find them. A recreated HPA starts afresh.
    """
    api_client = await k8s_config.new_client_from_config(config_file=str(admin_kubeconfig))
    async with api_client:
        autoscaling = k8s_client.AutoscalingV1Api(api_client)
        apps = k8s_client.AppsV1Api(api_client)
        hpa = await autoscaling.read_namespaced_horizontal_pod_autoscaler(API, "production")
        replicas = (await apps.read_namespaced_deployment_scale(API, "production")).spec.replicas
        try:
            yield hpa
        finally:
            await autoscaling.delete_namespaced_horizontal_pod_autoscaler(API, "production")
            body = {
                "apiVersion": "autoscaling/v1",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": API, "namespace": "production", "labels": hpa.metadata.labels},
                "spec": api_client.sanitize_for_serialization(hpa.spec),
            }
            await autoscaling.create_namespaced_horizontal_pod_autoscaler("production", body)
            await apps.patch_namespaced_deployment_scale(API, "production", {"spec": {"replicas": replicas}})


@pytest.mark.parametrize("approve", [True, False])
async def test_p2_mitigation_waits_for_approval(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    clean_node: None,
    kubernetes_cluster: KubernetesCluster,
    monkeypatch: pytest.MonkeyPatch,
    fresh_api_hpa: Any,
    production_environment: str,
    approve: bool,
) -> None:
    """Slow responses (p95 between 1.5 s and 3 s) are P2: in production, scale out only once a human approves."""
    monkeypatch.setattr(mitigations, "APPROVAL_POLL_INTERVAL_S", 1)
    url, headers = platform_admin
    baseline = await fetch_metrics.fn((await load_environment(TEST_ENVIRONMENT)).platform)
    assert baseline.response_time_p95_s is not None and baseline.response_time_p95_s < 1.5
    added_ms = (2.2 - baseline.response_time_p95_s) / 1.8 * 1000  # the double's p95 is 1.8 x the mean
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"latency_ms": added_ms}).raise_for_status()
    before = await k8s.get_deployment.fn(kubernetes_cluster, API)
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        incident_triage(
            alert_name="HighResponseTime",
            incident_id=incident_id,
            alert_severity="warning",
            environment=production_environment,
            dry_run=False,
        )
    )
    try:
        run_id = await paused_triage(incident_id, run)
        # paused: told, but nothing applied before a human decides
        assert (await k8s.get_deployment.fn(kubernetes_cluster, API)).replicas == before.replicas
        slack = [e for e in httpx.get(f"{receivers_url}/_received").json() if e["system"] == "slack"]
        assert len(slack) == 2 and "P2" in json.dumps(slack[0]["body"]["blocks"])
        assert "APPROVAL NEEDED" in slack[1]["body"]["text"] and str(run_id) in slack[1]["body"]["text"]
        assert slack[1]["body"]["thread_ts"] == slack[0]["ts"]
        await aresume_flow_run(run_id, run_input={"approve": approve, "approver": "alice", "note": "checked graphs"})
        report = await asyncio.wait_for(run, timeout=120)

        assert report.severity == "P2"
        [mitigation] = report.mitigations
        assert (mitigation.action, mitigation.target, mitigation.by) == ("scale_out", API, "alice")
        replicas = (await k8s.get_deployment.fn(kubernetes_cluster, API)).replicas
        [hpa] = await k8s.list_hpas.fn(kubernetes_cluster)
        target = load_policy().mitigation.scale_out_replicas
        if approve:
            assert mitigation.outcome == "applied" and replicas == target
            # the HPA's floor holds the scale-out (else the HPA scales it back) until the alert resolves
            assert hpa.min_replicas == target and f"floor {fresh_api_hpa.spec.min_replicas} -> {target}" in str(
                mitigation.detail
            )
            # the gateway's resolution event runs incident-resolved: the floor goes back, PagerDuty and Slack told
            httpx.delete(f"{receivers_url}/_received").raise_for_status()
            [released] = await incident_resolved(
                incident_id=incident_id,
                alert_name="HighResponseTime",
                environment=production_environment,
                dry_run=False,
            )
            assert released.restored and released.min_replicas == fresh_api_hpa.spec.min_replicas
            [hpa] = await k8s.list_hpas.fn(kubernetes_cluster)
            assert (hpa.min_replicas, hpa.max_replicas) == (
                fresh_api_hpa.spec.min_replicas,
                fresh_api_hpa.spec.max_replicas,
            )
            told = httpx.get(f"{receivers_url}/_received").json()
            assert [e["body"]["event_action"] for e in told if e["system"] == "pagerduty"] == ["resolve"]
            assert any("RESOLVED" in e["body"].get("text", "") for e in told if e["system"] == "slack")
            assert (
                await incident_resolved(incident_id=incident_id, environment=production_environment, dry_run=False)
                == []
            )
        else:
            assert mitigation.outcome == "rejected" and mitigation.detail == "checked graphs"
            assert replicas == before.replicas and hpa.min_replicas == fresh_api_hpa.spec.min_replicas
    finally:
        run.cancel()


async def test_updates_in_the_thread_until_resolved(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, clean_node: None
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"error_rate": 0.2}).raise_for_status()
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        incident_triage(
            alert_name="HighErrorRate",
            incident_id=incident_id,
            alert_severity="critical",
            environment=TEST_ENVIRONMENT,
            dry_run=True,
            watch_s=120,
            update_interval_s=1,
        )
    )

    def slack() -> list[dict[str, Any]]:
        return [e for e in httpx.get(f"{receivers_url}/_received").json() if e["system"] == "slack"]

    for _ in range(120):  # until at least two status updates went out
        if sum("INCIDENT UPDATE" in e["body"]["text"] for e in slack()) >= 2:
            break
        await asyncio.sleep(0.5)
    httpx.delete(f"{url}/_sandbox/faults", headers=headers).raise_for_status()  # the error rate recovers
    report = await asyncio.wait_for(run, timeout=120)

    assert report.severity == "P1" and report.resolved
    messages = slack()
    texts = [e["body"]["text"] for e in messages]
    updates = [t for t in texts if "INCIDENT UPDATE" in t]
    assert len(updates) >= 2 and all("metrics" in t for t in updates)
    assert "RESOLVED" in texts[-1]
    assert all(e["body"].get("thread_ts") == messages[0]["ts"] for e in messages[1:])  # all in the first's thread
    received = httpx.get(f"{receivers_url}/_received").json()
    assert [e["kind"] for e in received if e["system"] == "pagerduty"] == ["trigger", "resolve"]


async def test_error_rate_after_fresh_rollout_is_rolled_back(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    clean_node: None,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
) -> None:
    """A release that runs (no crash loop) but fails requests: its pods log errors, the error rate climbs."""
    url, headers = platform_admin
    before = await k8s.get_deployment.fn(kubernetes_cluster, API)
    bad = "ghcr.io/genspark/ai-multimodel-api:v9.9.8-bad-query"
    await set_node_behaviour(admin_kubeconfig, {"error_logs": ["*:v9.9.8-bad-query"]})
    await k8s.set_image.fn(kubernetes_cluster, API, bad, change_cause="deploy v9.9.8")
    status = await k8s.rollout_status.fn(kubernetes_cluster, API, timeout_s=120)  # raises unless it completes
    assert status.deployment.images == [bad] and status.deployment.ready == status.deployment.replicas
    for _ in range(60):  # the new pods have logged their first ERROR lines (what the alert is about)
        logs = await k8s.deployment_logs.fn(kubernetes_cluster, API, all_pods=True, since_seconds=600)
        if k8s.grep_lines(logs.lines, r"ERROR"):
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError("the bad release never logged an ERROR line")
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"error_rate": 0.25}).raise_for_status()

    async def error_rate_follows_the_release() -> None:  # what the platform double cannot know by itself
        while True:
            if (await k8s.get_deployment.fn(kubernetes_cluster, API)).images != [bad]:
                httpx.delete(f"{url}/_sandbox/faults", headers=headers).raise_for_status()
                return
            await asyncio.sleep(0.5)

    follower = asyncio.create_task(error_rate_follows_the_release())
    try:
        report = await incident_triage(
            alert_name="HighErrorRate",
            incident_id=f"inc-{uuid.uuid4().hex[:8]}",
            alert_severity="critical",
            environment=TEST_ENVIRONMENT,
            dry_run=False,
            watch_s=60,
            update_interval_s=1,
        )
    finally:
        follower.cancel()
    assert report.severity == "P1" and report.facts["error_rate"] > 0.10
    assert report.facts["recent_rollout"] is True and report.facts["crashlooping_pods"] == 0
    assert report.facts["error_log_lines"] > 0
    assert [(m.action, m.outcome) for m in report.mitigations] == [("rollback", "applied")]
    after = await k8s.get_deployment.fn(kubernetes_cluster, API)
    assert after.images == before.images and after.revision > before.revision
    assert report.resolved
    received = httpx.get(f"{receivers_url}/_received").json()
    assert [e["kind"] for e in received if e["system"] == "pagerduty"] == ["trigger", "resolve"]


@pytest.mark.parametrize("answer", ["approve", "reject", "timeout"])
async def test_production_asks_before_a_rollback(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    production_environment: str,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
    broken_release: k8s.DeploymentInfo,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    """Production, P1 crash loop: the triage pauses with the run's link in the Slack thread; approved it rolls
    back, rejected or unanswered it changes nothing; incident-resolved resolves PagerDuty in every case."""
    monkeypatch.setattr(mitigations, "APPROVAL_POLL_INTERVAL_S", 1)
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    history = rollout_history(admin_kubeconfig)
    run = asyncio.create_task(
        incident_triage(
            alert_name="HighErrorRate",
            incident_id=incident_id,
            alert_severity="critical",
            environment=production_environment,
            approval_timeout_s=20 if answer == "timeout" else 600,
        )
    )
    try:
        run_id = await paused_triage(incident_id, run)
        slack = received(receivers_url, "slack")
        assert slack[0]["body"]["channel"] == "#ai-multimodel-incidents" and "P1" in json.dumps(slack[0]["body"])
        [ask] = [e for e in slack if "APPROVAL NEEDED" in e["body"]["text"]]
        assert ask["body"]["thread_ts"] == slack[0]["ts"] and str(run_id) in ask["body"]["text"]
        assert "rollback" in ask["body"]["text"]
        assert (await k8s.get_deployment.fn(kubernetes_cluster, API)).images == [BROKEN]  # nothing yet
        if answer != "timeout":
            await aresume_flow_run(run_id, run_input={"approve": answer == "approve", "approver": "bob"})
        report = await asyncio.wait_for(run, timeout=240)
    finally:
        run.cancel()

    assert report.severity == "P1"
    [mitigation] = report.mitigations
    after = await k8s.get_deployment.fn(kubernetes_cluster, API)
    if answer == "approve":
        assert (mitigation.action, mitigation.outcome, mitigation.by) == ("rollback", "applied", "bob")
        assert after.images == broken_release.images
        assert max(rollout_history(admin_kubeconfig)) == max(history) + 1  # one undo: one new revision
    else:
        assert mitigation.outcome == "rejected"
        assert mitigation.by == ("timeout" if answer == "timeout" else "bob")
        assert after.images == [BROKEN] and rollout_history(admin_kubeconfig) == history  # nothing changed

    await incident_resolved(incident_id=incident_id, alert_name="HighErrorRate", environment=production_environment)
    pagerduty = [(e["kind"], e["dedup_key"]) for e in received(receivers_url, "pagerduty")]
    assert pagerduty[0] == ("trigger", incident_id) and pagerduty[-1] == ("resolve", incident_id)


async def test_one_rollback_when_two_runs_ask_at_once(
    sandbox: Sandbox,
    production_environment: str,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
    broken_release: k8s.DeploymentInfo,
) -> None:
    """Two runs apply the same incident's rollback concurrently (the production code, two flow runs as two asyncio
    tasks): the claim on the Deployment lets exactly one undo; the other reports which run did it. kubectl shows one
    new revision."""
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    history = rollout_history(admin_kubeconfig)
    planned = PlannedAction(action="rollback", target=API, params={"timeout_s": 180})

    def record() -> MitigationRecord:
        return MitigationRecord(action="rollback", target=API, key=planned.key(incident_id), outcome="dry-run")

    @flow(name="apply-mitigation-test")
    async def one_run() -> MitigationRecord:  # a run of its own, as on a worker: the claim names it
        return await mitigations.carry_out(production_environment, planned, record(), observe=False)

    first, second = await asyncio.wait_for(asyncio.gather(one_run(), one_run()), timeout=300)
    outcomes = sorted([first.outcome, second.outcome])
    assert outcomes == ["applied", "skipped"], (first, second)
    skipped = first if first.outcome == "skipped" else second
    assert skipped.detail.startswith("already applied by ")
    after_history = rollout_history(admin_kubeconfig)
    assert max(after_history) == max(history) + 1 and len(after_history) == len(history)  # exactly one undo
    assert (await k8s.get_deployment.fn(kubernetes_cluster, API)).images == broken_release.images
    claim = await k8s.read_mitigation_claim.fn(kubernetes_cluster, API, incident_id)
    assert claim is not None and claim.action == "rollback" and claim.run in skipped.detail
    assert claim.done.startswith("rolled back to revision")  # marked done: never claimed again, not even by its run

    # a later run of the same incident (another worker) finds the claim and does nothing
    again = await one_run()
    assert again.outcome == "skipped" and rollout_history(admin_kubeconfig) == after_history


async def test_one_rollback_when_two_worker_processes_ask_at_once(
    sandbox: Sandbox,
    production_environment: str,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
    broken_release: k8s.DeploymentInfo,
) -> None:
    """The same rollback asked for by two runs in two processes (two workers share nothing but the cluster and
    the Prefect API): exactly one undo, as `kubectl rollout history` shows."""
    import os
    import sys

    from prefect.settings import PREFECT_API_URL

    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    history = rollout_history(admin_kubeconfig)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    argv = [sys.executable, "-m", "tests.flows.mitigation_process", production_environment, incident_id, API]
    workers = [
        await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), timeout=280)
    records = []
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err.decode()[-3000:]
        records.append(MitigationRecord.model_validate_json(out.decode().strip().splitlines()[-1]))
    assert sorted(r.outcome for r in records) == ["applied", "skipped"], records
    after = rollout_history(admin_kubeconfig)
    assert max(after) == max(history) + 1 and len(after) == len(history)  # exactly one undo
    assert (await k8s.get_deployment.fn(kubernetes_cluster, API)).images == broken_release.images


async def test_incident_resolved_closes_everything_and_posts_resolved_once(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, production_environment: str
) -> None:
    """Production (so no dry run can hold it back): PagerDuty resolved, the Opsgenie alert closed by alias, and
    RESOLVED in the incident's thread once, though two runs of incident-resolved ran (concurrently)."""
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["qwen"]}).raise_for_status()
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    report = await incident_triage(
        alert_name="ModelDown",
        incident_id=incident_id,
        alert_severity="warning",
        environment=production_environment,
        dry_run=True,  # observe: the triage only describes; notifications go out all the same
    )
    assert report.mitigations == []  # ModelDown: model-unavailable acts, the triage tells
    first = received(receivers_url, "slack")[0]
    httpx.delete(f"{url}/_sandbox/faults", headers=headers).raise_for_status()

    await asyncio.wait_for(
        asyncio.gather(
            *(
                incident_resolved(incident_id=incident_id, alert_name="ModelDown", environment=production_environment)
                for _ in range(2)
            )
        ),
        timeout=120,
    )
    await incident_resolved(incident_id=incident_id, alert_name="ModelDown", environment=production_environment)

    resolved = [e for e in received(receivers_url, "slack") if e["body"]["text"].startswith("✅ RESOLVED")]
    assert len(resolved) == 1 and resolved[0]["body"]["thread_ts"] == first["ts"]
    assert resolved[0]["body"]["channel"] == first["body"]["channel"] and incident_id in resolved[0]["body"]["text"]
    closes = [e for e in received(receivers_url, "opsgenie") if e["kind"] == "close"]
    assert closes and all((e["identifier"], e["identifier_type"]) == (incident_id, "alias") for e in closes)
    assert [e["dedup_key"] for e in received(receivers_url, "pagerduty") if e["kind"] == "resolve"]

    # an incident no triage recorded: RESOLVED goes to the alerts channel, saying the thread was not found
    other = f"inc-{uuid.uuid4().hex[:8]}"
    await incident_resolved(incident_id=other, alert_name="ModelDown", environment=production_environment)
    [lost] = [e for e in received(receivers_url, "slack") if other in e["body"]["text"]]
    assert "thread_ts" not in lost["body"] and "thread was not found" in lost["body"]["text"]
