"""The "no backup in 26 h" automation: applied to the test Prefect server and read back, applied twice without
a duplicate, and fired for real by the server's proactive trigger evaluation (with a 10 s window, the shortest
Prefect allows): silent environments get a backup-missing run, an environment whose backups keep completing
does not. Then the backup-missing flow itself against the sandbox's receivers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.events import emit_event
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture

from deployments.apply import apply_automations, backup_environments
from deployments.automations import BACKUP_COMPLETED_EVENT, BACKUP_MISSING_WINDOW, backup_missing_name
from flows.backup import daily_backup
from flows.backup_alerts import backup_missing
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.test_backup import NO_RETENTION

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
async def missing_deployment() -> UUID:
    """The backup-missing deployment, registered on the test server as prefect.yaml names it."""
    deployment = await backup_missing.to_deployment(name="backup-missing")
    return await deployment.apply()


@pytest.fixture()
async def cleanup() -> AsyncIterator[list[UUID]]:
    created: list[UUID] = []
    yield created
    async with get_client() as client:
        for automation_id in created:
            await client.delete_automation(automation_id)


async def test_applied_automation_reads_back_as_a_26h_proactive_trigger(
    missing_deployment: UUID, cleanup: list[UUID]
) -> None:
    assert backup_environments() == ["sandbox"]  # from prefect.yaml's daily-backup deployment
    first = await apply_automations()
    cleanup.extend(first.values())
    second = await apply_automations()  # idempotent: updated in place, by name
    assert first == second and list(first) == [backup_missing_name("sandbox")]
    async with get_client() as client:
        [automation] = await client.read_automations_by_name(backup_missing_name("sandbox"))
    assert automation.enabled
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Proactive
    assert trigger.within == BACKUP_MISSING_WINDOW == timedelta(hours=26)
    assert trigger.expect == {BACKUP_COMPLETED_EVENT} == {"backup.completed"}
    assert trigger.threshold == 1
    match = trigger.match.model_dump() if hasattr(trigger.match, "model_dump") else dict(trigger.match)
    assert match == {"prefect.resource.id": "runbooks.backup.sandbox", "runbooks.backup.kind": "daily"}
    [action] = automation.actions
    assert isinstance(action, RunDeployment)
    assert action.source == "selected" and action.deployment_id == missing_deployment
    assert action.parameters == {"environment": "sandbox", "window_hours": 26}


async def _runs_for(deployment_id: UUID, environment: str) -> list[Any]:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return [r for r in runs if r.parameters.get("environment") == environment]


async def test_proactive_trigger_fires_only_when_backups_stop(missing_deployment: UUID, cleanup: list[UUID]) -> None:
    silent = f"rb-test-silent-{uuid.uuid4().hex[:6]}"
    fed = f"rb-test-fed-{uuid.uuid4().hex[:6]}"
    applied = await apply_automations([silent, fed], within=timedelta(seconds=10))
    cleanup.extend(applied.values())

    async def completed(environment: str) -> None:
        emit_event(
            event=BACKUP_COMPLETED_EVENT,
            resource={"prefect.resource.id": f"runbooks.backup.{environment}", "runbooks.backup.kind": "daily"},
        )

    async def feed() -> None:  # every 2 s, well inside the window: the fed environment is never missing
        while True:
            await completed(fed)
            await asyncio.sleep(2)

    async def runs(environment: str, at_least: int) -> list[Any]:
        """Runs of backup-missing for ``environment`` once there are ``at_least`` of them (polled, 90 s)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = await _runs_for(missing_deployment, environment)
            if len(found) >= at_least:
                return found
            await asyncio.sleep(0.5)
        raise AssertionError(f"the proactive trigger fired fewer than {at_least} times for {environment}")

    # the server evaluates proactive triggers every 5 s: a 10 s window without an event fires within ~20 s
    feeder = asyncio.create_task(feed())
    try:
        fired = await runs(silent, 1)
        assert fired[0].parameters == {"environment": silent, "window_hours": round(10 / 3600, 4)}
        # it fires again one window later (a new window opens at each evaluation): by then the fed environment's
        # windows have been evaluated as often as the silent one's, and never fired
        await runs(silent, 2)
        assert await _runs_for(missing_deployment, fed) == []
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def test_backup_missing_alerts_slack_and_pagerduty(sandbox: Sandbox, receivers_url: str) -> None:
    await daily_backup(environment=TEST_ENVIRONMENT, parts=["postgres"], retention=NO_RETENTION)
    # a backup completed seconds ago: the event was lost, the bucket is fine -> a Slack warning, no page
    report = await backup_missing(environment=TEST_ENVIRONMENT, window_hours=1)
    assert report.verdict == "event-missing" and report.notified == ["slack"]
    assert report.newest_completed_at is not None
    deadline = time.monotonic() + 10
    while datetime.now(UTC) - report.newest_completed_at <= timedelta(seconds=1.1):  # until it is out of a 1 s window
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # nothing within the window (1 s): Slack and PagerDuty, deduplicated per environment
    httpx.delete(f"{receivers_url}/_received").raise_for_status()
    report = await backup_missing(environment=TEST_ENVIRONMENT, window_hours=1 / 3600)
    assert report.verdict == "missing" and report.notified == ["slack", "pagerduty"]
    slack = httpx.get(f"{receivers_url}/_received", params={"system": "slack"}).json()
    assert len(slack) == 1 and "No daily backup of" in slack[0]["body"]["text"]
    pages = httpx.get(f"{receivers_url}/_received", params={"system": "pagerduty"}).json()
    assert len(pages) == 1 and pages[0]["body"]["dedup_key"] == f"backup-missing-{TEST_ENVIRONMENT}"
