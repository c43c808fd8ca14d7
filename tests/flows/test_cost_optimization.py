"""cost-optimization on the session's sandbox: the fleet's normal traffic is within the policy's budget (nothing is
done); over it (the cost-spike fault: gpt-4 three times as dear), the seed's strategy is applied with its saving
projected before and measured after (the platform's costs, read back), and a daily cost alert is configured."""

from __future__ import annotations

import httpx
import pytest

from flows.cost_optimization import cost_optimization
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT


async def test_the_strategy_is_applied_and_its_saving_measured(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    url, headers = platform_admin
    within = await cost_optimization(environment=TEST_ENVIRONMENT, return_state=True)
    assert within.is_completed(), within.message
    assert (await within.result())["records"] == []  # type: ignore[union-attr]
    spike = {"expensive_models": ["gpt-4"]}  # sandbox/faults.py's cost-spike
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json=spike).raise_for_status()
    state = await cost_optimization(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    assert {r.kind: r.outcome for r in result["records"]} == {"cost_strategy": "applied", "cost_alert": "applied"}
    assert result["after"] < result["before"] and result["projected"] < result["before"]
    assert result["after"] == pytest.approx(result["projected"], rel=0.02)  # the projection is what happened
    costs = httpx.get(f"{url}/api/v1/analytics/costs", params={"period": "24h"}).json()["models"]
    measured = sum(m["total_cost"] for m in costs) / sum(m["requests"] for m in costs)
    assert measured == pytest.approx(result["after"], rel=0.01)
    audit = httpx.post(f"{url}/admin/audit/search", headers=headers, json={"hours": 1}).json()["events"]
    assert [e["action"] for e in audit][-2:] == ["optimization.cost_strategy", "alerts.cost"]
    checks = {f.check for f in result["findings"]}
    assert {"most expensive gpt-4", "most expensive claude-3-5-sonnet", "projected with the strategy"} <= checks
