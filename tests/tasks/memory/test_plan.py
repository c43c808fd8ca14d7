"""The memory policy and high-memory's planning (pure: no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import PolicyError
from tasks.memory.mitigations import GI, MemoryTarget, next_limit, plan, quantity
from tasks.memory.policy import POLICY_PATH, load_policy


def target(used_gi: float, limit: str | None = "4Gi", **kw: object) -> MemoryTarget:
    values: dict[str, object] = {
        "pod": "api-1",
        "namespace": "production",
        "container": "api",
        "deployment": "ai-multimodel-api",
        "owner": "ReplicaSet/ai-multimodel-api-1",
        "working_set_bytes": int(used_gi * GI),
        "limit": limit,
    }
    return MemoryTarget.model_validate(values | kw)


def test_the_policy_file_loads_and_a_bad_one_names_the_field(tmp_path: Path) -> None:
    policy = load_policy()
    assert policy.limit.cap_bytes == 6 * GI and policy.limit.step_bytes == GI  # the seed's patch to 6Gi
    assert policy.modes.for_kind("sandbox") == "auto" and policy.modes.for_kind("production") == "approve"
    bad = tmp_path / "policy.yaml"
    bad.write_text(POLICY_PATH.read_text().replace("cap: 6Gi", "cap: lots"))
    with pytest.raises(PolicyError, match="limit.cap"):
        load_policy(bad)


def test_a_step_never_crosses_the_cap_unasked() -> None:
    assert next_limit(4 * GI, GI, 6 * GI).model_dump() == {
        "current": 4 * GI, "new": 5 * GI, "beyond_cap": False, "clamped": False
    }  # fmt: skip
    clamped = next_limit(int(5.5 * GI), GI, 6 * GI)
    assert (clamped.new, clamped.beyond_cap, clamped.clamped) == (6 * GI, False, True)
    at_cap = next_limit(6 * GI, GI, 6 * GI)
    assert (at_cap.new, at_cap.beyond_cap) == (7 * GI, True)  # only with an approval
    assert quantity(5 * GI) == "5Gi" and quantity(4608 * 2**20) == "4608Mi"


def test_plan_deletes_near_the_limit_and_raises_only_when_oomkilled_or_asked() -> None:
    policy = load_policy()
    assert plan(target(2.0), policy, raise_limit=False) == []  # 50%: nothing to do
    [delete] = plan(target(3.8), policy, raise_limit=False)  # 95%
    assert delete.kind == "delete-pod" and delete.record.decision is None and "95%" in delete.record.reason
    oom = plan(target(1.0, last_termination_reason="OOMKilled", restarts=4), policy, raise_limit=False)
    assert [p.kind for p in oom] == ["delete-pod", "raise-limit"]
    assert oom[1].limit is not None and oom[1].limit.new == 5 * GI and not oom[1].always_ask
    [at_cap] = plan(target(1.0, limit="6Gi"), policy, raise_limit=True)
    assert at_cap.always_ask and at_cap.record.data == {"from": "6Gi", "to": "7Gi", "cap": "6Gi"}


def test_plan_refuses_what_cannot_be_done() -> None:
    policy = load_policy()
    [orphan] = plan(target(3.9, deployment=None, owner=None), policy, raise_limit=False)
    assert orphan.record.decision == "refused" and "nothing would replace it" in orphan.record.detail
    [no_limit] = plan(target(3.9, limit=None), policy, raise_limit=True)
    assert no_limit.kind == "raise-limit" and no_limit.record.decision == "refused"
