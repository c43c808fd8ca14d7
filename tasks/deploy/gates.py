"""The checks of a release, each with its value, its threshold and its verdict: pass, fail or inconclusive.

No data is inconclusive, never a pass (the anchors let releases through on missing data: fluxcd/flagger#1689,
#1035; keptn/keptn#6096; spinnaker/kayenta#377). Every check lands in one table (:func:`checks_table`), so the
reader sees which check decided and on what values (fluxcd/flagger#1147, #1304, #1810).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from blocks.kubernetes import KubernetesCluster
from blocks.prometheus import PrometheusServer
from kernel.retry import read_task
from tasks import kubernetes as k8s
from tasks.deploy.policy import LogGate, MetricGate
from tasks.prometheus import query_instant
from tasks.triage.policy import TriagePolicy

Verdict = Literal["pass", "fail", "inconclusive"]
Phase = Literal["preflight", "rollout", "validation"]


class Check(BaseModel):
    """One line of the release's table."""

    phase: Phase
    name: str
    value: str
    threshold: str
    verdict: Verdict
    detail: str = ""


def overall(checks: list[Check]) -> Verdict:
    """fail if any check failed, else inconclusive if any was, else pass (no check at all is inconclusive)."""
    verdicts = {c.verdict for c in checks}
    if "fail" in verdicts:
        return "fail"
    if "inconclusive" in verdicts or not checks:
        return "inconclusive"
    return "pass"


def checks_table(checks: list[Check]) -> list[dict[str, str]]:
    icon = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "❔ inconclusive"}
    return [
        {
            "phase": c.phase,
            "check": c.name,
            "value": c.value,
            "threshold": c.threshold,
            "verdict": icon[c.verdict],
            "detail": c.detail,
        }
        for c in checks
    ]


def _figure(value: float, measurement: str) -> str:
    return f"{value:.3%}" if measurement == "error_rate" else f"{value:.3f}s"


def judge_metric(gate: MetricGate, triage: TriagePolicy, baseline: float | None, value: float | None) -> Check:
    """The gate's verdict on ``value`` (after the rollout) against ``baseline`` (before it)."""
    limits: list[tuple[str, float]] = []
    absolute = gate.absolute_max(triage)
    if absolute is not None:
        limits.append((f"≤ {_figure(absolute, gate.measurement)}", absolute))
    relative: list[str] = []
    if gate.max_increase is not None:
        relative.append(f"≤ baseline + {_figure(gate.max_increase, gate.measurement)}")
    if gate.max_relative_increase is not None:
        relative.append(f"≤ baseline {gate.max_relative_increase:+.0%}")
    threshold = ", ".join([text for text, _ in limits] + relative) + f" over {gate.window_s}s"
    base_text = "no data" if baseline is None else _figure(baseline, gate.measurement)

    def check(verdict: Verdict, detail: str) -> Check:
        shown = "no data" if value is None else _figure(value, gate.measurement)
        return Check(
            phase="validation",
            name=gate.name,
            value=f"{shown} (baseline {base_text})",
            threshold=threshold,
            verdict=verdict,
            detail=detail,
        )

    if value is None or math.isnan(value):
        return check("inconclusive", "Prometheus returned no data after the rollout: nobody measured the release")
    for text, limit in limits:
        if value > limit:
            return check("fail", f"over the absolute limit ({text})")
    if relative:
        if baseline is None or math.isnan(baseline):
            return check("inconclusive", "no baseline before the rollout: the relative limit cannot be judged")
        if gate.max_increase is not None and value > baseline + gate.max_increase:
            return check("fail", f"rose by {_figure(value - baseline, gate.measurement)} over the baseline")
        if gate.max_relative_increase is not None:
            if baseline <= 0:
                if value > 0:
                    return check("fail", "rose from a baseline of 0")
            elif value > baseline * (1 + gate.max_relative_increase):
                return check("fail", f"rose by {value / baseline - 1:+.0%} over the baseline")
    return check("pass", "")


@read_task
async def measure_gate(
    prometheus: PrometheusServer, gate: MetricGate, triage: TriagePolicy, window_s: int | None = None
) -> float | None:
    """The gate's figure over its window ending now; None when Prometheus has no data for it."""
    result = await query_instant.fn(prometheus, gate.query(triage, window_s))
    return result.value()


@read_task
async def count_log_lines(
    cluster: KubernetesCluster, deployment: str, gate: LogGate, since_s: int, namespace: str | None = None
) -> Check:
    """The log gate on every pod of ``deployment``: lines matching the gate's pattern since the rollout began."""
    logs = await k8s.deployment_logs.fn(cluster, deployment, namespace, all_pods=True, since_seconds=max(1, since_s))
    matching = [line for pod in logs.pods for line in pod.grep(gate.pattern)]
    pods = len(logs.pods)
    verdict: Verdict = "inconclusive" if pods == 0 else ("fail" if len(matching) > gate.max_lines else "pass")
    return Check(
        phase="validation",
        name=f"{gate.name} ({deployment})",
        value=f"{len(matching)} line(s) in {pods} pod(s) over {since_s}s",
        threshold=f"≤ {gate.max_lines}",
        verdict=verdict,
        detail=(matching[0][:160] if matching else ("no pod to read" if pods == 0 else "")),
    )
