"""Tell people by the policy's escalation matrix: Slack (then the thread), PagerDuty, Opsgenie; and, when the
alert clears, resolve and close them all (:func:`close_incident`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel

from blocks.environment import RunbookEnvironment
from tasks.notify import close_opsgenie_alert, create_opsgenie_alert, post_slack_message, send_pagerduty_event
from tasks.triage.incident_record import claim_resolved_notice, read_thread
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
        report.slack_ts, report.slack_channel = results[0].ts, results[0].channel


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


class Closed(BaseModel):
    """What ``incident-resolved`` told, where."""

    pagerduty_resolved: bool = False
    opsgenie_closed: bool = False
    slack: str = "none"  # thread | channel | already-posted | none
    detail: str = ""


async def close_incident(env: RunbookEnvironment, incident_id: str, text: str, run: str) -> Closed:
    """Resolve the PagerDuty incident (same dedup key; a key PagerDuty never saw changes nothing), close the
    Opsgenie alert (alias = incident id), and post ``text`` once in the incident's Slack thread: read back from the
    incident's record (:mod:`tasks.triage.incident_record`); without one, in the alerts channel, saying so. The
    RESOLVED message is claimed first, so a re-run (or a concurrent run) of the same incident never posts it twice.
    """
    closed = Closed()
    jobs: list[Awaitable[Any]] = []
    if env.pagerduty is not None:
        jobs.append(send_pagerduty_event(env.pagerduty, "resolve", incident_id))
        closed.pagerduty_resolved = True
    if env.opsgenie is not None:
        jobs.append(close_opsgenie_alert(env.opsgenie, incident_id, note=text))
        closed.opsgenie_closed = True
    await asyncio.gather(*jobs)
    if env.slack is None:
        return closed
    posted_by = await claim_resolved_notice(incident_id, run)
    if posted_by is not None:
        closed.slack, closed.detail = "already-posted", f"RESOLVED was already posted by {posted_by}"
        return closed
    thread = await read_thread(incident_id)
    if thread is not None:
        await post_slack_message(env.slack, thread.channel, text, thread_ts=thread.ts)
        closed.slack = "thread"
    else:
        note = " (the incident's Slack thread was not found: no triage recorded it)"
        await post_slack_message(env.slack, env.slack.channel_for("alerts"), text + note)
        closed.slack, closed.detail = "channel", note.strip(" ()")
    return closed
