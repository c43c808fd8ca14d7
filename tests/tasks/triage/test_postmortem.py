"""The post-mortem: its markdown, and its timeline read back from Prefect's events with Prefect's client."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tasks.reporting import emit
from tasks.triage.enrichers import Finding
from tasks.triage.mitigations import MitigationRecord
from tasks.triage.postmortem import read_timeline, render_postmortem
from tasks.triage.report import TriageReport, incident_resource


def test_postmortem_markdown() -> None:
    report = TriageReport(
        incident_id="inc-9",
        alert_name="HighErrorRate",
        severity="P1",
        severity_reasons=["error_rate > 0.1 (is 0.2)"],
        facts={},
        findings=[Finding(enricher="metrics", ok=False, title="error rate 0.2", detail="by status")],
        mitigations=[MitigationRecord(action="rollback", target="api", key="inc-9:rollback:api", outcome="applied")],
        resolved=True,
    )
    row = "| 10:00:00 | `runbooks.incident.triaged` |  |"
    text = render_postmortem(report, 42.4, [row])
    assert text.startswith("# Post-mortem inc-9: HighErrorRate")
    assert "- Resolved: yes; time to triage 42s" in text
    assert "- ❌ **metrics**: error rate 0.2 by status" in text
    assert "- rollback api: **applied**  (key `inc-9:rollback:api`, by incident-triage)" in text
    assert row in text.split("## Timeline")[1]


@pytest.mark.usefixtures("prefect_harness")
async def test_timeline_comes_from_the_incidents_events() -> None:
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    since = datetime.now(UTC) - timedelta(minutes=1)
    emit("runbooks.incident.triaged", incident_resource(incident), {"severity": "P2"})
    emit(
        "runbooks.mitigation.applied",
        incident_resource(incident),
        {"action": "scale_out", "target": "api", "outcome": "applied"},
    )
    emit("runbooks.incident.triaged", incident_resource("some-other-incident"), {})
    rows: list[str] = []
    for _ in range(60):  # events are stored asynchronously
        rows = await read_timeline(incident, since)
        if len(rows) == 2:
            break
        await asyncio.sleep(0.5)
    assert [r.split("|")[2].strip() for r in rows] == ["`runbooks.incident.triaged`", "`runbooks.mitigation.applied`"]
    assert "scale_out api applied" in rows[1]
