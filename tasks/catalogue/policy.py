"""The catalogue's policy (``tasks/catalogue/policy.yaml``), read at each run through :mod:`tasks.policyfile`."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from blocks.environment import EnvironmentKind
from tasks.policyfile import read_policy_file
from tasks.triage.policy import Mode, Modes, Severity

POLICY_PATH = Path(__file__).with_name("policy.yaml")


class UnauthorizedAccess(BaseModel):
    hours: int = Field(24, ge=1, le=720)
    min_events: int = Field(20, ge=1)
    block_s: int = Field(3600, ge=1)
    log_patterns: list[str] = Field(default_factory=lambda: ["UNAUTHORIZED", "BLOCKED", "THREAT"])
    log_tail: int = Field(2000, ge=1, le=100_000)


class SuspiciousUsage(BaseModel):
    hours: int = Field(24, ge=1, le=720)
    min_requests: int = Field(1000, ge=1, description="a user with more requests than this in `hours` is throttled")
    rate_limit: int = Field(10, ge=1, description="requests per minute while throttled (the seed's 10)")
    throttle_s: int = Field(3600, ge=1)
    log_patterns: list[str] = Field(default_factory=lambda: ["malware", "hack", "exploit", "vulnerability"])
    log_tail: int = Field(2000, ge=1, le=100_000)
    exempt_users: list[str] = Field(default_factory=list, description="users never throttled (internal load tests)")


class LoadBalance(BaseModel):
    max_share: float = Field(0.5, gt=0, le=1, description="a model serving more than this share is an imbalance")
    algorithm: str = "round_robin"
    weights: dict[str, float] = Field(default_factory=dict, description="the weights a rebalance sets")


class ModelLatency(BaseModel):
    window: str = "1h"
    p95_ms: float = Field(5000, gt=0, description="a model whose p95 is over this is slow")
    timeout_ms: int = Field(45000, ge=100, description="the seed's raised timeout")
    retry_attempts: int = Field(2, ge=0, le=10)
    weight: float = Field(0.05, ge=0, le=1, description="the seed's lowered weight")
    region: str = "us-west-2"
    hold_s: int = Field(3600, ge=1, description="how long the changes hold before they are reverted")


class CostOptimization(BaseModel):
    period: str = "24h"
    max_avg_cost_per_request: float = Field(0.025, gt=0, description="USD; above it the strategy is applied")
    strategy: dict[str, Any] = Field(
        default_factory=lambda: {
            "strategy": "cost_efficient",
            "max_cost_per_request": 0.10,
            "prefer_models": ["claude-3-haiku", "gpt-3.5-turbo"],
        }
    )
    alert: dict[str, Any] = Field(
        default_factory=lambda: {"threshold": 100, "period": "daily", "action": "notify_and_throttle"}
    )


class KeyCompromise(BaseModel):
    max_source_ips: int = Field(10, ge=1, description="more distinct addresses on a key in 5 minutes: leaked")
    usage_hours: int = Field(24, ge=1, le=720)
    audit_hours: int = Field(72, ge=1, le=720)
    replacement_name: str = "Replacement key - Security incident"
    permissions: list[str] = Field(default_factory=lambda: ["read", "ai_query"])


class ModelUnavailable(BaseModel):
    fallback_model: str = "claude-3-5-sonnet"
    fallback_s: int = Field(1800, ge=1)
    log_tail: int = Field(500, ge=1, le=100_000)


class CircuitBreakers(BaseModel):
    reset_after_test: bool = True
    thresholds: dict[str, int] = Field(
        default_factory=dict, description="the breakers' thresholds to hold (the seed's step 5); others are left"
    )


class CataloguePolicy(BaseModel):
    modes: dict[EnvironmentKind, Modes]
    approval_timeout_s: int = Field(900, ge=1)
    channels: dict[str, str] = Field(default_factory=lambda: {"default": "alerts"})
    platform_grace_s: int = Field(
        300, ge=0, description="a temporary action's own TTL on the platform runs this much past its expiry here"
    )
    allow_list: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    unauthorized_access: UnauthorizedAccess = Field(default_factory=UnauthorizedAccess)
    key_compromise: KeyCompromise = Field(default_factory=KeyCompromise)
    suspicious_usage: SuspiciousUsage = Field(default_factory=SuspiciousUsage)
    lb_rebalance: LoadBalance = Field(default_factory=LoadBalance)
    cost_optimization: CostOptimization = Field(default_factory=CostOptimization)
    model_latency: ModelLatency = Field(default_factory=ModelLatency)
    model_unavailable: ModelUnavailable = Field(default_factory=ModelUnavailable)
    circuit_breakers: CircuitBreakers = Field(default_factory=CircuitBreakers)

    def mode(self, kind: EnvironmentKind, severity: Severity = "P2") -> Mode:
        """The kind's mode for ``severity``; a kind the policy does not name asks for approval (never acts unasked)."""
        modes = self.modes.get(kind)
        return modes.for_severity(severity) if modes is not None else "approve"

    def channel(self, runbook: str) -> str:
        return self.channels.get(runbook) or self.channels.get("default", "alerts")

    def allowed(self, ip: str) -> str | None:
        """The allow-list entry that holds ``ip``, or None."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        return next((str(net) for net in self.allow_list if address in net), None)


def load_policy(path: Path | None = None) -> CataloguePolicy:
    return read_policy_file(CataloguePolicy, path or POLICY_PATH, "the catalogue policy")
