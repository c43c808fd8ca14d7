"""End to end: a block's secret and a DSN's password, raised inside a flow, appear in nothing that leaves it.

The flow below fails the way a runbook does: it tells Slack, PagerDuty and Opsgenie, writes an artifact, emits an
event and logs the traceback, each with the raw exception text, then lets the exception end the run. The test
then reads back everything a person or a system could see: what the receivers got, the run's artifacts, its
events, its logs and its final state.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventOccurredFilter
from prefect.types._datetime import now

from blocks.environment import load_environment
from kernel.redact import redact_errors
from sandbox.manager import Sandbox
from tasks.notify import create_opsgenie_alert, post_slack_message, send_pagerduty_event
from tasks.reporting import emit, publish_markdown
from tests.conftest import TEST_ENVIRONMENT

DSN_PASSWORD = f"dsn-pw-{uuid.uuid4().hex[:10]}"
DSN = f"postgresql://runbooks:{DSN_PASSWORD}@db.internal:5432/ai_multimodel"


@flow(name="leaky-runbook")
@redact_errors
async def leaky_runbook(environment: str, key: str) -> None:
    env = await load_environment(environment)
    assert env.slack is not None and env.pagerduty is not None and env.opsgenie is not None
    token = env.platform.admin_token.get_secret_value()
    logger = get_run_logger()
    try:
        raise RuntimeError(f"platform refused Bearer {token} while restoring into {DSN}")
    except RuntimeError as err:
        raw = str(err)  # deliberately unredacted: every channel must clean it itself
        logger.exception("restore failed: %s", raw)
        await post_slack_message(env.slack, env.slack.channel_for("alerts"), raw)
        await send_pagerduty_event(env.pagerduty, "trigger", dedup_key=key, summary=raw, details={"error": raw})
        await create_opsgenie_alert(env.opsgenie, message=raw, alias=key, description=raw)
        await publish_markdown(key, f"# restore failed\n\n{raw}", description=raw)
        emit("runbooks.test.failed", {"prefect.resource.id": f"runbooks.test.{key}"}, payload={"error": raw})
        raise


async def test_secret_raised_inside_a_flow_leaves_no_trace(sandbox: Sandbox, receivers_url: str) -> None:
    token = sandbox.state.secrets()["platform_admin_token"]
    key = f"leak-{uuid.uuid4().hex[:8]}"
    started = now("UTC")
    state = await leaky_runbook(environment=TEST_ENVIRONMENT, key=key, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    secrets = (token, DSN_PASSWORD)

    def assert_clean(where: str, text: str) -> None:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"

    # the receivers: what Slack, PagerDuty and Opsgenie were sent
    received = httpx.get(f"{receivers_url}/_received").json()
    systems = {r["system"] for r in received}
    assert {"slack", "pagerduty", "opsgenie"} <= systems, systems
    assert_clean("notifications", str(received))
    assert "[REDACTED]" in str(received)  # the message still went out, without the secret

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        assert run.state is not None
        assert_clean("the final state", f"{run.state.message} {run.state.name}")

        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        assert any(a.key == key for a in artifacts)
        assert_clean("artifacts", str([(a.data, a.description) for a in artifacts]))

        logs: list[str] = []
        for _ in range(50):  # logs arrive in batches: wait for the traceback
            records = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            logs = [r.message for r in records]
            if any("Traceback" in m for m in logs) and any("restore failed" in m for m in logs):
                break
            await asyncio.sleep(0.2)
        assert any("restore failed" in m for m in logs), logs
        assert_clean("logs", "\n".join(logs))

        events: list[str] = []
        for _ in range(50):  # events are written asynchronously: wait for the run's failure and ours
            page = await client.read_events(
                filter=EventFilter(
                    occurred=EventOccurredFilter(since=started),
                    any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                ),
                limit=50,
            )
            events = [e.model_dump_json() for e in page.events]
            if any("runbooks.test.failed" in e for e in events) and any("Failed" in e for e in events):
                break
            await asyncio.sleep(0.2)
        assert any("runbooks.test.failed" in e for e in events), events
        assert_clean("events", "\n".join(events))
