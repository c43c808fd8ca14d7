"""Diagnose: concurrent enrichers, each adding one finding about one system (Robusta's enrichers).

A failing or slow enricher adds an error finding instead of failing the triage: the first notification must not
wait on one system that does not answer. Judgements use the policy's thresholds (:mod:`tasks.triage.policy`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment
from kernel.errors import PrometheusError
from tasks import kubernetes as k8s
from tasks.diagnostics.policy import load_policy as load_diagnostics_policy
from tasks.diagnostics.redis import sample_latency
from tasks.platform import check_health, fetch_metrics, list_models
from tasks.postgres import check_postgres
from tasks.prometheus import query_instant
from tasks.redis import check_redis
from tasks.reporting import describe_error
from tasks.triage.policy import TriagePolicy

#: how long one enricher may take before it becomes an error finding: the first notification must not wait on it
ENRICHER_TIMEOUT_S = 10.0
#: the Redis latency sampling of a triage is at most this long (the diagnostics policy's may be longer)
REDIS_LATENCY_S = 2.0


class Finding(BaseModel):
    enricher: str
    ok: bool
    title: str
    detail: str = ""
    facts: dict[str, Any] = Field(default_factory=dict)


Enricher = Callable[[RunbookEnvironment, TriagePolicy], Awaitable[Finding]]


async def enrich_health(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    h = await check_health(env.platform)
    return Finding(
        enricher="health",
        ok=h.healthy,
        title=f"/health {h.status_code} {h.status}",
        detail=f"{h.latency_ms} ms",
        facts={"health_ok": h.healthy},
    )


async def enrich_metrics(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    """Error rate and p95 latency: from Prometheus where the environment has one, else from the API's /metrics."""
    limits = policy.thresholds
    error_rate: float | None = None
    p95: float | None = None
    source = "/metrics"
    by_status: dict[str, float] = {}
    if env.prometheus is not None:
        source = f"Prometheus ({env.prometheus.url})"
        try:
            error_rate, p95 = await asyncio.gather(
                _promql(env, policy.measurements.error_rate), _promql(env, policy.measurements.response_time_p95_s)
            )
        except PrometheusError as err:  # the figures still matter more than where they come from
            source = f"/metrics (Prometheus at {env.prometheus.url} failed: {describe_error(err)})"
        else:
            if error_rate is None and p95 is None:
                source = f"/metrics (Prometheus at {env.prometheus.url} has no data)"
    if error_rate is None and p95 is None:  # no Prometheus, or nothing from it: the service's own figures
        m = await fetch_metrics(env.platform)
        error_rate, p95, by_status = m.error_rate, m.response_time_p95_s, m.requests_by_status
    return Finding(
        enricher="metrics",
        ok=limits.error_rate_ok(error_rate) and limits.response_time_ok(p95),
        title=f"error rate {_figure(error_rate)}, p95 {_figure(p95, 's')}",
        detail=(
            f"from {source}"
            + (f"; requests by status {by_status}" if by_status else "")
            + f" (healthy at most {limits.error_rate} errors, p95 {limits.response_time_p95_s}s)"
        ),
        facts={"error_rate": error_rate, "response_time_p95_s": p95, "metrics_source": source},
    )


async def _promql(env: RunbookEnvironment, query: str) -> float | None:
    assert env.prometheus is not None
    return (await query_instant(env.prometheus, query)).value()


def _figure(value: float | None, unit: str = "") -> str:
    return "no data" if value is None else f"{value:g}{unit}"


