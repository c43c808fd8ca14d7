"""Request and response models of the platform API: the OpenAPI contract is generated from these."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    RootModel,
    WithJsonSchema,
    model_validator,
)

from sandbox.platform_api.fleet import MODEL_NAMES


def _known_model(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return name


ModelName = Annotated[str, AfterValidator(_known_model), WithJsonSchema({"type": "string", "enum": list(MODEL_NAMES)})]
ModelStatus = Literal["active", "degraded", "down", "disabled"]
BreakerState = Literal["CLOSED", "OPEN", "HALF_OPEN"]
Algorithm = Literal["round_robin", "weighted", "least_connections", "least_response_time"]
Weight = Annotated[float, Field(ge=0, le=1)]
Seconds = Annotated[int, Field(ge=1, le=30 * 86400, description="seconds")]
SecurityEventType = Literal["unauthorized", "blocked", "threat", "rate_limited"]
Permission = Literal["read", "write", "ai_query", "admin"]
CheckStatus = Literal["ok", "degraded", "down"]
BackendState = Literal["routable", "down", "disabled", "circuit_open", "fallback"]
Severity = Literal["low", "medium", "high", "critical"]
ComponentStatus = Literal["operational", "degraded_performance", "partial_outage", "major_outage", "under_maintenance"]
Indicator = Literal["none", "minor", "major", "critical"]


class Request(BaseModel):
    """Request bodies reject unknown fields, so a typo is a 422 instead of a silent no-op."""

    model_config = ConfigDict(extra="forbid")


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})


# ---- requests ---------------------------------------------------------------------------------------


class CircuitBreakerAction(Request):
    model_config = _example({"model": "gpt-4", "action": "open", "duration": 300})
    model: ModelName
    action: Literal["open", "close"]
    duration: Seconds = 300


class ModelConfigUpdate(Request):
    model_config = _example({"timeout": 45000, "retry_attempts": 2})
    timeout: int | None = Field(None, ge=100, le=600_000, description="milliseconds")
    retry_attempts: int | None = Field(None, ge=0, le=10)


class FallbackRequest(Request):
    model_config = _example({"fallback_model": "claude-3-5-sonnet", "duration": 1800})
    fallback_model: ModelName
    duration: Seconds = 1800


class SwitchEndpointRequest(Request):
    model_config = _example({"region": "us-west-2"})
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")


class LoadBalancerConfigUpdate(Request):
    model_config = _example({"algorithm": "round_robin", "reset_stats": True})
    algorithm: Algorithm | None = None
    reset_stats: bool = False


class WeightsUpdate(RootModel[dict[ModelName, Weight]]):
    """Partial update: only the listed models change weight."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"gpt-4": 0.3, "claude-3-5-sonnet": 0.3}]})
    root: dict[ModelName, Weight] = Field(min_length=1)


class CircuitBreakerConfig(Request):
    model_config = _example({"failure_threshold": 3, "timeout": 30000, "retry_timeout": 300000})
    failure_threshold: int = Field(5, ge=1, le=100, description="failed checks before the breaker opens")
    timeout: int = Field(30_000, ge=100, le=600_000, description="call timeout, milliseconds")
    retry_timeout: int = Field(60_000, ge=1_000, le=86_400_000, description="OPEN -> HALF_OPEN after, ms")


class BlockIpRequest(Request):
    model_config = _example({"ip": "203.0.113.7", "duration": 3600, "reason": "Multiple unauthorized attempts"})
    ip: IPvAnyAddress
    duration: Seconds = 3600
    reason: str = Field(min_length=1, max_length=500)


class ReportRequest(Request):
    model_config = _example(
        {"type": "suspicious_activity", "start_time": "2024-01-01T00:00:00Z", "end_time": "2030-01-01T00:00:00Z"}
    )
    type: Literal["suspicious_activity", "unauthorized_access", "api_key_compromise", "full"]
    start_time: datetime
    end_time: datetime

    @model_validator(mode="after")
    def _ordered(self) -> "ReportRequest":
        if self.end_time <= self.start_time:
            raise ValueError("end_time must be after start_time")
        return self


class ApiKeyCreate(Request):
    model_config = _example({"user_id": "user-001", "name": "Replacement key", "permissions": ["read", "ai_query"]})
    user_id: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    name: str = Field(min_length=1, max_length=200)
    permissions: list[Permission] = Field(default=["read"], min_length=1)


class AuditSearch(Request):
    model_config = _example({"api_key_id": None, "hours": 72})
    api_key_id: str | None = None
    hours: int = Field(24, ge=1, le=720)


class ThrottleRequest(Request):
    model_config = _example({"rate_limit": 10, "duration": 3600})
    rate_limit: int = Field(ge=1, le=100_000, description="requests per minute")
    duration: Seconds = 3600


