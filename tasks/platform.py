"""Tasks on the AI platform's HTTP API (contract: sandbox/platform_api/openapi.json)."""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from blocks.platform import PlatformAPI
from kernel.errors import PlatformAPIError
from kernel.retry import idempotent_task, read_task
from tasks._http import platform_request


class MetricSample(BaseModel):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    value: float


def parse_prometheus(text: str) -> list[MetricSample]:
    """Parse the Prometheus text exposition format with Prometheus' own parser (escapes, ``}`` or ``,`` inside
    label values, timestamps); a body it cannot parse is a :class:`PlatformAPIError`."""
    try:
        return [
            MetricSample(name=s.name, labels=dict(s.labels), value=s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except ValueError as err:
        raise PlatformAPIError(
            f"/metrics is not in the Prometheus text format: {err}", hint="check the platform's metrics endpoint"
        ) from err


class EndpointHealth(BaseModel):
    url: str
    status_code: int
    healthy: bool
    status: str
    latency_ms: float


class PlatformMetrics(BaseModel):
    """The figures the runbook greps from /metrics: error rate, response time, CPU, memory, the V8 heap."""

    error_rate: float | None = None
    response_time_p95_s: float | None = None
    requests_total: float = 0.0
    requests_by_status: dict[str, float] = Field(default_factory=dict)
    cpu: float | None = None
    memory_bytes: float | None = None
    heap_used_bytes: float | None = Field(default=None, description="nodejs_heap_used_bytes (the seed's grep)")
    heap_total_bytes: float | None = Field(default=None, description="nodejs_heap_size_total_bytes")
    models_up: dict[str, bool] = Field(default_factory=dict)


#: summaries whose 0.95 quantile is the current p95 response time: the platform exposes the sliding-window one
#: beside its histogram ``http_response_time_seconds`` (whose counters since start-up cannot give a current p95
#: from a single scrape); a platform that exposes ``http_response_time_seconds`` as a summary is read too
RESPONSE_TIME_SUMMARIES = frozenset({"http_response_time_recent_seconds", "http_response_time_seconds"})


def summarize_metrics(samples: list[MetricSample]) -> PlatformMetrics:
    by_status: dict[str, float] = defaultdict(float)
    metrics = PlatformMetrics()
    for s in samples:
        if s.name == "http_requests_total":
            by_status[s.labels.get("status", "unknown")] += s.value
        elif s.name == "error_rate" and not s.labels:
            metrics.error_rate = s.value
        elif s.name in RESPONSE_TIME_SUMMARIES and s.labels.get("quantile") == "0.95":
            metrics.response_time_p95_s = s.value
        elif s.name in {"cpu_usage_ratio", "process_cpu_usage_ratio"}:
            metrics.cpu = s.value
        elif s.name == "process_resident_memory_bytes":
            metrics.memory_bytes = s.value
        elif s.name == "nodejs_heap_used_bytes":
            metrics.heap_used_bytes = s.value
        elif s.name == "nodejs_heap_size_total_bytes":
            metrics.heap_total_bytes = s.value
        elif s.name == "ai_model_up" and "model" in s.labels:
            metrics.models_up[s.labels["model"]] = s.value >= 1
    metrics.requests_by_status = dict(by_status)
    metrics.requests_total = sum(by_status.values())
    return metrics


class ModelStatus(BaseModel):
    name: str
    provider: str
    status: str
    error: str | None = None
    response_time: float | None = None
    error_rate: float | None = None


class ModelHealth(BaseModel):
    name: str
    healthy: bool
    status_code: int
    detail: dict[str, object] = Field(default_factory=dict)


class StatusPageSummary(BaseModel):
    indicator: str
    description: str
    open_incidents: int


@read_task
async def check_health(platform: PlatformAPI, path: str = "/health") -> EndpointHealth:
    """GET /health (``curl -f .../health``): 200 is healthy, 503 is an answer too (unhealthy)."""
    async with platform.get_client(admin=False) as client:
        started = time.perf_counter()
        response = await platform_request(client, "GET", path, expect=(200, 503))
        latency = (time.perf_counter() - started) * 1000
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return EndpointHealth(
        url=f"{platform.base_url}{path.lstrip('/')}",
        status_code=response.status_code,
        healthy=response.status_code == 200,
        status=str(body.get("status", "unknown")),
        latency_ms=round(latency, 1),
    )


@read_task
async def fetch_metrics(platform: PlatformAPI) -> PlatformMetrics:
    """GET /metrics and keep the error rate, response time, CPU and memory figures."""
    async with platform.get_client(admin=False) as client:
        response = await platform_request(client, "GET", "/metrics")
    return summarize_metrics(parse_prometheus(response.text))


@read_task
async def list_models(platform: PlatformAPI) -> list[ModelStatus]:
    """GET /api/v1/models."""
    async with platform.get_client(admin=False) as client:
        response = await platform_request(client, "GET", "/api/v1/models")
    return [ModelStatus.model_validate(m) for m in response.json()["models"]]


@read_task
async def check_model_health(platform: PlatformAPI, model: str) -> ModelHealth:
    """GET /api/v1/models/{model}/health: 200 healthy, 503 down."""
    async with platform.get_client(admin=False) as client:
        response = await platform_request(client, "GET", f"/api/v1/models/{model}/health", expect=(200, 503))
    return ModelHealth(
        name=model,
        healthy=response.status_code == 200,
        status_code=response.status_code,
        detail=response.json(),
    )


@read_task
async def get_status_page(platform: PlatformAPI) -> StatusPageSummary:
    """GET the status page's /api/v2/summary.json (pre-deployment check: no incident open)."""
    async with platform.get_status_page_client() as client:
        response = await platform_request(client, "GET", "/api/v2/summary.json")
    body = response.json()
    unresolved = [i for i in body.get("incidents", []) if i.get("status") != "resolved"]
    return StatusPageSummary(
        indicator=body["status"]["indicator"],
        description=body["status"]["description"],
        open_incidents=len(unresolved),
    )


class AnalyticsSummary(BaseModel):
    """``GET /api/v1/analytics/summary?period=7d``: the platform's own figures over the period."""

    period: str
    total_requests: int
    error_rate: float
    avg_latency_ms: float
    p95_latency_ms: float
    total_cost: float
    availability: float
    busiest_model: str | None = None
    costliest_model: str | None = None


@read_task
async def get_analytics_summary(platform: PlatformAPI, period: str = "7d") -> AnalyticsSummary:
    """The seed's ``curl -s .../api/v1/analytics/summary?period=7d | jq '.'``."""
    async with platform.get_client(admin=False) as client:
        response = await platform_request(client, "GET", "/api/v1/analytics/summary", params={"period": period})
    return AnalyticsSummary.model_validate(response.json())


class AdminResult(BaseModel):
    action: str
    target: str
    response: dict[str, object] = Field(default_factory=dict)


@idempotent_task
async def open_circuit_breaker(platform: PlatformAPI, model: str, duration_s: int = 300) -> AdminResult:
    """``POST /admin/circuit-breaker {"model", "action": "open", "duration"}``: opening an open breaker is a no-op."""
    async with platform.get_client() as client:
        response = await platform_request(
            client, "POST", "/admin/circuit-breaker", json={"model": model, "action": "open", "duration": duration_s}
        )
    return AdminResult(action="open_circuit_breaker", target=model, response=response.json())


@idempotent_task
async def set_model_fallback(
    platform: PlatformAPI, model: str, fallback_model: str, duration_s: int = 1800
) -> AdminResult:
    """``POST /admin/models/{model}/fallback``: send the model's traffic to ``fallback_model`` for a while."""
    async with platform.get_client() as client:
        response = await platform_request(
            client,
            "POST",
            f"/admin/models/{model}/fallback",
            json={"fallback_model": fallback_model, "duration": duration_s},
        )
    return AdminResult(action="set_model_fallback", target=model, response=response.json())
