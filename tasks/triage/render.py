"""Slack texts and blocks of an incident: the first message, the thread's updates, the resolution."""

from __future__ import annotations

from typing import Any

from tasks import kubernetes as k8s
from tasks.triage.enrichers import Finding
from tasks.triage.mitigations import MitigationRecord
from tasks.triage.report import TriageReport


def headline(report: TriageReport) -> str:
    return f"🚨 {report.severity} INCIDENT: {report.alert_name}"


def incident_blocks(report: TriageReport, status: str) -> list[dict[str, Any]]:
    """Block Kit for the first message: incident, severity, status, why, then one line per finding."""
    lines = [f"{'✅' if f.ok else '❌'} *{f.enricher}*: {f.title}" for f in report.findings]
    return [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": (
                    f"*Incident*: {report.incident_id} — {report.alert_name}\n"
                    f"*Severity*: {report.severity}\n*Status*: {status}\n"
                    f"*Why*: {'; '.join(report.severity_reasons)[:500]}"
                ),
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
    ]


def mitigation_text(record: MitigationRecord) -> str:
    return f"🔧 {record.action} {record.target}: {record.outcome} {record.detail}"[:3000]


def approval_text(action: str, target: str, run_link: str, timeout_s: int) -> str:
    return (
        f"✋ APPROVAL NEEDED: {action} {target}. Approve or reject in the run: {run_link} "
        f"(no answer within {timeout_s}s is a denial)"
    )


def still_failing_text(smoke: list[Finding]) -> str:
    return "🔄 INCIDENT UPDATE — still failing: " + "; ".join(f"{f.enricher}: {f.title}" for f in smoke if not f.ok)


def resolved_text(report: TriageReport, elapsed_s: float) -> str:
    return f"✅ INCIDENT RESOLVED in {elapsed_s:.0f}s — actions: " + (
        ", ".join(f"{m.action} {m.target} ({m.outcome})" for m in report.mitigations) or "none"
    )


FLOOR_HELD_TEXT = "📌 The HPA floor stays raised until the alert resolves (incident-resolved lowers it)."


def released_text(released: list[k8s.FloorRelease]) -> str:
    if not released:
        return "📉 No HPA floor was held for this incident."
    return "📉 " + "; ".join(
        f"HPA {r.hpa}: bounds back to {r.min_replicas}..{r.max_replicas}, it scales in at its own pace"
        if r.restored
        else f"HPA {r.hpa}: floor kept for {', '.join(r.remaining_incidents)}"
        for r in released
    )


def alert_cleared_text(alert_name: str, incident_id: str, released: list[k8s.FloorRelease]) -> str:
    return f"✅ RESOLVED {alert_name} ({incident_id}): the alert cleared. {released_text(released)}"