class CostStrategyRequest(Request):
    model_config = _example(
        {
            "strategy": "cost_efficient",
            "max_cost_per_request": 0.1,
            "prefer_models": ["claude-3-haiku", "gpt-3.5-turbo"],
        }
    )
    strategy: Literal["cost_efficient", "balanced", "performance"]
    max_cost_per_request: float | None = Field(None, gt=0)
    prefer_models: list[ModelName] = Field(default_factory=list)


class CostAlertRequest(Request):
    model_config = _example({"threshold": 100, "period": "daily", "action": "notify_and_throttle"})
    threshold: float = Field(gt=0, description="USD")
    period: Literal["hourly", "daily", "weekly", "monthly"]
    action: Literal["notify", "throttle", "notify_and_throttle"]


class Faults(Request):
    """Injected faults (sandbox only); PUT /_sandbox/faults takes any subset of the fields."""

    model_config = _example({"models_down": ["gpt-4"], "error_rate": 0.3})
    models_down: list[ModelName] = Field(default_factory=list)
    error_rate: float = Field(0.0, ge=0, le=1, description="added 5xx share")
    latency_ms: float = Field(0.0, ge=0, le=600_000, description="added latency, reported only")
    memory_growth_mb_per_min: float = Field(0.0, ge=0, le=100_000)
    leaked_key_id: str | None = None
    service_down: bool = False
    unauthorized_ips: list[IPvAnyAddress] = Field(
        default_factory=list,
        description="addresses sending requests with invalid keys (one per second each) until blocked",
    )
    slow_models: list[ModelName] = Field(
        default_factory=list,
        description="models whose provider endpoint in us-east-1 (the default region) answers 6 s slower; "
        "switching the model's endpoint to another region cures it",
    )
    spiking_user_id: str | None = Field(
        None,
        description="a user whose traffic spikes by 3,000 requests an hour (its first hour already counted), on its "
        "first key, until a throttle caps it",
    )
    expensive_models: list[ModelName] = Field(
        default_factory=list,
        description="models whose requests cost 3 times as much (a client sends long contexts); a cost strategy "
        "whose max_cost_per_request is under that price routes them no traffic",
    )
    skewed_weights: dict[ModelName, Weight] = Field(
        default_factory=dict,
        description="load-balancer weights a bad configuration push sets when the fault is turned on; a later "
        "weights update overrides them, and turning the fault off puts back the default of those still so",
    )
    stuck_breakers: list[ModelName] = Field(
        default_factory=list,
        description="models whose circuit breaker opens and stays OPEN (it never goes HALF_OPEN by itself) although "
        "the model answers; a reset closes it, and turning the fault off closes one still open",
    )


# ---- responses --------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    uptime_s: float
    checks: dict[str, CheckStatus]


class FrontendHealth(BaseModel):
    """The web frontend's own health endpoint (served by the double under ``/frontend``)."""

    status: Literal["ok", "down"]
    version: str


class ModelInfo(BaseModel):
    name: str
    provider: str
    status: ModelStatus
    last_check: datetime
    error: str | None
    response_time: float = Field(description="milliseconds")
    error_rate: float


class ModelList(BaseModel):
    models: list[ModelInfo]


class HealthReport(BaseModel):
    """Health of one model, or of every model of a provider when the path names a provider."""

    target: str
    kind: Literal["model", "provider"]
    status: ModelStatus
    response_time: float = Field(description="milliseconds, mean over the models")
    error_rate: float
    checked_at: datetime
    models: list[ModelInfo]


class ProbeResult(BaseModel):
    model: str
    ok: bool
    latency_ms: float
    error: str | None
    at: datetime


class Backend(BaseModel):
    model: str
    state: BackendState
    weight: float
    share: float