async def enrich_models(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    models = await list_models(env.platform)
    down = [m.name for m in models if m.status == "down"]
    degraded = [m.name for m in models if m.status == "degraded"]
    return Finding(
        enricher="models",
        ok=not down,
        title=f"{len(down)} model(s) down: {', '.join(down) or '-'}",
        detail=f"degraded: {', '.join(degraded) or '-'}",
        facts={"models_down": len(down), "down_models": down},
    )


async def enrich_pods(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    cluster = env.require_kubernetes()
    pods = await k8s.list_pods(cluster)
    crashing = [p.name for p in pods if p.reason in {"CrashLoopBackOff", "Error", "ImagePullBackOff"}]
    api = [p for p in pods if p.labels.get("app") == env.api_deployment and p.status != "Terminating"]
    ratio = sum(p.is_ready for p in api) / len(api) if api else 0.0
    return Finding(
        enricher="pods",
        ok=not crashing and ratio == 1.0,
        title=f"{len(pods)} pods, {len(crashing)} crash-looping, API ready {ratio:.0%}",
        detail=", ".join(f"{p.name} {p.status} restarts={p.restarts}" for p in pods if not p.is_ready)[:800],
        facts={"crashlooping_pods": len(crashing), "api_available_ratio": round(ratio, 2)},
    )


async def enrich_events(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    events = await k8s.list_events(env.require_kubernetes(), warnings_only=True, last=20)
    return Finding(
        enricher="events",
        ok=not events,
        title=f"{len(events)} warning event(s)",
        detail="; ".join(f"{e.object} {e.reason}: {e.message}" for e in events[-5:])[:800],
    )


async def enrich_nodes(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    nodes = await k8s.list_nodes(env.require_kubernetes())
    bad = [n for n in nodes if not n.ready or n.problems]
    return Finding(
        enricher="nodes",
        ok=not bad,
        title=f"{len(nodes)} node(s), {len(bad)} with problems",
        detail="; ".join(f"{n.name}: {', '.join(n.problems) or 'NotReady'}" for n in bad),
    )


async def enrich_rollout(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    api = env.api_deployment
    dep = await k8s.get_deployment(env.require_kubernetes(), api)
    age = (datetime.now(UTC) - dep.last_rollout_at).total_seconds() if dep.last_rollout_at else None
    recent = age is not None and age <= policy.mitigation.recent_rollout_s
    facts: dict[str, Any] = {"recent_rollout": recent, "api_revision": dep.revision, "api_replicas": dep.replicas}
    detail = f"last rollout {int(age) if age is not None else '?'}s ago ({dep.change_cause or '-'})"
    # the release that last passed deploy-and-validate's gates: a rollback goes there rather than to "the previous
    # revision", which after two bad releases (or a pruned ReplicaSet) is not a release anyone validated
    good = await k8s.read_last_known_good(env.require_kubernetes(), api)
    if good is not None and good.images != dep.images:
        facts["last_known_good_images"] = good.images
        detail += f"; last known good {', '.join(good.images)} ({good.time:%Y-%m-%d %H:%M}Z)"
    return Finding(
        enricher="rollout",
        ok=True,
        title=f"{api} revision {dep.revision}, {', '.join(dep.images)}",
        detail=detail,
        facts=facts,
    )


async def enrich_error_logs(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    logs = await k8s.deployment_logs(
        env.require_kubernetes(), env.api_deployment, all_pods=True, since_seconds=1800, tail_lines=500
    )
    errors = k8s.grep_lines(logs.lines, r"ERROR|FATAL")
    return Finding(
        enricher="error_logs",
        ok=not errors,
        title=f"{len(errors)} ERROR line(s) in the last 30 min",
        detail="\n".join(errors[-5:])[:1500],
        facts={"error_log_lines": len(errors)},
    )


async def enrich_database(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    p = await check_postgres(env.postgres)
    return Finding(
        enricher="database",
        ok=True,
        title=f"PostgreSQL {p.server_version}",
        detail=f"connections by state {p.connections_by_state}",
    )


async def enrich_redis(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    r = await check_redis(env.redis)
    return Finding(
        enricher="redis",
        ok=r.ping_ms < policy.thresholds.redis_ping_ms,
        title=f"Redis ping {r.ping_ms} ms",
        detail=r.address,
    )


async def enrich_redis_latency(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    """The seed's ``redis-cli --latency-history`` for a slow platform: PING round trips for a moment (at most
    :data:`REDIS_LATENCY_S`), judged on the diagnostics policy's ``latency.max_p99_ms`` (what redis-diagnostics
    judges by)."""
    spec = load_diagnostics_policy().redis.latency
    sample = await sample_latency(
        env.redis, spec.model_copy(update={"duration_s": min(spec.duration_s, REDIS_LATENCY_S)})
    )
    p99 = sample.p99_ms
    return Finding(
        enricher="redis_latency",
        ok=p99 is not None and p99 <= spec.max_p99_ms,
        title=f"Redis latency p99 {_figure(p99, ' ms')} over {sample.samples} PINGs",
        detail=f"min {_figure(sample.min_ms)} avg {_figure(sample.avg_ms)} max {_figure(sample.max_ms)} ms "
        f"(healthy at most p99 {spec.max_p99_ms} ms)",
        facts={"redis_latency_p99_ms": p99},
    )


async def enrich_provider_latency(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    """Response time per provider (the models' own figures, ``/api/v1/models``): which provider is slow. A provider
    whose models answer slower on average than the policy's p95 limit is a slow one."""
    limit_ms = policy.thresholds.response_time_p95_s * 1000
    by_provider: dict[str, list[tuple[float, str]]] = {}
    for model in await list_models(env.platform):
        if model.response_time is not None:
            by_provider.setdefault(model.provider, []).append((model.response_time, model.name))
    figures = {
        provider: (sum(ms for ms, _ in times) / len(times), max(times))
        for provider, times in sorted(by_provider.items())
    }
    slow = sorted(p for p, (mean, _) in figures.items() if mean > limit_ms)
    slowest = max(figures, key=lambda p: figures[p][0]) if figures else None
    return Finding(
        enricher="provider_latency",
        ok=not slow,
        title=f"{len(slow)} slow provider(s): {', '.join(slow) or '-'}"
        + (f"; slowest {slowest} {figures[slowest][0]:.0f} ms" if slowest else ""),
        detail="; ".join(
            f"{p}: mean {mean:.0f} ms, max {top:.0f} ms ({model})" for p, (mean, (top, model)) in figures.items()
        )
        + f" (slow over {limit_ms:.0f} ms)",
        facts={"slow_providers": slow},
    )


async def enrich_ingress(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
    ingresses = await k8s.list_ingresses(env.require_kubernetes())
    return Finding(
        enricher="ingress",
        ok=bool(ingresses),
        title=f"{len(ingresses)} ingress(es)",
        detail="; ".join(f"{i.name}: {', '.join(i.hosts)}" for i in ingresses),
    )


PLATFORM_ENRICHERS: list[Enricher] = [enrich_health, enrich_metrics, enrich_models, enrich_database, enrich_redis]
KUBERNETES_ENRICHERS: list[Enricher] = [
    enrich_pods,
    enrich_events,
    enrich_nodes,
    enrich_rollout,
    enrich_error_logs,
    enrich_ingress,
]
#: what one alert adds to every triage's: a slow platform looks at Redis's latency and at each provider's
ALERT_ENRICHERS: dict[str, list[Enricher]] = {"HighResponseTime": [enrich_redis_latency, enrich_provider_latency]}
#: what "resolved" re-reads: the figures the alert is about
SMOKE_ENRICHERS: list[Enricher] = [enrich_health, enrich_metrics, enrich_models]


async def run_enrichers(env: RunbookEnvironment, policy: TriagePolicy, enrichers: list[Enricher]) -> list[Finding]:
    """Run ``enrichers`` concurrently; a failing or slow one becomes a failing finding (its error redacted)."""

    async def one(enricher: Enricher) -> Finding:
        name = enricher.__name__.removeprefix("enrich_")
        try:
            return await asyncio.wait_for(enricher(env, policy), ENRICHER_TIMEOUT_S)
        except TimeoutError:
            return Finding(enricher=name, ok=False, title=f"{name} check timed out", detail=f"{ENRICHER_TIMEOUT_S}s")
        except Exception as err:  # noqa: BLE001 - a failing diagnostic is itself a finding
            return Finding(enricher=name, ok=False, title=f"{name} check failed", detail=describe_error(err))

    return list(await asyncio.gather(*(one(e) for e in enrichers)))


def facts_of(findings: list[Finding], alert_name: str, alert_severity: str | None) -> dict[str, Any]:
    """The facts the policy's severity rules and the mitigation planner read, from the alert and the findings."""
    facts: dict[str, Any] = {"alert_name": alert_name, "alert_severity": alert_severity}
    for finding in findings:
        facts.update(finding.facts)
    return facts


async def diagnose(env: RunbookEnvironment, policy: TriagePolicy, alert_name: str = "") -> list[Finding]:
    """Every enricher the environment has systems for (Kubernetes ones only with a cluster), and the alert's own
    (:data:`ALERT_ENRICHERS`)."""
    enrichers = PLATFORM_ENRICHERS + (KUBERNETES_ENRICHERS if env.kubernetes is not None else [])
    return await run_enrichers(env, policy, enrichers + ALERT_ENRICHERS.get(alert_name, []))


async def verify(env: RunbookEnvironment, policy: TriagePolicy) -> list[Finding]:
    """Re-read the figures the incident is about (health, metrics, models); all ok means resolved."""
    return await run_enrichers(env, policy, SMOKE_ENRICHERS)
