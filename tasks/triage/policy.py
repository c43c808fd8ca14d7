"""The triage policy (``tasks/triage/policy.yaml``): thresholds, severity from facts, escalation, mitigation rules.

The one source of the platform's thresholds: the incident triage and the system-health-check both read them here.
Read at each run (:func:`load_policy`), never cached for the process: an edited policy applies to the next run.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from blocks.environment import EnvironmentKind

Severity = Literal["P0", "P1", "P2", "P3"]
Action = Literal["rollback", "restart", "scale_out", "open_circuit_breaker"]
#: how a triage decides: act, pause for a human's approval in the UI, or describe only
Mode = Literal["auto", "approve", "observe"]
POLICY_PATH = Path(__file__).with_name("policy.yaml")

_OPS: dict[str, Any] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda a, b: a in b,
}


class Condition(BaseModel):
    fact: str
    op: Literal["==", "!=", ">", ">=", "<", "<=", "in"]
    value: Any

    def holds(self, facts: dict[str, Any]) -> bool:
        value = facts.get(self.fact)
        if value is None:
            return False
        try:
            return bool(_OPS[self.op](value, self.value))
        except TypeError:
            return False


class Thresholds(BaseModel):
    """Figures over which the platform is not healthy (``error_rate``, ``response_time_p95_s``) or severely
    degraded (``severe_*``). A figure that is missing (not exposed) is not held against the platform."""

    error_rate: float = Field(ge=0, le=1)
    response_time_p95_s: float = Field(gt=0)
    severe_error_rate: float = Field(ge=0, le=1)
    severe_response_time_p95_s: float = Field(gt=0)
    redis_ping_ms: float = Field(gt=0)

    def error_rate_ok(self, value: float | None) -> bool:
        return value is None or value <= self.error_rate

    def response_time_ok(self, value: float | None) -> bool:
        return value is None or value <= self.response_time_p95_s


class Measurements(BaseModel):
    """How the figures are read from Prometheus, where the environment has one (else from the API's /metrics).

    PromQL, one figure each: the thresholds above are compared with what these return.
    """

    error_rate: str = 'sum(rate(http_requests_total{status=~"5.."}[2m])) / sum(rate(http_requests_total[2m]))'
    response_time_p95_s: str = "histogram_quantile(0.95, sum by (le) (rate(http_response_time_seconds_bucket[2m])))"


class SeverityRule(BaseModel):
    severity: Severity
    any: list[Condition] = Field(min_length=1)


class Escalation(BaseModel):
    response: str
    slack: str
    pagerduty: str | None
    opsgenie: str | None
    contacts: list[str]


class MitigationRule(BaseModel):
    allowed: bool = Field(description="may this severity take actions at all (else they are only described)")


class Mitigation(BaseModel):
    P0: MitigationRule
    P1: MitigationRule
    P2: MitigationRule
    P3: MitigationRule
    recent_rollout_s: int = 7200
    scale_out_replicas: int = 10
    circuit_breaker_duration_s: int = 300
    fallback_model: str

    def for_severity(self, severity: Severity) -> MitigationRule:
        rule: MitigationRule = getattr(self, severity)
        return rule


class Modes(BaseModel):
    """One environment kind's modes: ``default``, and the severities that differ from it."""

    default: Mode
    P0: Mode | None = None
    P1: Mode | None = None
    P2: Mode | None = None
    P3: Mode | None = None

    def for_severity(self, severity: Severity) -> Mode:
        mode: Mode | None = getattr(self, severity)
        return mode or self.default


class AlertBranch(BaseModel):
    mitigations: list[Action]


class TriagePolicy(BaseModel):
    thresholds: Thresholds
    measurements: Measurements = Field(default_factory=Measurements)
    severity_rules: list[SeverityRule]
    escalation: dict[Severity, Escalation]
    mitigation: Mitigation
    modes: dict[EnvironmentKind, Modes]
    alerts: dict[str, AlertBranch]

    def severity(self, facts: dict[str, Any]) -> tuple[Severity, list[str]]:
        """The first rule that matches, and which conditions made it match (for the report)."""
        for rule in self.severity_rules:
            why = [f"{c.fact} {c.op} {c.value!r} (is {facts.get(c.fact)!r})" for c in rule.any if c.holds(facts)]
            if why:
                return rule.severity, why
        return "P3", ["no rule matched"]

    def mode(self, kind: EnvironmentKind, severity: Severity) -> Mode:
        """How a triage of ``severity`` decides in an environment of ``kind``: a severity whose mitigations are
        not allowed only observes; a kind the policy does not name asks for approval (never acts unasked)."""
        if not self.mitigation.for_severity(severity).allowed:
            return "observe"
        modes = self.modes.get(kind)
        return modes.for_severity(severity) if modes is not None else "approve"

    def branch(self, alert_name: str) -> AlertBranch:
        return self.alerts.get(alert_name) or self.alerts["default"]


def load_policy(path: Path = POLICY_PATH) -> TriagePolicy:
    """The policy as the file says now (read at each run: no process-wide cache)."""
    return TriagePolicy.model_validate(yaml.safe_load(path.read_text()))
