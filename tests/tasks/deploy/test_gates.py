"""The verdicts of the release checks: no data is inconclusive, never a pass; limits absolute and relative."""

from __future__ import annotations

import math

import pytest

from tasks.deploy.gates import Check, overall
from tasks.deploy.gates import judge_metric as judge
from tasks.deploy.policy import MetricGate
from tasks.deploy.rollout import image_with_tag
from tasks.triage.policy import load_policy

TRIAGE = load_policy()
ERRORS = MetricGate(name="error rate", measurement="error_rate", window_s=60, max="healthy", max_increase=0.005)
LATENCY = MetricGate(
    name="latency p95", measurement="response_time_p95_s", window_s=60, max="healthy", max_relative_increase=0.10
)


@pytest.mark.parametrize(
    ("gate", "baseline", "value", "verdict"),
    [
        (ERRORS, 0.004, 0.005, "pass"),
        (ERRORS, 0.004, 0.0095, "fail"),  # under the healthy 1 %, but 0.55 points over the baseline
        (ERRORS, 0.004, 0.30, "fail"),
        (ERRORS, 0.004, None, "inconclusive"),  # nobody measured the release
        (ERRORS, 0.004, math.nan, "inconclusive"),  # 0/0: a rate over no requests
        (ERRORS, None, 0.004, "inconclusive"),  # no baseline: the relative limit cannot be judged
        (ERRORS, None, 0.5, "fail"),  # ... but over the absolute limit is a failure whatever the baseline
        (LATENCY, 1.0, 1.09, "pass"),
        (LATENCY, 1.0, 1.11, "fail"),  # +11 % > +10 %
        (LATENCY, 1.0, 3.5, "fail"),
        (LATENCY, 0.0, 0.2, "fail"),  # from a baseline of 0
    ],
)
def test_metric_gate_verdicts(gate: MetricGate, baseline: float | None, value: float | None, verdict: str) -> None:
    check = judge(gate, TRIAGE, baseline, value)
    assert check.verdict == verdict, check
    assert "over 60s" in check.threshold and check.value


def test_the_table_names_values_and_thresholds() -> None:
    check = judge(ERRORS, TRIAGE, 0.004, 0.3)
    assert check.value == "30.000% (baseline 0.400%)"
    assert check.threshold == "≤ 1.000%, ≤ baseline + 0.500% over 60s"
    assert check.detail == "over the absolute limit (≤ 1.000%)"


def test_healthy_limits_are_the_triage_policys() -> None:
    assert ERRORS.absolute_max(TRIAGE) == TRIAGE.thresholds.error_rate
    assert LATENCY.absolute_max(TRIAGE) == TRIAGE.thresholds.response_time_p95_s
    assert "[45s]" in LATENCY.query(TRIAGE, 45) and "[2m]" not in LATENCY.query(TRIAGE, 45)


def test_overall_verdict() -> None:
    def c(verdict: str) -> Check:
        return Check(phase="validation", name=verdict, value="", threshold="", verdict=verdict)  # type: ignore[arg-type]

    assert overall([c("pass"), c("pass")]) == "pass"
    assert overall([c("pass"), c("inconclusive")]) == "inconclusive"
    assert overall([c("inconclusive"), c("fail")]) == "fail"
    assert overall([]) == "inconclusive"  # nothing checked is not a pass


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ghcr.io/genspark/ai-multimodel-api:v2.5.0", "ghcr.io/genspark/ai-multimodel-api:v2.6.0"),
        ("registry:5000/team/app:v1", "registry:5000/team/app:v2.6.0"),
        ("registry:5000/team/app", "registry:5000/team/app:v2.6.0"),
        ("ghcr.io/x/app@sha256:" + "a" * 64, "ghcr.io/x/app:v2.6.0"),
    ],
)
def test_image_with_tag(image: str, expected: str) -> None:
    assert image_with_tag(image, "v2.6.0") == expected
