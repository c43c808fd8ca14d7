"""Tell people by the policy's escalation matrix: Slack (then the thread), PagerDuty, Opsgenie."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from blocks.environment import RunbookEnvironment
from tasks.notify import create_opsgenie_alert, post_slack_message, send_pagerduty_event
from tasks.triage.policy import TriagePolicy
from tasks.triage.render import headline, incident_blocks
from tasks.triage.report import TriageReport


async def notify(env: RunbookEnvironment, policy: TriagePolicy, report: TriageReport, summary: str) -> None:
    """The first notification, concurrently on every channel the severity's escalation names; keeps the Slack
    message's ``ts`` in the report so that every later message goes to its thread."""
    escalation = policy.escalation[report.severity]
    jobs: list[Awaitable[Any]] = []
    if env.slack is not None:
        jobs.append(
            post_slack_message(
                env.slack,
                env.slack.channel_for(escalation.slack),
                headline(report),
                incident_blocks(report, "INVESTIGATING"),
            )
        )
    if env.pagerduty is not None and escalation.pagerduty:
        jobs.append(
            send_pagerduty_event(
                env.pagerduty,
                "trigger",
                report.incident_id,
                f"{report.severity}: {report.alert_name} — {summary}",
                severity=escalation.pagerduty,
                details={f.enricher: f.title for f in report.findings},
            )
        )
    if env.opsgenie is not None and escalation.opsgenie:
        jobs.append(
            create_opsgenie_alert(
                env.opsgenie,
                f"{report.severity}: {report.alert_name}",
                alias=report.incident_id,
                priority=escalation.opsgenie,
                description="\n".join(f"{f.enricher}: {f.title}" for f in report.findings),
            )
        )
    results = await asyncio.gather(*jobs)
    if env.slack is not None and results:
        report.slack_ts = results[0].ts


async def update_thread(env: RunbookEnvironment, policy: TriagePolicy, report: TriageReport, text: str) -> None:
    """A message in the incident's Slack thread (nothing when there is no first message)."""
    if env.slack is not None and report.slack_ts:
        await post_slack_message(
            env.slack, env.slack.channel_for(policy.escalation[report.severity].slack), text, thread_ts=report.slack_ts
        )


async def resolve_page(env: RunbookEnvironment, policy: TriagePolicy, report: TriageReport) -> None:
    """Resolve the PagerDuty incident the first notification opened (same dedup key)."""
    if env.pagerduty is not None and policy.escalation[report.severity].pagerduty:
        await send_pagerduty_event(env.pagerduty, "resolve", report.incident_id)
