"""security-unauthorized-access on the session's sandbox: of two addresses sending unauthorized requests, the one
outside the allow-list is blocked (and stops producing events), the allow-listed one is not and the report says
why; revert-temporary-actions lifts the block at its (shortened) end, checked in the platform's rate limits."""

from __future__ import annotations

import asyncio
import time

import httpx

from flows.revert_actions import revert_temporary_actions
from flows.security_unauthorized_access import security_unauthorized_access
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.conftest import received

ATTACKER, OFFICE = "203.0.113.50", "10.1.2.3"  # the policy's allow-list holds 10.0.0.0/8


def unauthorized(url: str, ip: str) -> int:
    events = httpx.get(f"{url}/api/v1/security/events").json()["events"]
    return sum(1 for e in events if e["type"] == "unauthorized" and e["source_ip"] == ip)


def blocked(url: str) -> list[str]:
    return [b["ip"] for b in httpx.get(f"{url}/api/v1/security/rate-limits").json()["blocked_ips"]]


async def test_the_attacker_is_blocked_the_allow_listed_address_never_and_the_block_ends(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str
) -> None:
    url, headers = platform_admin
    faults = {"unauthorized_ips": [ATTACKER, OFFICE]}
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json=faults).raise_for_status()
    state = await security_unauthorized_access(environment=TEST_ENVIRONMENT, block_s=10, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    [record] = result["records"]
    assert (record.kind, record.target, record.outcome, record.verified) == ("block_ip", ATTACKER, "applied", True)
    assert result["spared"] == {OFFICE: "10.0.0.0/8"}
    assert f"{OFFICE} (in 10.0.0.0/8)" in result["report"]  # the report says why it was not blocked
    findings = {f.check: f for f in result["findings"]}
    assert findings[f"after block {ATTACKER}"].verdict == "ok"
    assert "API log lines UNAUTHORIZED|BLOCKED|THREAT" in findings  # read through the Kubernetes tasks

    # the platform, as an operator reads it: the attacker is blocked and quiet, the office address still counts up
    assert blocked(url) == [ATTACKER]
    quiet, office = unauthorized(url, ATTACKER), unauthorized(url, OFFICE)
    deadline = time.monotonic() + 30
    while unauthorized(url, OFFICE) <= office:
        assert time.monotonic() < deadline, "the office address sent nothing more"
        await asyncio.sleep(0.5)
    assert unauthorized(url, ATTACKER) == quiet
    [slack] = received(receivers_url, "slack")
    assert slack["body"]["channel"] == "#ai-multimodel-security"
    assert ATTACKER in slack["body"]["text"] and "Not blocked (allow-list)" in slack["body"]["text"]

    while time.time() <= (record.expires_at or 0):  # the shortened block ends
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    [lifted] = [r for r in await state.result() if r.target == ATTACKER]  # type: ignore[union-attr]
    assert (lifted.outcome, lifted.verified) == ("reverted", True)
    assert blocked(url) == []  # the platform's own block had 300 s more: lifted by the revert
