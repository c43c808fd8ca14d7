"""model-latency on the session's sandbox: a model slow in its region gets a longer timeout, a lower weight and
another endpoint (its p95 comes down, read back from the platform); revert-temporary-actions puts all three back
at their (shortened) end, and the model is slow again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from flows.model_latency import model_latency
from flows.revert_actions import revert_temporary_actions
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.catalogue import model_config


def p95(url: str, model: str) -> float:
    rows = httpx.get(f"{url}/api/v1/analytics/latency", params={"window": "1h"}).json()["models"]
    return float(next(r["p95_latency"] for r in rows if r["name"] == model))


def weight(url: str, model: str) -> float:
    weights: dict[str, Any] = httpx.get(f"{url}/api/v1/load-balancer/config").json()["weights"]
    return float(weights[model])


async def test_a_slow_provider_is_worked_around_until_the_changes_expire(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
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
