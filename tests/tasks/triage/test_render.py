"""Slack texts of an incident."""

from __future__ import annotations

import json

from tasks.kubernetes import FloorRelease
from tasks.triage.enrichers import Finding
from tasks.triage.mitigations import MitigationRecord
from tasks.triage.render import incident_blocks, released_text, resolved_text, still_failing_text
from tasks.triage.report import TriageReport, artifact_key

REPORT = TriageReport(
    incident_id="inc-42",
    alert_name="ModelDown",
    severity="P2",
    severity_reasons=["models_down > 0 (is 1)"],
    facts={},
    findings=[
        Finding(enricher="models", ok=False, title="1 model(s) down: qwen"),
        Finding(enricher="health", ok=True, title="/health 200 healthy"),
    ],
    mitigations=[
        MitigationRecord(action="open_circuit_breaker", target="qwen", key="k", outcome="applied"),
    ],
)


def test_first_message_names_incident_severity_and_each_finding() -> None:
    text = json.dumps(incident_blocks(REPORT, "INVESTIGATING"), ensure_ascii=False)
    assert "inc-42" in text and "*Severity*: P2" in text and "INVESTIGATING" in text
    assert "❌ *models*: 1 model(s) down: qwen" in text and "✅ *health*" in text


def test_thread_texts() -> None:
    assert still_failing_text(REPORT.findings) == "🔄 INCIDENT UPDATE — still failing: models: 1 model(s) down: qwen"
    assert resolved_text(REPORT, 61.4) == "✅ INCIDENT RESOLVED in 61s — actions: open_circuit_breaker qwen (applied)"
    assert released_text([]) == "📉 No HPA floor was held for this incident."
    kept = FloorRelease(
        hpa="api",
        namespace="production",
        deployment="api",
        incident="inc-42",
        restored=False,
        min_replicas=10,
        max_replicas=20,
        remaining_incidents=["inc-7"],
    )
    assert "floor kept for inc-7" in released_text([kept])
    assert artifact_key("Inc_42/X") == "incident-inc-42-x"
