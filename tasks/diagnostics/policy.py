"""The diagnostics policy (``tasks/diagnostics/policy.yaml``): patterns, bounds and limits of the diagnostics flows.

Read at each run (:func:`load_policy`); a bad file is a :class:`PolicyError` naming the field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.policyfile import read_policy_file

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


class RedisPolicy(Strict):
    patterns: list[KeyPattern]
    scan: ScanBounds
    big_keys: BigKeys
    latency: LatencySampling
    limits: RedisLimits


class DiagnosticsPolicy(Strict):
    redis: RedisPolicy


def load_policy(path: Path = POLICY_PATH) -> DiagnosticsPolicy:
    """The policy as the file says now."""
    return read_policy_file(DiagnosticsPolicy, path, "the diagnostics policy")
