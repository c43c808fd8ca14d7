"""model-unavailable on the session's sandbox (the platform double): a model down is reconnected, then put on a
fallback that revert-temporary-actions undoes at its (shortened) expiry; the platform is read back with plain HTTP
and ``runbooks actions`` shows the fallback, then nothing. In production (approve) the run pauses with a form listing
the actions, and an unticked action changes nothing."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from prefect.flow_runs import aresume_flow_run
from prefect.input.run_input import read_flow_run_input

from flows.model_unavailable import model_unavailable
from flows.revert_actions import revert_temporary_actions
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import model_config, paused_run, runbooks_actions
from tests.flows.conftest import received

FALLBACK_S = 15  # the seed's 1,800 s, shortened: long enough for the checks made before it ends on a busy machine


async def test_a_model_down_goes_on_a_fallback_that_revert_temporary_actions_ends(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["gpt-4"]}).raise_for_status()
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    state = await model_unavailable(
        environment=TEST_ENVIRONMENT, incident=incident, fallback_s=FALLBACK_S, return_state=True
    )
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    assert result["mode"] == "auto"
    assert result["outcomes"] == {"gpt-4": "on fallback to claude-3-5-sonnet"}  # found down by itself (no model)
    by_kind = {r.kind: r for r in result["records"]}
    assert by_kind["reconnect"].outcome == "applied" and "failed" in by_kind["reconnect"].detail
    fallback = by_kind["set_fallback"]
    assert (fallback.outcome, fallback.verified, fallback.by) == ("applied", True, "auto")
    assert fallback.expires_at is not None and fallback.reversal is not None
    checks = {f.check: f for f in result["findings"]}
    assert checks["test gpt-4"].verdict == "fail" and checks["api key gpt-4"].figure == "valid"
    assert checks["status claude-3-5-sonnet"].verdict == "ok"

    # not due yet: the revert leaves it
    early = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert [r for r in await early.result() if r.target == "gpt-4"] == []  # type: ignore[union-attr]

    # the platform, read as an operator reads it: gpt-4's traffic goes to its fallback
    assert model_config(platform_admin, "gpt-4")["fallback_model"] == "claude-3-5-sonnet"
    listed = await runbooks_actions(TEST_ENVIRONMENT, capsys)
    assert "set_fallback gpt-4" in listed and "model-unavailable" in listed
    [slack] = received(receivers_url, "slack")
    assert slack["body"]["channel"] == "#ai-multimodel-alerts" and "on fallback" in slack["body"]["text"]

    # the same incident again: the key in Redis says it is done, nothing is applied twice
    again = await (
        await model_unavailable(
            environment=TEST_ENVIRONMENT, incident=incident, fallback_s=FALLBACK_S, return_state=True
        )
    ).result()  # type: ignore[union-attr]
    assert {r.kind: r.outcome for r in again["records"]} == {"reconnect": "skipped", "set_fallback": "skipped"}

    while time.time() <= fallback.expires_at:  # the shortened expiry passes (the platform's own TTL is 300 s more)
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    [reverted] = [r for r in await state.result() if r.target == "gpt-4"]  # type: ignore[union-attr]
    assert (reverted.kind, reverted.outcome, reverted.verified) == ("set_fallback", "reverted", True)
    assert model_config(platform_admin, "gpt-4")["fallback_model"] is None  # the platform's state, read back
    assert "set_fallback gpt-4" not in await runbooks_actions(TEST_ENVIRONMENT, capsys)


async def test_a_model_that_answers_is_left_alone(sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]) -> None:
    state = await model_unavailable(environment=TEST_ENVIRONMENT, model="gpt-4", return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    assert result["outcomes"] == {"gpt-4": "recovered"} and result["records"] == []
    assert model_config(platform_admin, "gpt-4")["fallback_model"] is None


async def test_approval_lists_the_actions_and_an_unticked_one_changes_nothing(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], production_environment: str, receivers_url: str
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["gemini-pro"]}).raise_for_status()
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        model_unavailable(
            environment=production_environment, model="gemini-pro", incident=incident, dry_run=False, return_state=True
        )
    )
    try:
        flow_run = await paused_run("model-unavailable", incident, run)
        keyset = flow_run.state.state_details.run_input_keyset
        schema = await read_flow_run_input(keyset["schema"], flow_run_id=flow_run.id)
        titles = {p.get("title") for p in schema["properties"].values()}
        assert {"reconnect gemini-pro", "set_fallback gemini-pro"} <= titles
        assert schema["properties"]["approve"]["default"] is False  # default deny
        assert model_config(platform_admin, "gemini-pro")["fallback_model"] is None  # nothing before the answer
        [asked] = received(receivers_url, "slack")  # told where to answer, in the runbook's channel
        assert "APPROVAL NEEDED" in asked["body"]["text"] and str(flow_run.id) in asked["body"]["text"]
        assert asked["body"]["channel"] == "#ai-multimodel-alerts"
        await aresume_flow_run(
            flow_run.id, run_input={"approve": True, "approver": "alice", "action_1": True, "action_2": False}
        )
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    outcomes = {r.kind: (r.outcome, r.by) for r in result["records"]}
    assert outcomes == {"reconnect": ("applied", "alice"), "set_fallback": ("rejected", "alice")}
    assert model_config(platform_admin, "gemini-pro")["fallback_model"] is None  # the unticked action: not applied
