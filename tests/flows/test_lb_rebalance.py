"""lb-rebalance on the session's sandbox: a weight that sends most of the traffic to one model is replaced by the
policy's weights, and the distribution the balancer reports changes accordingly."""

from __future__ import annotations

import httpx

from flows.lb_rebalance import lb_rebalance
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT


def distribution(url: str) -> dict[str, float]:
    body: dict[str, float] = httpx.get(f"{url}/api/v1/load-balancer/stats").json()["model_distribution"]
    return body


async def test_a_skewed_weight_is_rebalanced(sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]) -> None:
    url, headers = platform_admin
    httpx.patch(f"{url}/admin/load-balancer/weights", headers=headers, json={"gpt-4": 1.0}).raise_for_status()
    assert distribution(url)["gpt-4"] > 0.5
    state = await lb_rebalance(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    [record] = result["records"]
    assert (record.kind, record.outcome) == ("set_weights", "applied") and record.verified is True
    weights = httpx.get(f"{url}/api/v1/load-balancer/config").json()["weights"]
    assert weights["gpt-4"] == 0.3 and weights["deepseek"] == 0.1
    after = distribution(url)
    assert max(after.values()) <= 0.5 and after["gpt-4"] < 0.3  # the balancer spreads it again

    # balanced now: a second run plans nothing
    again = await (await lb_rebalance(environment=TEST_ENVIRONMENT, return_state=True)).result()  # type: ignore[union-attr]
    assert again["records"] == []