class LoadBalancerStatus(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    algorithm: Algorithm
    healthy_backends: int
    total_backends: int
    backends: list[Backend]


class LoadBalancerStats(BaseModel):
    algorithm: Algorithm
    since: datetime
    total_requests: int
    requests_per_second: float
    model_distribution: dict[str, float] = Field(description="current share of traffic per model")
    requests_by_model: dict[str, int]


class LoadBalancerConfig(BaseModel):
    algorithm: Algorithm
    weights: dict[str, float]
    health_check_interval_s: float


class CircuitBreakerStatus(BaseModel):
    model: str
    state: BreakerState
    failures: int
    opened_at: datetime | None
    open_until: datetime | None


class ModelLatency(BaseModel):
    name: str
    avg_latency: float
    p95_latency: float
    p99_latency: float


class LatencyReport(BaseModel):
    window: str
    models: list[ModelLatency]


class ModelCost(BaseModel):
    name: str
    total_cost: float
    cost_per_request: float
    requests: int


class CostReport(BaseModel):
    period: str
    total_cost: float
    models: list[ModelCost]


class Anomaly(BaseModel):
    kind: str
    severity: Severity
    subject: str
    detected_at: datetime
    detail: str
    api_key_id: str | None = None
    user_id: str | None = None


class AnomalyReport(BaseModel):
    hours: int
    anomalies: list[Anomaly]


class TopUser(BaseModel):
    user_id: str
    requests: int
    errors: int
    api_key_ids: list[str]


class TopUsers(BaseModel):
    hours: int
    users: list[TopUser]


class AnalyticsSummary(BaseModel):
    period: str
    total_requests: int
    error_rate: float
    avg_latency_ms: float
    p95_latency_ms: float
    total_cost: float
    availability: float
    busiest_model: str | None
    costliest_model: str | None


class SecurityEvent(BaseModel):
    type: SecurityEventType
    source_ip: str
    at: datetime
    api_key_id: str | None
    detail: str


class SecurityEvents(BaseModel):
    events: list[SecurityEvent]


class BlockedIp(BaseModel):
    ip: str
    until: datetime
    reason: str


class Throttle(BaseModel):
    user_id: str
    rate_limit: int
    until: datetime


class RateLimits(BaseModel):
    default_requests_per_minute: int
    throttled_users: list[Throttle]
    blocked_ips: list[BlockedIp]


class SecurityReport(BaseModel):
    id: str
    type: str
    start_time: datetime
    end_time: datetime
    generated_at: datetime
    total_events: int
    events_by_type: dict[str, int]
    unique_source_ips: int
    blocked_ips: list[str]
    suspicious_api_keys: list[str]


class ModelConfig(BaseModel):
    name: str
    provider: str
    enabled: bool
    timeout: int = Field(description="milliseconds")
    retry_attempts: int
    region: str
    endpoint: str
    api_key_status: Literal["valid", "invalid", "missing"]
    fallback_model: str | None
    fallback_until: datetime | None


class ApiKey(BaseModel):
    id: str
    user_id: str
    name: str
    permissions: list[str]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyList(BaseModel):
    keys: list[ApiKey]


class Unblocked(BaseModel):
    ip: str
    was_blocked: bool


class Unthrottled(BaseModel):
    user_id: str
    was_throttled: bool


class ApiKeyCreated(ApiKey):
    secret: str = Field(description="shown only in this response")


class ApiKeyRevocation(BaseModel):
    id: str
    revoked: bool
    revoked_at: datetime
    already_revoked: bool


class ApiKeyUsage(BaseModel):
    id: str
    user_id: str
    hours: int
    requests: int
    errors: int
    unique_source_ips: int
    revoked: bool
    last_used_at: datetime | None


class AuditEvent(BaseModel):
    id: str
    at: datetime
    actor: str
    action: str
    target: str
    api_key_id: str | None
    detail: dict[str, Any]


class AuditEvents(BaseModel):
    events: list[AuditEvent]


class CostStrategy(CostStrategyRequest):
    model_config = ConfigDict(json_schema_extra=None)
    applied_at: datetime


class CostAlert(CostAlertRequest):
    model_config = ConfigDict(json_schema_extra=None)
    id: str
    created_at: datetime
    triggered: bool = Field(description="spend in the current period already exceeds the threshold")


class FaultsStatus(Faults):
    model_config = ConfigDict(json_schema_extra=None)
    active: bool


class ReleaseStatus(BaseModel):
    """What the double believes is deployed (observed from the Kubernetes API, not injected): the ready pods of
    ``app=ai-multimodel-api`` per image, and the release effect added to the injected faults."""

    images: dict[str, int] = Field(default_factory=dict, description="ready pods per image")
    error_rate: float = Field(0.0, description="added 5xx share: the ready-pod-weighted mean of the releases'")
    latency_ms: float = Field(0.0, description="added mean latency: the ready-pod-weighted mean of the releases'")
    observed_at: datetime | None = Field(None, description="the last successful read of the pods")


class StatusPageInfo(BaseModel):
    id: str
    name: str
    url: str
    time_zone: str
    updated_at: datetime


class StatusIndicator(BaseModel):
    indicator: Indicator
    description: str


class StatusComponent(BaseModel):
    id: str
    name: str
    status: ComponentStatus
    updated_at: datetime


class StatusIncident(BaseModel):
    id: str
    name: str
    status: Literal["investigating", "identified", "monitoring", "resolved"]
    impact: Literal["minor", "major", "critical"]
    created_at: datetime
    updated_at: datetime


class StatusPageSummary(BaseModel):
    page: StatusPageInfo
    status: StatusIndicator
    components: list[StatusComponent]
    incidents: list[StatusIncident]
