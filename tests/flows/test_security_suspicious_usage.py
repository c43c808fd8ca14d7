"""security-suspicious-usage on the session's sandbox: a leaked key's traffic puts its user over the policy's 1,000
requests; the user is throttled (read back from the platform's rate limits), the others are not, until
revert-temporary-actions lifts the throttle at its (shortened) end."""

from __future__ import annotations

import asyncio
import time

import httpx

from flows.revert_actions import revert_temporary_actions
from flows.security_suspicious_usage import security_suspicious_usage
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.conftest import received


async def test_the_user_behind_a_traffic_spike_is_throttled(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str
) -> None:
    url, headers = platform_admin
    users = httpx.get(f"{url}/api/v1/analytics/top-users").json()["users"]
    assert all(u["requests"] <= 1000 for u in users)  # nobody over the threshold before the fault
    spiking = users[-1]
    leak = {"leaked_key_id": spiking["api_key_ids"][0]}
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json=leak).raise_for_status()
    state = await security_suspicious_usage(environment=TEST_ENVIRONMENT, throttle_s=10, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    [record] = result["records"]
    assert (record.kind, record.target, record.outcome, record.verified) == (
        "throttle_user",
        spiking["user_id"],
        "applied",
        True,
    )
    assert record.expires_at is not None and record.reversal == {
        "kind": "unthrottle_user",
        "applied": {"rate_limit": 10, "duration_s": 310},  # the platform's own TTL: 300 s more
    }
    checks = {f.check: f for f in result["findings"]}
    assert checks["anomaly api_key_traffic_spike"].figure == spiking["api_key_ids"][0]
    throttles = httpx.get(f"{url}/api/v1/security/rate-limits").json()["throttled_users"]
    assert [(t["user_id"], t["rate_limit"]) for t in throttles] == [(spiking["user_id"], 10)]
    [slack] = received(receivers_url, "slack")
    assert slack["body"]["channel"] == "#ai-multimodel-security" and "Security report" in slack["body"]["text"]

    while time.time() <= record.expires_at:  # the shortened throttle ends
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    [lifted] = [r for r in await state.result() if r.target == spiking["user_id"]]  # type: ignore[union-attr]
    assert (lifted.kind, lifted.outcome, lifted.verified) == ("throttle_user", "reverted", True)
    assert httpx.get(f"{url}/api/v1/security/rate-limits").json()["throttled_users"] == []
