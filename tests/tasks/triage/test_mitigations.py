"""Planning and deciding mitigations: the preconditions of each action, on the policy's thresholds."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.triage.mitigations import (
    MitigationRecord,
    PlannedAction,
    approval_description,
    carry_out,
    decide,
    plan_actions,
)
from tasks.triage.policy import load_policy

API = "my-api"  # the environment's api_deployment, not a constant
HEALTHY: dict[str, Any] = {
    "health_ok": True,
    "error_rate": 0.001,
    "response_time_p95_s": 0.5,
    "crashlooping_pods": 0,
    "error_log_lines": 0,
    "recent_rollout": False,
    "api_revision": 3,
    "api_replicas": 3,
    "down_models": [],
}


def plan(alert: str, **facts: Any) -> list[tuple[str, str, dict[str, Any]]]:
    planned = plan_actions(load_policy(), alert, {**HEALTHY, **facts}, API, incident_id="inc-1")
    return [(p.action, p.target, p.params) for p in planned]


def test_a_broken_fresh_release_is_rolled_back_and_nothing_else() -> None:
    assert plan("HighErrorRate", crashlooping_pods=2, recent_rollout=True, down_models=["qwen"]) == [
        ("rollback", API, {"timeout_s": 300})
    ]
    assert plan("HighErrorRate", error_log_lines=4, recent_rollout=True, api_revision=1) == []  # nothing to go back to
    assert plan("HighErrorRate", crashlooping_pods=2, recent_rollout=False) == []


def test_a_rollback_goes_to_the_last_known_good_release_when_one_is_recorded() -> None:
    good = ["ghcr.io/genspark/ai-multimodel-api:v2.6.0"]
    facts = {"crashlooping_pods": 2, "recent_rollout": True, "last_known_good_images": good}
    assert plan("HighErrorRate", **facts) == [("rollback", API, {"timeout_s": 300, "to_images": good})]
    # a first release with a validated one recorded still has somewhere to go
    assert plan("HighErrorRate", **facts, api_revision=1) == [("rollback", API, {"timeout_s": 300, "to_images": good})]
    [rollback] = plan_actions(load_policy(), "HighErrorRate", {**HEALTHY, **facts}, API, incident_id="inc-1")
    assert "last known good release (ghcr.io/genspark/ai-multimodel-api:v2.6.0)" in rollback.reason


def test_service_down_without_a_rollout_is_restarted() -> None:
    assert plan("ServiceDown", health_ok=False) == [("restart", API, {})]


def test_models_down_get_their_circuit_breakers_with_the_policy_fallback() -> None:
    m = load_policy().mitigation
    params = {"duration_s": m.circuit_breaker_duration_s, "fallback_model": m.fallback_model}
    assert plan("HighErrorRate", down_models=["gemini-pro", "qwen"]) == [
        ("open_circuit_breaker", "gemini-pro", params),
        ("open_circuit_breaker", "qwen", params),
    ]


def test_model_down_is_left_to_model_unavailable() -> None:
    """ModelDown starts model-unavailable (prefect.yaml), which reconnects the model, then falls back: the triage
    plans nothing of its own, so nothing acts on the model twice."""
    assert plan("ModelDown", down_models=["gemini-pro"]) == []


def test_scale_out_on_the_policy_thresholds() -> None:
    policy = load_policy()
    limits, replicas = policy.thresholds, policy.mitigation.scale_out_replicas
    scaled = [("scale_out", API, {"replicas": replicas, "incident": "inc-1"})]
    assert plan("HighResponseTime", response_time_p95_s=limits.response_time_p95_s) == []  # at the limit: healthy
    assert plan("HighResponseTime", response_time_p95_s=limits.response_time_p95_s + 0.1) == scaled
    assert plan("HighResponseTime", error_rate=limits.severe_error_rate) == []
    assert plan("HighResponseTime", error_rate=limits.severe_error_rate + 0.01) == scaled
    assert plan("HighResponseTime", response_time_p95_s=9, api_replicas=replicas) == []  # already there
    assert plan("HighResponseTime", response_time_p95_s=9, crashlooping_pods=1) == []  # more pods would crash too


async def test_decide_never_pauses_without_need() -> None:
    planned = PlannedAction(action="restart", target=API)
    for mode, auto_approve in [("auto", False), ("observe", False), ("approve", True)]:  # observing asks nobody
        record = await decide(
            planned,
            "inc-1",
            mode,
            auto_approve=auto_approve,
            approval_timeout_s=1,
            what="P2 X",  # type: ignore[arg-type]
        )
        assert (record.outcome, record.key, record.by) == ("dry-run", "inc-1:restart:my-api", "incident-triage")


@pytest.mark.parametrize("outcome", ["dry-run", "rejected"])
async def test_carry_out_applies_nothing_in_a_dry_run_or_when_rejected(outcome: str) -> None:
    planned = PlannedAction(action="scale_out", target=API, params={"replicas": 10})
    record = MitigationRecord(action="scale_out", target=API, key=planned.key("inc-1"), outcome=outcome)
    done = await carry_out("no-such-environment", planned, record, observe=True)
    assert done.outcome == outcome
    if outcome == "dry-run":
        assert done.detail == "would scale_out my-api with {'replicas': 10}"


def test_the_approval_form_lists_the_action_with_its_reason() -> None:
    facts = {**HEALTHY, "crashlooping_pods": 2, "recent_rollout": True}
    [rollback] = plan_actions(load_policy(), "HighErrorRate", facts, API, incident_id="inc-1")
    text = approval_description(rollback, "P1 HighErrorRate", 600)
    assert "**rollback** on `my-api`" in text and "revision 3" in text and "2 pods crash-looping" in text
    assert "`timeout_s=300`" in text and "600s" in text
