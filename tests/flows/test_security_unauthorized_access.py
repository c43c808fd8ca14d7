"""security-unauthorized-access on the session's sandbox: of two addresses sending unauthorized requests, the one
outside the allow-list is blocked (and stops producing events), the allow-listed one is not and the report says why
(the API pods' logs count the attempts by address, and log the block); revert-temporary-actions lifts the block at
its (shortened) end, checked in the platform's rate limits and ``runbooks actions``. In production (approve) the form
lists each block; an unticked one is never made."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows.revert_actions import revert_temporary_actions
from flows.security_unauthorized_access import security_unauthorized_access
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import answer, approval_form, findings_table, paused_run, runbooks_actions
from tests.flows.conftest import production_kubectl, received

ATTACKER, OFFICE = "203.0.113.50", "10.1.2.3"  # the policy's allow-list holds 10.0.0.0/8


def unauthorized(url: str, ip: str) -> int:
    events = httpx.get(f"{url}/api/v1/security/events").json()["events"]
    return sum(1 for e in events if e["type"] == "unauthorized" and e["source_ip"] == ip)


def blocked(url: str) -> list[str]:
    return [b["ip"] for b in httpx.get(f"{url}/api/v1/security/rate-limits").json()["blocked_ips"]]


async def test_the_attacker_is_blocked_the_allow_listed_address_never_and_the_block_ends(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    admin_kubeconfig: Path,
    capsys: pytest.CaptureFixture[str],
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
    # the API pods' logs, read through the Kubernetes tasks: the attempts counted by address
    assert int(findings["API log lines UNAUTHORIZED|BLOCKED|THREAT"].figure) >= 2 * 20
    table = await findings_table("security-unauthorized-access", TEST_ENVIRONMENT)  # the artifact, as the UI shows it
    for ip in (ATTACKER, OFFICE):
        assert int(table[f"API log {ip}"]["figure"].split()[0]) > 20  # the fault's minute of history, at least
        assert table[f"API log {ip}"]["detail"].startswith("UNAUTHORIZED x")

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
    assert f"block_ip {ATTACKER}" in await runbooks_actions(TEST_ENVIRONMENT, capsys)
    logs = production_kubectl(admin_kubeconfig, "logs", "-l", "app=ai-multimodel-api", "--tail=100000")
    assert f"BLOCKED ip={ATTACKER}" in logs  # the block, in the API's logs as the seed's grep reads them

    while time.time() <= (record.expires_at or 0):  # the shortened block ends
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    [lifted] = [r for r in await state.result() if r.target == ATTACKER]  # type: ignore[union-attr]
    assert (lifted.outcome, lifted.verified) == ("reverted", True)
    assert blocked(url) == []  # the platform's own block had 300 s more: lifted by the revert
    assert f"block_ip {ATTACKER}" not in await runbooks_actions(TEST_ENVIRONMENT, capsys)


async def test_the_approval_lists_each_block_and_an_unticked_one_is_never_made(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    production_environment: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, headers = platform_admin
    first, second = "203.0.113.61", "198.51.100.71"
    faults = {"unauthorized_ips": [first, second]}
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json=faults).raise_for_status()
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        security_unauthorized_access(
            environment=production_environment, incident=incident, block_s=3, dry_run=False, return_state=True
        )
    )
    try:
        flow_run = await paused_run("security-unauthorized-access", incident, run)
        fields = await approval_form(flow_run)
        assert {f"block_ip {first}", f"block_ip {second}"} == set(fields)
        assert blocked(url) == []  # nothing before the answer
        await answer(flow_run, fields, tick={f"block_ip {first}"})
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    assert {r.target: (r.outcome, r.by) for r in result["records"]} == {
        first: ("applied", "alice"),
        second: ("rejected", "alice"),
    }
    assert blocked(url) == [first]  # the unticked address: not blocked, and it still counts up
    sent = unauthorized(url, second)
    deadline = time.monotonic() + 30
    while unauthorized(url, second) <= sent:
        assert time.monotonic() < deadline, f"{second} sent nothing more"
        await asyncio.sleep(0.5)

    [record] = [r for r in result["records"] if r.outcome == "applied"]
    while time.time() <= (record.expires_at or 0):  # the approved block ends on its own, too
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=production_environment, return_state=True)
    assert [(r.target, r.outcome) for r in await state.result() if r.target == first] == [(first, "reverted")]  # type: ignore[union-attr]
    assert blocked(url) == [] and f"block_ip {first}" not in await runbooks_actions(production_environment, capsys)
