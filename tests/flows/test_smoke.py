"""The smoke-tests flow against the sandbox's real services: Completed with its table artifact, Failed with a fault."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

from flows.smoke import smoke_tests
from sandbox.manager import Sandbox
from tasks.smoke import SmokeReport, load_suite
from tests.conftest import TEST_ENVIRONMENT

RESOURCE = f"runbooks.environment.{TEST_ENVIRONMENT}"


async def latest_rows(key: str) -> list[dict[str, Any]]:
    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert artifacts, f"no artifact {key}"
    newest = max(artifacts, key=lambda a: a.created or datetime.min.replace(tzinfo=UTC))
    data = newest.data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


async def smoke_events(name: str, since: datetime, timeout_s: float = 20) -> list[Any]:
    """The flow's events (persisted asynchronously: poll with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(
                    event=EventNameFilter(name=[name]),
                    resource=EventResourceFilter(id=[RESOURCE]),
                    occurred=EventOccurredFilter(since=since),
                ),
                limit=10,
            )
        if page.events or time.monotonic() > deadline:
            return list(page.events)
        await asyncio.sleep(0.5)


async def test_smoke_tests_complete_with_a_table_artifact(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    since = datetime.now(UTC)
    state = await smoke_tests(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    report = await state.result()
    assert isinstance(report, SmokeReport) and report.passed and not report.skipped
    rows = await latest_rows(f"smoke-{TEST_ENVIRONMENT}")
    assert [r["case"] for r in rows] == [c.name for c in load_suite().cases]
    assert {r["result"] for r in rows} == {"pass"} and all(r["status"] == 200 for r in rows)
    [event] = await smoke_events("runbooks.smoke.passed", since)
    assert event.payload["failed"] == [] and event.payload["cases"] == len(rows)


async def test_service_down_fails_the_run_naming_the_failing_cases(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"service_down": True}).raise_for_status()
    since = datetime.now(UTC)
    state = await smoke_tests(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    for name in ("api health", "frontend health", "frontend page"):
        assert name in message
    rows = {r["case"]: r for r in await latest_rows(f"smoke-{TEST_ENVIRONMENT}")}
    assert rows["api health"]["result"] == "fail" and rows["api health"]["status"] == 503
    [event] = await smoke_events("runbooks.smoke.failed", since)
    assert "api health" in event.payload["failed"]
    token = sandbox.state.secrets()["platform_admin_token"]
    assert token not in json.dumps(list(rows.values())) and token not in message
