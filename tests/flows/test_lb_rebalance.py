"""lb-rebalance on the session's sandbox: a weight that sends most of the traffic to one model is replaced by the
policy's weights, and the distribution the balancer reports changes accordingly. In production (approve) the form
lists the change; unticked, the weights stay as they were."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from flows.lb_rebalance import lb_rebalance
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import answer, approval_form, paused_run


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


async def test_the_approval_lists_the_change_and_unticked_the_weights_stay(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], production_environment: str
) -> None:
    url, headers = platform_admin
    httpx.patch(f"{url}/admin/load-balancer/weights", headers=headers, json={"gpt-4": 1.0}).raise_for_status()
    before = httpx.get(f"{url}/api/v1/load-balancer/config").json()["weights"]
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        lb_rebalance(environment=production_environment, incident=incident, dry_run=False, return_state=True)
    )
    try:
        flow_run = await paused_run("lb-rebalance", incident, run)
        fields = await approval_form(flow_run)
        assert set(fields) == {"set_weights load-balancer"}
        await answer(flow_run, fields, tick=set(), approver="dave")
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    assert [(r.kind, r.outcome, r.by) for r in result["records"]] == [("set_weights", "rejected", "dave")]
    assert httpx.get(f"{url}/api/v1/load-balancer/config").json()["weights"] == before
    assert distribution(url)["gpt-4"] > 0.5  # still skewed
