"""The post-mortem: findings, actions and the timeline read back from the incident's events in Prefect."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

from tasks.reporting import publish_markdown
from tasks.triage.report import TriageReport, artifact_key, incident_resource

#: how far before the run's start the timeline looks (the gateway's ``runbooks.incident.opened`` comes first)
TIMELINE_LOOKBACK = timedelta(hours=1)
TIMELINE_LIMIT = 50


async def read_timeline(incident_id: str, since: datetime) -> list[str]:
    """One markdown table row per event of the incident since ``since``, oldest first (Prefect's client)."""
    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(minutes=1)),
        resource=EventResourceFilter(id=[incident_resource(incident_id)["prefect.resource.id"]]),
    )
    async with get_client() as client:
        page = await client.read_events(filter=event_filter, limit=TIMELINE_LIMIT)
    rows = []
    for e in sorted(page.events, key=lambda e: e.occurred):
        payload = e.payload or {}
        detail = f"{payload.get('action', '')} {payload.get('target', '')} {payload.get('outcome', '')}"
        rows.append(f"| {e.occurred.astimezone(UTC):%H:%M:%S} | `{e.event}` | {detail} |")
    return rows


def render_postmortem(report: TriageReport, elapsed_s: float, timeline: list[str]) -> str:
    actions = [
        f"- {m.action} {m.target}: **{m.outcome}** {m.detail} (key `{m.key}`, by {m.by})" for m in report.mitigations
    ] or ["- none"]
    return "\n".join(
        [
            f"# Post-mortem {report.incident_id}: {report.alert_name}",
            "",
            f"- Severity: **{report.severity}** ({'; '.join(report.severity_reasons)})",
            f"- Resolved: {'yes' if report.resolved else 'no'}; time to triage {elapsed_s:.0f}s",
            "",
            "## Findings",
            "",
            *[f"- {'✅' if f.ok else '❌'} **{f.enricher}**: {f.title} {f.detail[:200]}" for f in report.findings],
            "",
            "## Actions",
            "",
            *actions,
            "",
            "## Timeline (from the run's events)",
            "",
            "| time (UTC) | event | detail |",
            "|---|---|---|",
            *timeline,
            "",
            "## Root cause",
            "",
            "_to be written by the incident commander_",
        ]
    )


async def publish_postmortem(report: TriageReport, started: float) -> str:
    """Write the post-mortem artifact (key ``incident-<id>``, redacted) and return its markdown."""
    since = datetime.fromtimestamp(started, UTC) - TIMELINE_LOOKBACK
    markdown = render_postmortem(report, time.time() - started, await read_timeline(report.incident_id, since))
    await publish_markdown(artifact_key(report.incident_id), markdown, f"{report.severity} {report.alert_name}")
    return markdown
