"""model-latency on the session's sandbox: a model slow in its region gets a longer timeout, a lower weight and
another endpoint (its p95 comes down, read back from the platform); revert-temporary-actions puts all three back
at their (shortened) end, and the model is slow again; ``runbooks actions`` lists them until then. In production
(approve) the form lists the three; the unticked ones are not made."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from flows.model_latency import model_latency
from flows.revert_actions import revert_temporary_actions
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import answer, approval_form, model_config, paused_run, runbooks_actions


def p95(url: str, model: str) -> float:
    rows = httpx.get(f"{url}/api/v1/analytics/latency", params={"window": "1h"}).json()["models"]
    return float(next(r["p95_latency"] for r in rows if r["name"] == model))


def weight(url: str, model: str) -> float:
    weights: dict[str, Any] = httpx.get(f"{url}/api/v1/load-balancer/config").json()["weights"]
    return float(weights[model])


async def test_a_slow_provider_is_worked_around_until_the_changes_expire(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, headers = platform_admin
    before = model_config(platform_admin, "qwen")
    old_weight = weight(url, "qwen")
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"slow_models": ["qwen"]}).raise_for_status()
    assert p95(url, "qwen") > 5000
    state = await model_latency(environment=TEST_ENVIRONMENT, hold_s=15, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    records = {r.kind: r for r in result["records"]}
    assert set(records) == {"model_timeout", "set_weights", "switch_endpoint"}
    assert all(r.target == "qwen" and r.outcome == "applied" and r.expires_at for r in records.values())
    assert result["p95_after"]["qwen"] < 5000 and p95(url, "qwen") < 5000  # the other region answers fast
    config = model_config(platform_admin, "qwen")
    assert (config["timeout"], config["retry_attempts"], config["region"]) == (45000, 2, "us-west-2")
    assert weight(url, "qwen") == 0.05
    listed = await runbooks_actions(TEST_ENVIRONMENT, capsys)
    assert all(f"{kind} qwen" in listed for kind in records)

    expires = max(r.expires_at or 0 for r in records.values())
    while time.time() <= expires:
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    reverted = [r for r in await state.result() if r.target == "qwen"]  # type: ignore[union-attr]
    assert sorted(r.kind for r in reverted) == ["model_timeout", "set_weights", "switch_endpoint"]
    assert all(r.outcome == "reverted" for r in reverted)
    config = model_config(platform_admin, "qwen")
    assert (config["timeout"], config["retry_attempts"], config["region"]) == (
        before["timeout"],
        before["retry_attempts"],
        before["region"],
    )
    assert weight(url, "qwen") == old_weight
    assert p95(url, "qwen") > 5000  # back in the slow region: the fault is still there
    listed = await runbooks_actions(TEST_ENVIRONMENT, capsys)
    assert not any(f"{kind} qwen" in listed for kind in records)


async def test_the_approval_lists_the_three_changes_and_the_unticked_ones_are_not_made(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    production_environment: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, headers = platform_admin
    before, old_weight = model_config(platform_admin, "deepseek"), weight(url, "deepseek")
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"slow_models": ["deepseek"]}).raise_for_status()
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        model_latency(environment=production_environment, incident=incident, hold_s=3, dry_run=False, return_state=True)
    )
    try:
        flow_run = await paused_run("model-latency", incident, run)
        fields = await approval_form(flow_run)
        assert set(fields) == {"model_timeout deepseek", "set_weights deepseek", "switch_endpoint deepseek"}
        await answer(flow_run, fields, tick={"model_timeout deepseek"})
        state = await asyncio.wait_for(run, timeout=120)
    finally:
        run.cancel()
    assert state.is_completed(), state.message  # type: ignore[union-attr]
    result = await state.result()  # type: ignore[union-attr]
    assert {r.kind: r.outcome for r in result["records"]} == {
        "model_timeout": "applied",
        "set_weights": "rejected",
        "switch_endpoint": "rejected",
    }
    config = model_config(platform_admin, "deepseek")
    assert (config["timeout"], config["retry_attempts"]) == (45000, 2)
    assert config["region"] == before["region"] and weight(url, "deepseek") == old_weight  # unticked: not made
    assert p95(url, "deepseek") > 5000  # still in the slow region

    [applied] = [r for r in result["records"] if r.outcome == "applied"]
    while time.time() <= (applied.expires_at or 0):
        await asyncio.sleep(0.2)
    state = await revert_temporary_actions(environment=production_environment, return_state=True)
    assert [(r.kind, r.outcome) for r in await state.result() if r.target == "deepseek"] == [  # type: ignore[union-attr]
        ("model_timeout", "reverted")
    ]
    assert model_config(platform_admin, "deepseek")["timeout"] == before["timeout"]
    assert "model_timeout deepseek" not in await runbooks_actions(production_environment, capsys)
