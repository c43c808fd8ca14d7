"""The diagnostics policy (``tasks/diagnostics/policy.yaml``): patterns, bounds and limits of the diagnostics flows.

Read at each run (:func:`load_policy`); a bad file is a :class:`PolicyError` naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from blocks.environment import EnvironmentKind
from tasks.policyfile import read_policy_file

#: how a runbook decides an action: act, pause for a typed answer in the UI (no answer: denied), or describe only
Mode = Literal["auto", "approve", "observe"]

POLICY_PATH = Path(__file__).with_name("policy.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyPattern(Strict):
    name: str
    match: str = Field(min_length=1, description="a Redis glob (SCAN MATCH syntax)")
    expect_ttl: bool = False


class ScanBounds(Strict):
    count: int = Field(ge=10, le=100_000)
    max_keys: int = Field(ge=1)
    max_seconds: float = Field(gt=0, le=600)
    max_latency_ms: float = Field(gt=0)
    backoff_ms: float = Field(ge=0, le=5000)


class BigKeys(Strict):
    sample_every: int = Field(ge=1)
    max_samples: int = Field(ge=0)
    top: int = Field(ge=1, le=100)


class LatencySampling(Strict):
    duration_s: float = Field(gt=0, le=60)
    interval_ms: float = Field(ge=1, le=1000)
    max_p99_ms: float = Field(gt=0)


class RedisLimits(Strict):
    max_fragmentation_ratio: float = Field(gt=1)
    max_memory_used_ratio: float = Field(gt=0, le=1)
    min_hit_ratio: float = Field(ge=0, le=1)
    min_lookups: int = Field(ge=0)
    max_evicted_keys: int = Field(ge=0)
    maxmemory_policy: list[str] = Field(min_length=1)


class Modes(Strict):
    """How an action is decided per environment kind; a kind not named asks for approval."""

    sandbox: Mode = "auto"
    staging: Mode = "approve"
    production: Mode = "approve"

    def for_kind(self, kind: EnvironmentKind) -> Mode:
        mode: Mode = getattr(self, kind, "approve")
        return mode


class KeyDeletion(Strict):
    scan_count: int = Field(ge=10, le=100_000, description="SCAN COUNT per call")
    batch: int = Field(ge=1, le=10_000, description="keys per UNLINK")
    max_keys: int = Field(ge=1, description="a pattern matching more is refused (narrow it)")


class RedisMaintenance(Strict):
    maxmemory_policy: str = Field(description="the value a report tells to ask for when the server's is not in limits")
    bgsave_timeout_s: float = Field(gt=0, le=7200)
    bgsave_poll_s: float = Field(gt=0, le=60)
    delete: KeyDeletion
    modes: Modes
    approval_timeout_s: int = Field(ge=10, le=86_400)


class RedisPolicy(Strict):
    patterns: list[KeyPattern]
    scan: ScanBounds
    big_keys: BigKeys
    latency: LatencySampling
    limits: RedisLimits
    maintenance: RedisMaintenance


class PostgresLimits(Strict):
    max_connections_percent: float = Field(gt=0, le=100)
    min_cache_hit_ratio: float = Field(ge=0, le=1)
    long_running_s: float = Field(gt=0)
    idle_in_transaction_s: float = Field(gt=0)


class PostgresReads(Strict):
    top: int = Field(ge=1, le=100)
    large_table_bytes: int = Field(ge=0)
    statement_timeout_s: float = Field(gt=0, le=600)


class MaintenanceWindow(Strict):
    """When REINDEX may run: ``days`` (mon..sun) from ``start_hour`` for ``hours`` (UTC)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start_hour: int = Field(ge=0, le=23)
    hours: float = Field(gt=0, le=24)

    def contains(self, at: datetime) -> bool:
        at = at.astimezone(UTC)
        names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        for back in (0, 1):  # a window that began yesterday may still be open
            day = at - timedelta(days=back)
            if names[day.weekday()] not in self.days:
                continue
            start = day.replace(hour=self.start_hour, minute=0, second=0, microsecond=0)
            if start <= at < start + timedelta(hours=self.hours):
                return True
        return False


class PostgresPerformance(Strict):
    long_query_s: float = Field(gt=0)
    min_blocked_s: float = Field(ge=0)
    cancel_wait_s: float = Field(gt=0, le=300)
    terminate: bool
    max_actions: int = Field(ge=1, le=100)
    protected_applications: list[str]
    modes: Modes
    approval_timeout_s: int = Field(ge=10, le=86_400)
    reindex_min_bloat_percent: float = Field(gt=0, le=100)
    reindex_min_pages: int = Field(ge=1)
    maintenance_window: MaintenanceWindow


class PostgresPolicy(Strict):
    reads: PostgresReads
    limits: PostgresLimits
    performance: PostgresPerformance


class DiagnosticsPolicy(Strict):
    redis: RedisPolicy
    postgres: PostgresPolicy


def load_policy(path: Path = POLICY_PATH) -> DiagnosticsPolicy:
    """The policy as the file says now."""
    return read_policy_file(DiagnosticsPolicy, path, "the diagnostics policy")
