"""The system-health-check flow against the sandbox's real services."""

from __future__ import annotations

import httpx
from prefect.client.orchestration import get_client

from flows.health import HealthReport, system_health_check
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT


async def test_healthy_sandbox_completes_with_report_artifact(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str
) -> None:
    state = await system_health_check(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    report = await state.result()
    assert isinstance(report, HealthReport) and report.healthy
    names = {c.name for c in report.checks}
    assert {"platform /health", "error rate", "postgres", "redis", "backup bucket", "model gpt-4"} <= names
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    keys = {a.key for a in artifact}
    assert f"health-{TEST_ENVIRONMENT}" in keys
    assert httpx.get(f"{receivers_url}/_received").json() == []  # nothing to tell when all is well


async def test_model_down_fails_the_run_and_tells_slack(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]], receivers_url: str
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"models_down": ["gpt-4"]}).raise_for_status()
    state = await system_health_check(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_failed()
    assert "model gpt-4" in (state.message or "")
    slack = httpx.get(f"{receivers_url}/_received", params={"system": "slack"}).json()
    assert len(slack) == 1 and "gpt-4" in str(slack[0]["body"])
    token = sandbox.state.secrets()["platform_admin_token"]
    assert token not in str(slack)
