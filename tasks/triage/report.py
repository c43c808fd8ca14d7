"""The triage's typed record of one incident: what was found, decided and done (the flow's return value)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from tasks.triage.enrichers import Finding
from tasks.triage.mitigations import MitigationRecord
from tasks.triage.policy import Severity


class TriageReport(BaseModel):
    incident_id: str
    alert_name: str
    severity: Severity
    severity_reasons: list[str]
    facts: dict[str, Any]
    findings: list[Finding]
    mitigations: list[MitigationRecord] = Field(default_factory=list)
    slack_ts: str | None = None
    slack_channel: str | None = None
    resolved: bool = False

    @property
    def failing(self) -> list[str]:
        return [f.enricher for f in self.findings if not f.ok]

    @property
    def failed_mitigations(self) -> list[MitigationRecord]:
        return [m for m in self.mitigations if m.outcome == "failed"]

    @property
    def holds_hpa_floor(self) -> bool:
        """A scale-out raised an HPA's floor for this incident (given back when it resolves)."""
        return any(m.action == "scale_out" and m.outcome == "applied" for m in self.mitigations)


def incident_resource(incident_id: str) -> dict[str, str]:
    """The Prefect event resource of an incident (the gateway's events use the same id)."""
    return {"prefect.resource.id": f"runbooks.incident.{incident_id}"}


def artifact_key(incident_id: str) -> str:
    """The post-mortem artifact's stable key: ``incident-<id>`` (lower case, dashes)."""
    return f"incident-{re.sub(r'[^a-z0-9-]', '-', incident_id.lower())}"
