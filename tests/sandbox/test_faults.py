"""``runbooks sandbox fault``: each fault lands in the platform double's switches or the node's behaviour rules
(checked with kubectl, as an operator would), and ``clear`` undoes them all. Uses the session's sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from blocks.kubernetes import KubernetesCluster
from kernel import processes
from sandbox.faults import API_APP, FAULTS, POD_MEMORY_GROWTH_MIB_PER_MIN, inject
from sandbox.manager import Sandbox
from tests.conftest import fresh_api_pods


def _kubectl(kubeconfig: Path, *args: str) -> Any:
    result = processes.run(
        ["kubectl", *args, "-o", "json"], timeout_s=30, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
    )
    if result.returncode != 0:
        return None if "NotFound" in result.stderr else result.stderr
    return json.loads(result.stdout)


def _node_rules(kubeconfig: Path) -> dict[str, Any] | None:
    cm = _kubectl(kubeconfig, "-n", "kube-system", "get", "configmap", "sandbox-node-behaviour")
    return None if cm is None else dict(json.loads(cm["data"]["rules.json"]))


def _platform_faults(sandbox: Sandbox) -> dict[str, Any]:
    settings = sandbox.settings
    headers = {"Authorization": f"Bearer {sandbox.state.secrets()['platform_admin_token']}"}
    return dict(httpx.get(settings.url(settings.platform_port, "/_sandbox/faults"), headers=headers).json())


def _platform(sandbox: Sandbox, path: str) -> Any:
    settings = sandbox.settings
    return httpx.get(settings.url(settings.platform_port, path)).json()


def _breaker(sandbox: Sandbox, model: str) -> str:
    breakers = _platform(sandbox, "/api/v1/load-balancer/circuit-breakers")
    return str(next(b["state"] for b in breakers if b["model"] == model))


def test_faults_add_up_and_clear_undoes_them(
    sandbox: Sandbox, admin_kubeconfig: Path, kubernetes_cluster: KubernetesCluster
) -> None:
    settings, state = sandbox.settings, sandbox.state
    try:
        for name in FAULTS:
            assert name in inject(name, settings, state)
        faults = _platform_faults(sandbox)
        assert faults["models_down"] == ["gpt-4"] and faults["error_rate"] == 0.3 and faults["latency_ms"] == 3000
        assert faults["service_down"] and faults["memory_growth_mb_per_min"] == 50 and faults["leaked_key_id"]
        assert faults["unauthorized_ips"] == ["203.0.113.50", "198.51.100.23"] and faults["slow_models"] == ["qwen"]
        assert faults["spiking_user_id"] and faults["expensive_models"] == ["gpt-4"]
        assert faults["skewed_weights"] == {"claude-3-5-sonnet": 1.0} and faults["stuck_breakers"] == ["gemini-pro"]
        assert _platform(sandbox, "/api/v1/load-balancer/config")["weights"]["claude-3-5-sonnet"] == 1.0
        assert _breaker(sandbox, "gemini-pro") == "OPEN"

        deployment = _kubectl(admin_kubeconfig, "-n", "production", "get", "deployment", API_APP)
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        rules = _node_rules(admin_kubeconfig)
        assert rules == {
            "failing_images": [image],
            "memory_growth_mib_per_min": {API_APP: POD_MEMORY_GROWTH_MIB_PER_MIN},
        }

        def crashing() -> bool:
            pods = _kubectl(admin_kubeconfig, "-n", "production", "get", "pods", "-l", f"app={API_APP}")["items"]
            return any(
                (c.get("restartCount") or 0) > 0
                or ((c.get("state") or {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff"
                for p in pods
                if p["spec"]["containers"][0]["image"] == image
                for c in p["status"].get("containerStatuses") or []
            )

        deadline = time.monotonic() + 60
        while not crashing():  # the node agent watches the ConfigMap: the release's pods start failing
            assert time.monotonic() < deadline, "no pod of the release crash-looped within 60s"
            time.sleep(0.5)
    finally:
        assert "cleared" in inject("clear", settings, state)
        asyncio.run(fresh_api_pods(kubernetes_cluster))  # the crash-looped pods keep their restarts otherwise
    assert _node_rules(admin_kubeconfig) is None
    assert _platform_faults(sandbox)["active"] is False
    # the configuration faults put back what they changed: the default weight, the breaker closed
    assert _platform(sandbox, "/api/v1/load-balancer/config")["weights"]["claude-3-5-sonnet"] == 0.25
    assert _breaker(sandbox, "gemini-pro") == "CLOSED"
