"""security-suspicious-usage on the session's sandbox: a leaked key's traffic puts its user over the policy's 1,000
requests (the API pods' logs show its flagged prompts by address); the user is throttled (read back from the
platform's rate limits), the others are not, until revert-temporary-actions lifts the throttle at its (shortened) end
(and ``runbooks actions`` no longer lists it). In production (approve) the form lists the throttle; unticked, the
user is not throttled."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from flows.revert_actions import revert_temporary_actions
from flows.security_suspicious_usage import security_suspicious_usage
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import answer, approval_form, findings_table, paused_run, runbooks_actions
from tests.flows.conftest import received


async def test_the_user_behind_a_traffic_spike_is_throttled(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str, capsys: pytest.CaptureFixture[str]
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
    # the API pods' logs, read through the Kubernetes tasks: the seed's words, counted by address
    assert int(checks["API log lines malware|hack|exploit|vulnerability"].figure) > 0
    table = await findings_table("security-suspicious-usage", TEST_ENVIRONMENT)  # the artifact, as the UI shows it
    by_address = [row for check, row in table.items() if check.startswith("API log 198.51.100.")]
    assert by_address and all(int(row["figure"].split()[0]) > 0 for row in by_address)
    throttles = httpx.get(f"{url}/api/v1/security/rate-limits").json()["throttled_users"]
    assert [(t["user_id"], t["rate_limit"]) for t in throttles] == [(spiking["user_id"], 10)]
    [slack] = received(receivers_url, "slack")
    assert slack["body"]["channel"] == "#ai-multimodel-security" and "Security report" in slack["body"]["text"]
    assert f"throttle_user {spiking['user_id']}" in await runbooks_actions(TEST_ENVIRONMENT, capsys)

    while time.time() <= record.expires_at:  # the shortened throttle ends
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    [lifted] = [r for r in await state.result() if r.target == spiking["user_id"]]  # type: ignore[union-attr]
    assert (lifted.kind, lifted.outcome, lifted.verified) == ("throttle_user", "reverted", True)
    assert httpx.get(f"{url}/api/v1/security/rate-limits").json()["throttled_users"] == []
    assert f"throttle_user {spiking['user_id']}" not in await runbooks_actions(TEST_ENVIRONMENT, capsys)


async def test_the_approval_lists_the_throttle_and_unticked_the_user_is_not_throttled(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], production_environment: str
) -> None:
    url, headers = platform_admin
    spiking = httpx.get(f"{url}/api/v1/analytics/top-users").json()["users"][-1]
    leak = {"leaked_key_id": spiking["api_key_ids"][0]}
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json=leak).raise_for_status()
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        security_suspicious_usage(
            environment=production_environment, incident=incident, dry_run=False, return_state=True
        )
    )
    try:
        flow_run = await paused_run("security-suspicious-usage", incident, run)
        fields = await approval_form(flow_run)
        assert set(fields) == {f"throttle_user {spiking['user_id']}"}
        await answer(flow_run, fields, tick=set())
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    assert [(r.target, r.outcome, r.by) for r in result["records"]] == [(spiking["user_id"], "rejected", "alice")]
    assert httpx.get(f"{url}/api/v1/security/rate-limits").json()["throttled_users"] == []
