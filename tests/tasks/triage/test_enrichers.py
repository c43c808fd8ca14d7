"""The enrichers' contract: concurrent, a failing or slow one becomes a finding, judged on the policy's numbers."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from blocks.environment import RunbookEnvironment
from kernel.redact import MASK
from tasks.platform import PlatformMetrics
from tasks.triage import enrichers
from tasks.triage.enrichers import Finding, enrich_metrics, facts_of, run_enrichers
from tasks.triage.policy import TriagePolicy, load_policy

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
    env = cast(RunbookEnvironment, type("Env", (), {"platform": None})())
    finding = await enrich_metrics(env, load_policy())
    assert finding.ok is ok
    assert finding.facts == figures | {k: figures[k] + v for k, v in over.items()}
