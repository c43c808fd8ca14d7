"""``runbooks sandbox fault NAME|clear``: turn one production failure on, in the platform double's fault switches
(``/_sandbox/faults``) and/or the simulated node's behaviour rules (ConfigMap ``kube-system/sandbox-node-behaviour``),
so Prometheus sees it, the matching alert fires, and the triage runs. Faults add up; ``clear`` undoes them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from kernel.errors import SandboxError
from sandbox.components import PlatformComponent
from sandbox.config import SandboxSettings, SandboxState
from sandbox.k8s.behaviour import RULES_CONFIGMAP, RULES_KEY, RULES_NAMESPACE, Rules

#: the platform's API Deployment in the simulated cluster (sandbox/k8s/seed.py)
API_APP, API_NAMESPACE = "ai-multimodel-api", "production"
MODEL = "gpt-4"  # the model the model-down fault takes down
ATTACKERS = ("203.0.113.50", "198.51.100.23")  # documentation ranges, outside the catalogue policy's allow-list
SLOW_MODEL = "qwen"  # the model the slow-model fault slows
EXPENSIVE_MODEL = "gpt-4"  # the cost-spike fault: its requests cost 3 times as much, over the cost strategy's cap
SKEWED_MODEL, SKEWED_WEIGHT = (
    "claude-3-5-sonnet",
    1.0,
)  # load-imbalance: 57% of the traffic; the policy's weights fix it
STUCK_MODEL = "gemini-pro"  # breaker-open: its breaker stuck OPEN although it answers its /test
CONFIGMAP_PATH = f"/api/v1/namespaces/{RULES_NAMESPACE}/configmaps"

NodeChange = Callable[[Rules, "FaultContext"], Rules]


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    alert: str  # the alert it should fire (alerting/rules/), for the operator's message
    platform: Callable[[FaultContext], dict[str, Any]] | None = None  # a partial body of PUT /_sandbox/faults
    node: NodeChange | None = None


@dataclass
class FaultContext:
    """The sandbox's platform double and (when it runs) its cluster, as the admin."""

    settings: SandboxSettings
    state: SandboxState
    _platform: httpx.Client | None = field(default=None, init=False)

    @property
    def platform(self) -> httpx.Client:
        if self._platform is None:
            component = PlatformComponent(self.settings, self.state)
            token = self.state.secrets()["platform_admin_token"]
            self._platform = httpx.Client(
                base_url=component.address, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
        return self._platform

    def close(self) -> None:
        if self._platform is not None:
            self._platform.close()

    def some_api_key(self) -> str:
        """A seeded API key with traffic (the first of the top users'): the one the leak fault leaks."""
        users = self._get("/api/v1/analytics/top-users?hours=24")["users"]
        for user in users:
            if user.get("api_key_ids"):
                return str(user["api_key_ids"][0])
        raise SandboxError("the platform double has no API key with traffic to leak")

    def some_quiet_user(self) -> str:
        """The seeded user with the least traffic (the suspicious-usage fault's: not the leaked key's owner)."""
        users = self._get("/api/v1/analytics/top-users?hours=24")["users"]
        if not users:
            raise SandboxError("the platform double has no user whose traffic could spike")
        return str(users[-1]["user_id"])

    def _get(self, path: str) -> dict[str, Any]:
        try:
            response = self.platform.get(path)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise SandboxError(f"platform double: GET {path}: {err}", hint="is `runbooks sandbox up` done?") from err
        return dict(response.json())

    def put_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._send("PUT", body)

    def clear_faults(self) -> dict[str, Any]:
        return self._send("DELETE", None)

    def _send(self, method: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            response = self.platform.request(method, "/_sandbox/faults", json=body)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise SandboxError(
                f"platform double: {method} /_sandbox/faults: {err}", hint="is `runbooks sandbox up` done?"
            ) from err
        return dict(response.json())

    # ---- the simulated node's behaviour rules --------------------------------------------------------------

    def _cluster(self) -> httpx.Client:
        from sandbox.k8s.controlplane import KubernetesComponent

        k8s = KubernetesComponent(self.settings, self.state)
        if self.state.get(k8s.name).get("external") or not (k8s.pki.dir / "admin.crt").exists():
            raise SandboxError(
                "this fault needs the sandbox's own Kubernetes cluster",
                hint="run `runbooks sandbox up` without KUBECONFIG set",
            )
        from sandbox.k8s.seed import AdminClient

        return AdminClient(k8s.server, k8s.pki.dir).http

    def cluster_running(self) -> bool:
        return bool(self.state.get("kubernetes")) and not self.state.get("kubernetes").get("external")

    def api_image(self) -> str:
        with self._cluster() as http:
            response = http.get(f"/apis/apps/v1/namespaces/{API_NAMESPACE}/deployments/{API_APP}")
            response.raise_for_status()
        return str(response.json()["spec"]["template"]["spec"]["containers"][0]["image"])

    def change_rules(self, change: NodeChange) -> Rules:
        with self._cluster() as http:
            response = http.get(f"{CONFIGMAP_PATH}/{RULES_CONFIGMAP}")
            exists = response.status_code == 200
            if not exists and response.status_code != 404:
                raise SandboxError(f"reading {RULES_NAMESPACE}/{RULES_CONFIGMAP}: {response.status_code}")
            current = Rules.from_configmap(response.json().get("data") if exists else None)
            rules = change(current, self)
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": RULES_CONFIGMAP, "namespace": RULES_NAMESPACE},
                "data": {RULES_KEY: json.dumps(rules.model_dump(exclude_defaults=True), sort_keys=True)},
            }
            if exists:
                saved = http.put(f"{CONFIGMAP_PATH}/{RULES_CONFIGMAP}", json=body)
            else:
                saved = http.post(CONFIGMAP_PATH, json=body)
            if saved.status_code >= 400:
                raise SandboxError(f"writing {RULES_NAMESPACE}/{RULES_CONFIGMAP}: {saved.text[:300]}")
        return rules

    def delete_rules(self) -> None:
        with self._cluster() as http:
            response = http.delete(f"{CONFIGMAP_PATH}/{RULES_CONFIGMAP}")
            if response.status_code not in (200, 202, 404):
                raise SandboxError(f"deleting {RULES_NAMESPACE}/{RULES_CONFIGMAP}: {response.text[:300]}")


def _crashloop_release(rules: Rules, ctx: FaultContext) -> Rules:
    """The API's current image (its last release) exits at start: a rollback to the previous one cures it."""
    return rules.model_copy(update={"failing_images": sorted({*rules.failing_images, ctx.api_image()})})


#: how fast the memory-growth fault grows the API pods' working set: from about 0.6 GiB to HighMemoryUsage's 90% of
#: their 4 GiB limit in about 6 minutes, firing a minute later (alerting/rules/memory.yml); the platform double's V8
#: heap, the figure the runbook greps from /metrics, grows 50 MB a minute
POD_MEMORY_GROWTH_MIB_PER_MIN = 500.0


def _memory_growth(rules: Rules, ctx: FaultContext) -> Rules:
    growth = {**rules.memory_growth_mib_per_min, API_APP: POD_MEMORY_GROWTH_MIB_PER_MIN}
    return rules.model_copy(update={"memory_growth_mib_per_min": growth})


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("model-down", f"model {MODEL} stops answering", "ModelDown", lambda _: {"models_down": [MODEL]}),
        Fault("error-rate", "30% of requests fail with a 5xx", "HighErrorRate", lambda _: {"error_rate": 0.3}),
        Fault("latency", "every request takes 3 s longer", "HighResponseTime", lambda _: {"latency_ms": 3000.0}),
        Fault(
            "crashloop-release",
            f"{API_APP}'s current release crash-loops",
            "(pods: no alert rule yet)",
            None,
            _crashloop_release,
        ),
        Fault(
            "memory-growth",
            f"the API's heap grows 50 MB a minute, {API_APP}'s pods {POD_MEMORY_GROWTH_MIB_PER_MIN:.0f} MiB a minute",
            "HighMemoryUsage (in about 7 minutes; high-memory answers it)",
            lambda _: {"memory_growth_mb_per_min": 50.0},
            _memory_growth,
        ),
        Fault(
            "leaked-key",
            "an API key is used from 40 new addresses",
            "ApiKeyLeak (and SuspiciousUsage: its user is over 1,000 requests in 24 h)",
            lambda ctx: {"leaked_key_id": ctx.some_api_key()},
        ),
        Fault(
            "suspicious-usage",
            "the quietest user's traffic spikes by 3,000 requests an hour, an hour of it already served",
            "SuspiciousUsage",
            lambda ctx: {"spiking_user_id": ctx.some_quiet_user()},
        ),
        Fault(
            "cost-spike",
            f"{EXPENSIVE_MODEL}'s requests cost 3 times as much (long contexts)",
            "CostBudgetExceeded",
            lambda _: {"expensive_models": [EXPENSIVE_MODEL]},
        ),
        Fault(
            "load-imbalance",
            f"a configuration push sets {SKEWED_MODEL}'s load-balancer weight to {SKEWED_WEIGHT}",
            "LoadImbalance",
            lambda _: {"skewed_weights": {SKEWED_MODEL: SKEWED_WEIGHT}},
        ),
        Fault(
            "breaker-open",
            f"{STUCK_MODEL}'s circuit breaker is stuck OPEN although the model answers",
            "CircuitBreakerOpen",
            lambda _: {"stuck_breakers": [STUCK_MODEL]},
        ),
        Fault(
            "unauthorized-access",
            f"{' and '.join(ATTACKERS)} send a request with an invalid key every second",
            "UnauthorizedAccessSpike",
            lambda _: {"unauthorized_ips": list(ATTACKERS)},
        ),
        Fault(
            "slow-model",
            f"{SLOW_MODEL}'s provider endpoint in us-east-1 answers 6 s slower",
            "ProviderHighLatency",
            lambda _: {"slow_models": [SLOW_MODEL]},
        ),
        Fault(
            "service-down",
            "the API answers 503 everywhere, its scrapes too",
            "ServiceDown",
            lambda _: {"service_down": True},
        ),
    )
}


def known() -> str:
    return ", ".join([*FAULTS, "clear"])


def inject(name: str, settings: SandboxSettings, state: SandboxState) -> str:
    """Turn fault ``name`` on (or ``clear`` them all); a line saying what changed, for the operator."""
    if name != "clear" and name not in FAULTS:
        raise SandboxError(f"unknown fault {name!r}; known: {known()}")
    ctx = FaultContext(settings, state)
    try:
        if name == "clear":
            ctx.clear_faults()
            if not ctx.cluster_running():
                return "faults cleared: platform double healthy (no sandbox cluster, so no node rules to remove)"
            ctx.delete_rules()
            return "faults cleared: platform double healthy, node behaviour rules removed"
        fault = FAULTS[name]
        changed = []
        if fault.platform is not None:
            body = fault.platform(ctx)
            ctx.put_faults(body)
            changed.append("platform " + ", ".join(f"{k}={v}" for k, v in body.items()))
        if fault.node is not None:
            rules = ctx.change_rules(fault.node)
            changed.append(f"node rules {rules.model_dump(exclude_defaults=True)}")
        return f"fault {name} on ({fault.what}): {'; '.join(changed)}; expect alert: {fault.alert}"
    finally:
        ctx.close()
