"""circuit-breakers on the session's sandbox: an OPEN breaker is reset only when its model's /test passes (a model
still down keeps its breaker OPEN); threshold changes are shown as a diff in the approval, and an unticked change
leaves the thresholds as they were."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from prefect.flow_runs import aresume_flow_run
from prefect.input.run_input import read_flow_run_input

from flows.circuit_breakers import circuit_breakers
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import paused_run


def breakers(url: str) -> dict[str, str]:
    return {b["model"]: b["state"] for b in httpx.get(f"{url}/api/v1/load-balancer/circuit-breakers").json()}


def thresholds(url: str, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/admin/load-balancer/circuit-breakers/config", headers=headers).json()
    return body


def open_breakers(url: str, headers: dict[str, str], *models: str) -> None:
    for model in models:
        httpx.post(
            f"{url}/admin/circuit-breaker", headers=headers, json={"model": model, "action": "open", "duration": 3600}
        ).raise_for_status()


async def test_only_a_recovered_model_has_its_breaker_reset(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["qwen"]}).raise_for_status()
    open_breakers(url, headers, "gpt-4", "qwen")
    state = await circuit_breakers(environment=TEST_ENVIRONMENT, adjust_thresholds=True, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    outcomes = {(r.kind, r.target): r.outcome for r in result["records"]}
    assert outcomes == {("reset_breaker", "gpt-4"): "applied", ("breaker_config", "load-balancer"): "applied"}
    after = breakers(url)
    assert after["gpt-4"] == "CLOSED" and after["qwen"] == "OPEN"  # qwen's /test still fails: left open
    findings = {f.check: f for f in result["findings"]}
    assert "left open" in findings["breaker qwen"].detail
    assert thresholds(url, headers) == {"failure_threshold": 3, "timeout": 30000, "retry_timeout": 300000}


async def test_the_approval_shows_the_threshold_diff_and_an_unticked_change_is_not_made(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], production_environment: str
) -> None:
    url, headers = platform_admin
    open_breakers(url, headers, "gemini-pro")
    before = thresholds(url, headers)
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        circuit_breakers(
            environment=production_environment,
            incident=incident,
            adjust_thresholds=True,
            dry_run=False,
            return_state=True,
        )
    )
    try:
        flow_run = await paused_run("circuit-breakers", incident, run)
        keyset = flow_run.state.state_details.run_input_keyset
        description = await read_flow_run_input(keyset["description"], flow_run_id=flow_run.id)
        assert f"- failure_threshold: {before['failure_threshold']}\n+ failure_threshold: 3" in description
        schema = await read_flow_run_input(keyset["schema"], flow_run_id=flow_run.id)
        titles = [schema["properties"][f"action_{i}"]["title"] for i in (1, 2)]
        assert titles == ["reset_breaker gemini-pro", "breaker_config load-balancer"]
        assert breakers(url)["gemini-pro"] == "OPEN"  # nothing before the answer
        await aresume_flow_run(
            flow_run.id, run_input={"approve": True, "approver": "bob", "action_1": True, "action_2": False}
        )
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    assert {r.kind: (r.outcome, r.by) for r in result["records"]} == {
        "reset_breaker": ("applied", "bob"),
        "breaker_config": ("rejected", "bob"),
    }
    assert breakers(url)["gemini-pro"] == "CLOSED"
    assert thresholds(url, headers) == before  # the unticked change: not made
