"""The deploy policy file loads, and a bad one fails with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kernel.errors import PolicyError
from tasks.deploy.policy import POLICY_PATH, load_deploy_policy


def test_the_shipped_policy_loads() -> None:
    policy = load_deploy_policy()
    assert policy.deployments == {"api": "ai-multimodel-api", "frontend": "ai-multimodel-frontend"}
    assert policy.rollout.timeout_s == 600  # the seed's --timeout=600s as the last resort
    assert (policy.load.rate_per_s, policy.load.duration_s) == (20, 120)
    assert {g.measurement for g in policy.gates} == {"error_rate", "response_time_p95_s"}
    assert "CrashLoopBackOff" in policy.rollout.failing_reasons


def test_a_gate_without_a_limit_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(POLICY_PATH.read_text())
    raw["gates"][0] = {"name": "error rate", "measurement": "error_rate", "window_s": 60}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PolicyError, match="gates.0: Value error, gate 'error rate' has no limit"):
        load_deploy_policy(path)


def test_an_unknown_field_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load(POLICY_PATH.read_text())
    raw["load"]["rps"] = 5
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PolicyError, match=r"load\.rps: Extra inputs are not permitted"):
        load_deploy_policy(path)
