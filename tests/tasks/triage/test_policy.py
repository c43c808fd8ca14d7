"""The seed's severity classification, as data: each level is reached by the facts the seed names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.triage.policy import POLICY_PATH, load_policy

BASE = {
    "health_ok": True,
    "error_rate": 0.001,
    "response_time_p95_s": 0.5,
    "models_down": 0,
    "crashlooping_pods": 0,
    "api_available_ratio": 1.0,
    "alert_severity": "info",
    "alert_name": "Something",
    "recent_rollout": False,
}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"health_ok": False}, "P0"),  # system completely down
        ({"api_available_ratio": 0.0}, "P0"),
        ({"alert_name": "SecurityBreach"}, "P0"),  # active security breach
        ({"error_rate": 0.15}, "P1"),  # high error percentage (>10%)
        ({"crashlooping_pods": 2, "api_available_ratio": 0.66}, "P1"),
        ({"response_time_p95_s": 4.0}, "P1"),  # severe performance problems
        ({"models_down": 1}, "P2"),  # functionality partially affected
        ({"error_rate": 0.05}, "P2"),  # intermittent errors
        ({"alert_severity": "warning"}, "P2"),
        ({}, "P3"),  # cosmetic / minor
    ],
)
def test_severity(facts: dict, expected: str) -> None:
    severity, why = load_policy().severity({**BASE, **facts})
    assert severity == expected, why
    assert why


def test_missing_facts_never_match() -> None:
    severity, _ = load_policy().severity({"alert_name": "X"})
    assert severity == "P3"


def test_escalation_matrix_and_mitigation_policy() -> None:
    policy = load_policy()
    assert policy.escalation["P0"].contacts == ["On-call Engineer", "Tech Lead", "Engineering Manager"]
    assert policy.escalation["P1"].slack == "incidents" and policy.escalation["P3"].pagerduty is None
    assert not policy.mitigation.for_severity("P3").allowed
    assert policy.branch("HighResponseTime").mitigations == ["scale_out"]
    assert policy.branch("Unknown").mitigations == policy.alerts["default"].mitigations


def test_thresholds_are_the_severity_rules_numbers() -> None:
    """One source: the severity rules' error-rate and latency limits are the thresholds section's (YAML anchors)."""
    policy = load_policy()
    limits = policy.thresholds
    by_severity = {
        rule.severity: {c.fact: c.value for c in rule.any if c.op == ">" and isinstance(c.value, float)}
        for rule in policy.severity_rules
    }
    assert by_severity["P1"] == {
        "error_rate": limits.severe_error_rate,
        "response_time_p95_s": limits.severe_response_time_p95_s,
    }
    assert by_severity["P2"] == {"error_rate": limits.error_rate, "response_time_p95_s": limits.response_time_p95_s}
    # healthy (the health check passes, a triage calls it resolved) exactly up to the limit; a missing figure is ok
    assert limits.error_rate_ok(limits.error_rate) and not limits.error_rate_ok(limits.error_rate + 1e-9)
    assert limits.response_time_ok(limits.response_time_p95_s)
    assert not limits.response_time_ok(limits.response_time_p95_s + 1e-9)
    assert limits.error_rate_ok(None) and limits.response_time_ok(None)


def test_the_policy_is_read_at_each_run(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_PATH.read_text())
    assert load_policy(path).thresholds.error_rate == load_policy().thresholds.error_rate
    path.write_text(POLICY_PATH.read_text().replace("error_rate: &error_rate 0.01", "error_rate: &error_rate 0.02"))
    edited = load_policy(path)
    assert edited.thresholds.error_rate == 0.02
    assert edited.severity({"error_rate": 0.015}) == ("P3", ["no rule matched"])  # the P2 rule follows the anchor


def test_modes_per_environment_kind_and_severity() -> None:
    """The sandbox acts (P2 asks), staging and production ask, P3 only observes; an unknown kind asks."""
    policy = load_policy()
    assert [policy.mode("sandbox", s) for s in ("P0", "P1", "P2", "P3")] == ["auto", "auto", "auto", "observe"]
    for kind in ("staging", "production"):
        assert [policy.mode(kind, s) for s in ("P0", "P1", "P2", "P3")] == ["approve", "approve", "approve", "observe"]
    policy.modes.pop("staging")
    assert policy.mode("staging", "P0") == "approve"
