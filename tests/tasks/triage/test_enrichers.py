"""The enrichers' contract: concurrent, a failing or slow one becomes a finding, judged on the policy's numbers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from blocks.environment import RunbookEnvironment
from blocks.prometheus import PrometheusServer
from kernel.redact import MASK
from tasks.platform import PlatformMetrics
from tasks.triage import enrichers
from tasks.triage.enrichers import Finding, enrich_metrics, facts_of, run_enrichers
from tasks.triage.policy import Measurements, TriagePolicy, load_policy
from tests.prometheus_server import prometheus_scraping_a_service

ENV = cast(RunbookEnvironment, object())  # the enrichers below touch no system


async def test_a_failing_or_slow_enricher_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enrichers, "ENRICHER_TIMEOUT_S", 0.2)

    async def enrich_fine(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
        return Finding(enricher="fine", ok=True, title="fine", facts={"x": 1})

    async def enrich_broken(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
        raise RuntimeError("cannot connect: postgresql://runbooks:hunter2hunter2@db/app")

    async def enrich_stuck(env: RunbookEnvironment, policy: TriagePolicy) -> Finding:
        await asyncio.sleep(10)
        raise AssertionError("never")

    fine, broken, stuck = await run_enrichers(ENV, load_policy(), [enrich_fine, enrich_broken, enrich_stuck])
    assert fine.ok and fine.facts == {"x": 1}
    assert (broken.enricher, broken.ok, broken.title) == ("broken", False, "broken check failed")
    assert "hunter2hunter2" not in broken.detail and MASK in broken.detail  # what Slack will see is redacted
    assert (stuck.enricher, stuck.ok, stuck.title) == ("stuck", False, "stuck check timed out")


def test_facts_of_merges_the_findings() -> None:
    findings = [
        Finding(enricher="a", ok=True, title="", facts={"error_rate": 0.2}),
        Finding(enricher="b", ok=True, title="", facts={"models_down": 1}),
    ]
    assert facts_of(findings, "HighErrorRate", "critical") == {
        "alert_name": "HighErrorRate",
        "alert_severity": "critical",
        "error_rate": 0.2,
        "models_down": 1,
    }


@pytest.mark.parametrize(
    ("over", "ok"), [({}, True), ({"error_rate": 0.001}, False), ({"response_time_p95_s": 0.001}, False)]
)
async def test_metrics_are_judged_on_the_policy_thresholds(
    monkeypatch: pytest.MonkeyPatch, over: dict[str, float], ok: bool
) -> None:
    limits = load_policy().thresholds
    figures = {"error_rate": limits.error_rate, "response_time_p95_s": limits.response_time_p95_s}
    metrics = PlatformMetrics(**{k: v + over.get(k, 0) for k, v in figures.items()})

    async def fetch(platform: Any) -> PlatformMetrics:
        return metrics

    monkeypatch.setattr(enrichers, "fetch_metrics", fetch)
    env = cast(RunbookEnvironment, type("Env", (), {"platform": None, "prometheus": None})())
    finding = await enrich_metrics(env, load_policy())
    assert finding.ok is ok
    assert finding.facts.pop("metrics_source") == "/metrics"
    assert finding.facts == figures | {k: figures[k] + v for k, v in over.items()}


@pytest.mark.usefixtures("prefect_harness")
async def test_metrics_come_from_prometheus_when_the_environment_has_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def no_metrics(platform: Any) -> PlatformMetrics:
        raise AssertionError("read /metrics although Prometheus has the figures")

    monkeypatch.setattr(enrichers, "fetch_metrics", no_metrics)
    with prometheus_scraping_a_service(tmp_path) as prometheus:
        env = cast(RunbookEnvironment, type("Env", (), {"platform": None, "prometheus": prometheus})())
        finding = await enrich_metrics(env, load_policy())
    # the service answers 5 % of its requests with a 5xx, and its p95 lies between 0.5 and 1 s
    assert finding.facts["error_rate"] == pytest.approx(5 / 105, rel=0.02)
    assert 0.5 < finding.facts["response_time_p95_s"] <= 1.0
    assert finding.facts["metrics_source"].startswith("Prometheus")
    assert finding.ok is False  # 5 % is over the policy's 1 %


@pytest.mark.usefixtures("prefect_harness")
async def test_no_data_in_prometheus_falls_back_to_metrics_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def fetch(platform: Any) -> PlatformMetrics:
        return PlatformMetrics(error_rate=0.0, response_time_p95_s=0.2)

    monkeypatch.setattr(enrichers, "fetch_metrics", fetch)
    policy = load_policy()
    policy.measurements = Measurements(error_rate="sum(rate(nobody_total[1m]))", response_time_p95_s="absent(up)")
    with prometheus_scraping_a_service(tmp_path) as prometheus:
        env = cast(RunbookEnvironment, type("Env", (), {"platform": None, "prometheus": prometheus})())
        finding = await enrich_metrics(env, policy)
    assert finding.ok and finding.facts["error_rate"] == 0.0
    assert "has no data" in finding.facts["metrics_source"]


@pytest.mark.usefixtures("prefect_harness")
async def test_prometheus_down_falls_back_to_metrics_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fetch(platform: Any) -> PlatformMetrics:
        return PlatformMetrics(error_rate=0.5, response_time_p95_s=0.2)

    monkeypatch.setattr(enrichers, "fetch_metrics", fetch)
    down = PrometheusServer(url="http://127.0.0.1:9")
    env = cast(RunbookEnvironment, type("Env", (), {"platform": None, "prometheus": down})())
    finding = await enrich_metrics(env, load_policy())
    assert finding.ok is False and finding.facts["error_rate"] == 0.5
    assert "failed" in finding.facts["metrics_source"] and "cannot reach Prometheus" in finding.facts["metrics_source"]


async def test_a_slow_platform_looks_at_each_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """HighResponseTime's per-provider latency: the mean of the models' own response times, judged on the p95 limit."""
    from tasks.platform import ModelStatus

    async def models(platform: Any) -> list[ModelStatus]:
        rows = [("gpt-4", "openai", 3200.0), ("gpt-3.5-turbo", "openai", 2900.0), ("claude", "anthropic", 400.0)]
        return [ModelStatus(name=n, provider=p, status="healthy", response_time=ms) for n, p, ms in rows]

    monkeypatch.setattr(enrichers, "list_models", models)
    env = cast(RunbookEnvironment, type("Env", (), {"platform": None})())
    finding = await enrichers.enrich_provider_latency(env, load_policy())
    assert not finding.ok and finding.facts == {"slow_providers": ["openai"]}
    assert "openai: mean 3050 ms, max 3200 ms (gpt-4)" in finding.detail and "anthropic: mean 400 ms" in finding.detail


async def test_only_high_response_time_adds_the_latency_enrichers(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: dict[str, list[str]] = {}

    async def record(env: Any, policy: Any, chosen: list[Any]) -> list[Finding]:
        ran[alert] = [e.__name__ for e in chosen]
        return []

    monkeypatch.setattr(enrichers, "run_enrichers", record)
    env = cast(RunbookEnvironment, type("Env", (), {"kubernetes": None})())
    for alert in ("HighResponseTime", "ModelDown"):
        await enrichers.diagnose(env, load_policy(), alert)
    added = {"enrich_redis_latency", "enrich_provider_latency"}
    assert added <= set(ran["HighResponseTime"]) and not added & set(ran["ModelDown"])


@pytest.mark.usefixtures("prefect_harness")
async def test_redis_latency_is_sampled_and_judged_on_the_diagnostics_policy(
    spare_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.diagnostics.policy import load_policy as load_diagnostics_policy

    monkeypatch.setattr(enrichers, "REDIS_LATENCY_S", 0.3)
    env = cast(RunbookEnvironment, type("Env", (), {"redis": spare_redis})())
    finding = await enrichers.enrich_redis_latency(env, load_policy())
    limit = load_diagnostics_policy().redis.latency.max_p99_ms
    p99 = finding.facts["redis_latency_p99_ms"]
    assert p99 is not None and p99 > 0 and finding.ok is (p99 <= limit) and "PINGs" in finding.title

    strict = load_diagnostics_policy()
    strict.redis.latency.max_p99_ms = 1e-6  # no round trip is that fast: judged slow
    monkeypatch.setattr(enrichers, "load_diagnostics_policy", lambda: strict)
    assert not (await enrichers.enrich_redis_latency(env, load_policy())).ok
