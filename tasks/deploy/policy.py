"""The deploy policy (``tasks/deploy/policy.yaml``): preflight limits, rollout fail-fast rules, load, gates, approval.

Read at each run (:func:`load_deploy_policy`). The gates' figures are measured as the triage measures them and their
``healthy`` limits are the triage policy's thresholds (:mod:`tasks.triage.policy`): one source for both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.policyfile import read_policy_file
from tasks.triage.policy import TriagePolicy

POLICY_PATH = Path(__file__).with_name("policy.yaml")
_RANGE = re.compile(r"\[[0-9]+[smhd]\]")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Preflight(Strict):
    max_node_cpu_percent: float = Field(gt=0, le=100)
    max_node_memory_percent: float = Field(gt=0, le=100)
    bad_pod_statuses: list[str]
    backup_parts: list[str]
    expected_duration_min: int = Field(ge=1)


class RolloutRules(Strict):
    timeout_s: float = Field(gt=0)
    poll_s: float = Field(gt=0, le=30)
    max_new_pod_restarts: int = Field(ge=1)
    failing_reasons: list[str]


class LoadSpec(Strict):
    rate_per_s: float = Field(gt=0, le=1000)
    duration_s: float = Field(ge=0, le=3600)
    paths: list[str] = Field(min_length=1)
    max_error_rate: float = Field(ge=0, le=1)
    max_p95_ms: float = Field(gt=0)


class MetricGate(Strict):
    """A figure measured before and after the rollout, with an absolute and/or a relative limit."""

    name: str
    measurement: Literal["error_rate", "response_time_p95_s"]
    window_s: int = Field(ge=10, le=3600)
    max: float | Literal["healthy"] | None = None
    max_increase: float | None = Field(default=None, ge=0)
    max_relative_increase: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_a_limit(self) -> MetricGate:
        if self.max is None and self.max_increase is None and self.max_relative_increase is None:
            raise ValueError(f"gate {self.name!r} has no limit: set max, max_increase or max_relative_increase")
        return self

    def query(self, triage: TriagePolicy, window_s: int | None = None) -> str:
        """The triage's PromQL for this figure, over this gate's window (or ``window_s``)."""
        promql = getattr(triage.measurements, self.measurement)
        return _RANGE.sub(f"[{window_s or self.window_s}s]", promql)

    def absolute_max(self, triage: TriagePolicy) -> float | None:
        if self.max == "healthy":
            return float(getattr(triage.thresholds, self.measurement))
        return self.max


class LogGate(Strict):
    name: str
    pattern: str
    max_lines: int = Field(ge=0)


class ApprovalRules(Strict):
    timeout_s: int = Field(ge=10, le=86400)
    poll_s: float = Field(ge=1, le=60)


class DeployPolicy(Strict):
    deployments: dict[str, str] = Field(min_length=1, description="role (api, frontend) -> Deployment name")
    preflight: Preflight
    rollout: RolloutRules
    load: LoadSpec
    gates: list[MetricGate]
    logs: list[LogGate]
    approval: ApprovalRules


def load_deploy_policy(path: Path = POLICY_PATH) -> DeployPolicy:
    """The policy as the file says now; a bad file is a :class:`PolicyError` naming the field."""
    return read_policy_file(DeployPolicy, path, "the deploy policy")
