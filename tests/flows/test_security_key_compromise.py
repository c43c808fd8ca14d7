"""security-key-compromise on the session's sandbox: a run killed after the revoke (while another run holds the
rotation), then re-run, ends with the old key revoked and exactly one live replacement, whose value is in the Secret
block named in the report and in no log, artifact, event, Slack message or result. In production (approve) the form
lists the revocation and the replacement; an unticked replacement is never issued."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

import httpx
import redis
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from blocks.environment import load_environment
from flows.security_key_compromise import security_key_compromise
from sandbox.manager import Sandbox
from tasks.catalogue.keys import LOCK_PREFIX, replacement_name
from tasks.catalogue.policy import load_policy
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import answer, approval_form, paused_run
from tests.flows.conftest import received


def live_replacements(url: str, headers: dict[str, str], user_id: str, key_id: str) -> list[dict[str, Any]]:
    name = replacement_name(load_policy().key_compromise.replacement_name, key_id)
    keys = httpx.get(f"{url}/admin/api-keys", params={"user_id": user_id}, headers=headers).json()["keys"]
    return [k for k in keys if k["name"] == name and k["revoked_at"] is None]


async def everything_that_left_the_runs() -> str:
    """Logs, artifacts and events the Prefect server holds, as one text to scan."""
    async with get_client() as client:
        logs = await client.read_logs(limit=200)
        artifacts = await client.read_artifacts(limit=200)
        events = await client._client.post(
            "/events/filter", json={"filter": {"event": {"prefix": ["runbooks."]}}, "limit": 50}
        )
    return "\n".join(
        [
            *(log.message for log in logs),
            *(json.dumps(a.data, default=str) + str(a.description) for a in artifacts),
            events.text,
        ]
    )


async def test_an_interrupted_rotation_re_run_ends_with_exactly_one_new_key(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str
) -> None:
    url, headers = platform_admin
    user = httpx.get(f"{url}/api/v1/analytics/top-users").json()["users"][0]
    key_id, user_id = user["api_key_ids"][0], user["user_id"]
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"leaked_key_id": key_id}).raise_for_status()
    incident = f"inc-{uuid.uuid4().hex[:8]}"

    # another run holds the rotation: the worker revokes, reads, then waits for it, and is killed there
    redis_url = (await load_environment(TEST_ENVIRONMENT)).redis.url.get_secret_value()
    lock = redis.Redis.from_url(redis_url)
    lock.set(LOCK_PREFIX + key_id, "another-run", ex=600)
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.flows.key_rotation_process", TEST_ENVIRONMENT, key_id, incident],
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not httpx.get(f"{url}/admin/api-keys/{key_id}/usage", headers=headers).json()["revoked"]:
            assert worker.returncode is None, (await worker.communicate())[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the worker never revoked the key"
            await asyncio.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        out, err = await worker.communicate()
        lock.delete(LOCK_PREFIX + key_id)
        lock.close()
    assert live_replacements(url, headers, user_id, key_id) == []  # killed before it issued anything
    # as if a run had died between the platform's answer and the Secret block: a replacement nobody can collect
    name = replacement_name(load_policy().key_compromise.replacement_name, key_id)
    orphan = httpx.post(
        f"{url}/admin/api-keys", headers=headers, json={"user_id": user_id, "name": name, "permissions": ["read"]}
    ).json()

    state = await security_key_compromise(
        key_id=key_id, environment=TEST_ENVIRONMENT, incident=incident, return_state=True
    )
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    outcomes = {r.kind: r for r in result["records"]}
    assert outcomes["revoke_key"].outcome in ("skipped", "applied")  # the killed run may have recorded it
    assert outcomes["issue_key"].outcome == "applied" and orphan["id"] in outcomes["issue_key"].detail
    [live] = live_replacements(url, headers, user_id, key_id)
    assert live["id"] == result["replacement"] and live["permissions"] == ["read", "ai_query"]
    assert httpx.get(f"{url}/admin/api-keys/{key_id}/usage", headers=headers).json()["revoked"] is True
    findings = {f.check: f for f in result["findings"]}
    assert int(findings["source addresses"].figure) >= 40  # the leaked key's new addresses, read after the revoke
    assert "api_key.revoke x1" in findings["audit trail 72 h"].detail  # the trail is read after the revoke

    # and once more: nothing issued, still one
    again = await (
        await security_key_compromise(key_id=key_id, environment=TEST_ENVIRONMENT, incident=incident, return_state=True)
    ).result()  # type: ignore[union-attr]
    assert {r.kind: r.outcome for r in again["records"]}["issue_key"] == "skipped"
    assert [k["id"] for k in live_replacements(url, headers, user_id, key_id)] == [live["id"]]

    # the value is in the Secret block the report names, and nowhere else
    stored = (await Secret.aload(result["block"])).get()
    assert stored["api_key_id"] == live["id"] and stored["api_key"].startswith("sk-")
    value = stored["api_key"]
    slack = received(receivers_url, "slack")
    assert slack and {m["body"]["channel"] for m in slack} == {"#ai-multimodel-security"}
    assert result["block"] in slack[0]["body"]["text"]
    scanned = "\n".join(
        [
            await everything_that_left_the_runs(),
            json.dumps([m["body"] for m in slack]),
            json.dumps([r.model_dump() for r in result["records"] + again["records"]], default=str),
            json.dumps([f.model_dump() for f in result["findings"]]),
            out.decode(),
            err.decode(),
        ]
    )
    assert result["block"] in scanned and live["id"] in scanned  # the scan sees what the runs wrote
    assert value not in scanned


async def test_the_approval_lists_revoke_and_replacement_and_an_unticked_replacement_is_not_issued(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], production_environment: str
) -> None:
    url, headers = platform_admin
    user = httpx.get(f"{url}/api/v1/analytics/top-users").json()["users"][1]
    key_id, user_id = user["api_key_ids"][0], user["user_id"]
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        security_key_compromise(
            key_id=key_id, environment=production_environment, incident=incident, dry_run=False, return_state=True
        )
    )
    try:
        flow_run = await paused_run("security-key-compromise", incident, run)
        fields = await approval_form(flow_run)
        assert set(fields) == {f"revoke_key {key_id}", f"issue_key {key_id}"}
        assert httpx.get(f"{url}/admin/api-keys/{key_id}/usage", headers=headers).json()["revoked"] is False
        await answer(flow_run, fields, tick={f"revoke_key {key_id}"}, approver="carol")
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    assert {r.kind: (r.outcome, r.by) for r in result["records"]} == {
        "revoke_key": ("applied", "carol"),
        "issue_key": ("rejected", "carol"),
    }
    assert httpx.get(f"{url}/admin/api-keys/{key_id}/usage", headers=headers).json()["revoked"] is True
    assert live_replacements(url, headers, user_id, key_id) == []  # the unticked replacement: not issued
    assert result["block"] is None
