"""FastAPI double of the platform's HTTP API, for tests and sandbox runs of the runbook flows.

Start it with ``RUNBOOKS_PLATFORM_ADMIN_TOKEN=... uvicorn sandbox.platform_api.app:app``; in tests build one
with ``create_app(token, seed=..., clock=...)``. Handlers are ``async`` so state changes stay on the loop.
"""

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandbox.platform_api import models as m
from sandbox.platform_api.deployed import start_release_watcher
from sandbox.platform_api.state import VERSION, Clock, InvalidInput, NotFound, PlatformState

ADMIN_TOKEN_ENV = "RUNBOOKS_PLATFORM_ADMIN_TOKEN"
DESCRIPTION = """Sandbox double of the AI multi-model platform API.

Public endpoints report the simulated fleet; `/admin/*` changes it (Bearer admin token);
`/_sandbox/*` injects faults for scenario tests (same token). All state is in memory."""


class PrometheusResponse(PlainTextResponse):
    media_type = "text/plain; version=0.0.4; charset=utf-8"


class FrontendPage(HTMLResponse):
    media_type = "text/html; charset=utf-8"  # the header as sent, so the contract documents it as such


async def platform(request: Request) -> PlatformState:
    state: PlatformState = request.app.state.platform
    state.advance()
    return state


_bearer = HTTPBearer(auto_error=False, description="Admin token of the platform")


async def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> None:
    expected: bytes = request.app.state.admin_token
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(401, "missing or invalid admin token", headers={"WWW-Authenticate": "Bearer"})


State = Annotated[PlatformState, Depends(platform)]
ModelName = Annotated[str, Path(description="model name", examples=["gpt-4"])]
Hours = Annotated[int, Query(ge=1, le=720)]
Window = Annotated[str, Query(pattern=r"^[1-9][0-9]{0,3}[mhd]$", description="e.g. 30m, 1h, 24h, 7d")]
NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": m.ErrorResponse, "description": "Not found"}}
UNAUTHORIZED: dict[int | str, dict[str, object]] = {
    401: {"model": m.ErrorResponse, "description": "Missing or invalid admin token"}
}

public = APIRouter()
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)
frontend = APIRouter(prefix="/frontend", tags=["frontend"])
sandbox = APIRouter(prefix="/_sandbox", tags=["sandbox"], dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)


# ---- public -----------------------------------------------------------------------------------------


@public.get(
    "/health",
    tags=["health"],
    response_model=m.HealthResponse,
    responses={503: {"model": m.HealthResponse, "description": "Service down"}},
)
async def get_health(state: State, response: Response) -> m.HealthResponse:
    health = state.health()
    if health.status == "unhealthy":
        response.status_code = 503
    return health


@public.head("/health", tags=["health"], response_class=Response, responses={503: {"description": "Service down"}})
async def head_health(state: State) -> Response:
    return Response(status_code=503 if state.health().status == "unhealthy" else 200)


async def get_metrics(state: State) -> PrometheusResponse:
    """Prometheus text exposition: request counters, error rate, latency, CPU, memory, per-model gauges.

    While the ``service_down`` fault is on it answers 503, as a service that is down fails its scrapes (so
    Prometheus' ``up`` for the platform goes to 0)."""
    if state.faults.service_down:
        return PrometheusResponse("# service down\n", status_code=503)
    return PrometheusResponse(state.metrics())


for _path, _name in (("/metrics", "get_metrics"), ("/api/v1/metrics", "get_metrics_v1")):
    public.add_api_route(
        _path,
        get_metrics,
        name=_name,
        response_class=PrometheusResponse,
        tags=["metrics"],
        responses={503: {"description": "Service down (the service_down fault)"}},
    )


@public.get("/api/v1/models", tags=["models"])
async def list_models(state: State) -> m.ModelList:
    return state.model_list()


@public.get(
    "/api/v1/models/{name}/health",
    tags=["models"],
    response_model=m.HealthReport,
    responses={**NOT_FOUND, 503: {"model": m.HealthReport, "description": "Model (or every model) down"}},
)
async def get_model_health(
    name: Annotated[str, Path(description="model or provider name", examples=["gpt-4", "openai"])],
    state: State,
    response: Response,
) -> m.HealthReport:
    """Health of a model, or of all the models of a provider, from the last periodic checks."""
    report = state.model_health(name)
    if report.status == "down":
        response.status_code = 503
    return report


@public.get("/api/v1/models/{name}/test", tags=["models"], responses=NOT_FOUND)
async def run_model_test(name: ModelName, state: State) -> m.ProbeResult:
    """A live test call; a failure counts towards the model's circuit breaker."""
    return state.probe(name)


@public.get("/api/v1/load-balancer/status", tags=["load-balancer"])
async def get_load_balancer_status(state: State) -> m.LoadBalancerStatus:
    return state.lb_status()


@public.get("/api/v1/load-balancer/stats", tags=["load-balancer"])
async def get_load_balancer_stats(state: State) -> m.LoadBalancerStats:
    return state.lb_stats()


@public.get("/api/v1/load-balancer/config", tags=["load-balancer"])
async def get_load_balancer_config(state: State) -> m.LoadBalancerConfig:
    return state.lb_config()


@public.get("/api/v1/load-balancer/circuit-breakers", tags=["load-balancer"])
async def list_circuit_breakers(state: State) -> list[m.CircuitBreakerStatus]:
    return state.breakers()


@public.get("/api/v1/analytics/latency", tags=["analytics"])
async def get_latency(state: State, window: Window = "1h") -> m.LatencyReport:
    return state.latency(window)


@public.get("/api/v1/analytics/costs", tags=["analytics"])
async def get_costs(state: State, period: Window = "24h") -> m.CostReport:
    """Requests and cost per model over the period, projected from the current traffic split."""
    return state.costs(period)


@public.get("/api/v1/analytics/anomalies", tags=["analytics"])
async def get_anomalies(state: State, hours: Hours = 24) -> m.AnomalyReport:
    return state.anomalies(hours)


@public.get("/api/v1/analytics/top-users", tags=["analytics"])
async def get_top_users(state: State, hours: Hours = 24) -> m.TopUsers:
    return state.top_users(hours)


@public.get("/api/v1/analytics/summary", tags=["analytics"])
async def get_analytics_summary(state: State, period: Window = "7d") -> m.AnalyticsSummary:
    return state.summary(period)


@public.get("/api/v1/security/events", tags=["security"])
async def list_security_events(state: State, hours: Hours = 24) -> m.SecurityEvents:
    return state.security_events(hours)


@public.get("/api/v1/security/rate-limits", tags=["security"])
async def get_rate_limits(state: State) -> m.RateLimits:
    return state.rate_limits()


@public.get("/api/v2/summary.json", tags=["status"])
async def get_status_summary(state: State) -> m.StatusPageSummary:
    """statuspage.io-shaped summary; an incident is open while any fault is injected."""
    return state.status_page()


# ---- frontend ---------------------------------------------------------------------------------------
# The web frontend (ai-multimodel-frontend) is served by the double under /frontend: its health endpoint and its
# page, both down (503) while the service_down fault is on.

FRONTEND_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>AI Multi-Model Platform</title></head>
<body><h1>AI Multi-Model Platform</h1><p>Chat with GPT-4, Claude and Gemini from one place.</p></body>
</html>
"""
FRONTEND_DOWN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Service unavailable</title></head>
<body><h1>503 Service unavailable</h1></body></html>
"""


@frontend.get(
    "/health",
    response_model=m.FrontendHealth,
    responses={503: {"model": m.FrontendHealth, "description": "Frontend down (the service_down fault)"}},
)
async def get_frontend_health(state: State, response: Response) -> m.FrontendHealth:
    if state.faults.service_down:
        response.status_code = 503
        return m.FrontendHealth(status="down", version=VERSION)
    return m.FrontendHealth(status="ok", version=VERSION)


@frontend.get(
    "/",
    response_class=FrontendPage,
    responses={
        503: {"content": {FrontendPage.media_type: {"schema": {"type": "string"}}}, "description": "Frontend down"}
    },
)
async def get_frontend_page(state: State) -> FrontendPage:
    """The frontend's landing page (HTML, with a ``<title>``)."""
    if state.faults.service_down:
        return FrontendPage(FRONTEND_DOWN_PAGE, status_code=503)
    return FrontendPage(FRONTEND_PAGE)


# ---- admin ------------------------------------------------------------------------------------------


@admin.post("/circuit-breaker", responses=NOT_FOUND)
async def set_circuit_breaker(body: m.CircuitBreakerAction, state: State) -> m.CircuitBreakerStatus:
    return state.breaker_action(body)


@admin.post("/models/{name}/disable", responses=NOT_FOUND)
async def disable_model(name: ModelName, state: State) -> m.ModelInfo:
    return state.set_enabled(name, False)


@admin.post("/models/{name}/enable", responses=NOT_FOUND)
async def enable_model(name: ModelName, state: State) -> m.ModelInfo:
    return state.set_enabled(name, True)


@admin.get("/models/config")
async def list_model_configs(state: State) -> list[m.ModelConfig]:
    return state.model_configs()


@admin.get("/models/{name}/config", responses=NOT_FOUND)
async def get_model_config(name: ModelName, state: State) -> m.ModelConfig:
    return state.model_config(name)


@admin.patch("/models/{name}/config", responses=NOT_FOUND)
async def update_model_config(name: ModelName, body: m.ModelConfigUpdate, state: State) -> m.ModelConfig:
    return state.update_model_config(name, body)


@admin.post("/models/{name}/reconnect", responses=NOT_FOUND)
async def reconnect_model(name: ModelName, state: State) -> m.ProbeResult:
    return state.reconnect(name)


@admin.post("/models/{name}/fallback", responses=NOT_FOUND)
async def set_model_fallback(name: ModelName, body: m.FallbackRequest, state: State) -> m.ModelConfig:
    """Route the model's traffic to ``fallback_model`` for ``duration`` seconds."""
    return state.set_fallback(name, body)


@admin.post("/models/{name}/switch-endpoint", responses=NOT_FOUND)
async def switch_model_endpoint(name: ModelName, body: m.SwitchEndpointRequest, state: State) -> m.ModelConfig:
    return state.switch_endpoint(name, body)


@admin.patch("/load-balancer/config")
async def update_load_balancer_config(body: m.LoadBalancerConfigUpdate, state: State) -> m.LoadBalancerConfig:
    return state.update_lb_config(body)


@admin.patch("/load-balancer/weights")
async def update_load_balancer_weights(body: m.WeightsUpdate, state: State) -> m.LoadBalancerConfig:
    return state.update_weights(body.root)


@admin.post("/load-balancer/circuit-breakers/{name}/reset", responses=NOT_FOUND)
async def reset_circuit_breaker(name: ModelName, state: State) -> m.CircuitBreakerStatus:
    return state.reset_breaker(name)


@admin.get("/load-balancer/circuit-breakers/config")
async def get_circuit_breaker_config(state: State) -> m.CircuitBreakerConfig:
    return state.breaker_config


@admin.patch("/load-balancer/circuit-breakers/config")
async def update_circuit_breaker_config(body: m.CircuitBreakerConfig, state: State) -> m.CircuitBreakerConfig:
    """Partial update: fields left out keep their value."""
    return state.update_breaker_config(body.model_dump(exclude_unset=True))


@admin.post("/security/block-ip")
async def block_ip(body: m.BlockIpRequest, state: State) -> m.BlockedIp:
    return state.block_ip(body)


@admin.delete("/security/block-ip/{ip}")
async def unblock_ip(ip: str, state: State) -> m.Unblocked:
    """Lift a block before its duration ends (a reversal); lifting one that is not in force is a no-op."""
    return state.unblock_ip(ip)


@admin.delete("/users/{user_id}/throttle")
async def unthrottle_user(user_id: str, state: State) -> m.Unthrottled:
    """Lift a user's throttle (a reversal); no throttle in force is a no-op."""
    return state.unthrottle(user_id)


@admin.delete("/models/{name}/fallback", responses=NOT_FOUND)
async def clear_model_fallback(name: ModelName, state: State) -> m.ModelConfig:
    """End the model's fallback now (a reversal); none in force is a no-op."""
    return state.clear_fallback(name)


@admin.delete("/optimization/cost-strategy")
async def clear_cost_strategy(state: State) -> m.CostStrategy | None:
    """Back to routing without a cost strategy; answers the strategy that was in force, if any."""
    return state.clear_cost_strategy()


@admin.get("/api-keys")
async def list_api_keys(state: State, user_id: str | None = None) -> m.ApiKeyList:
    """The keys (never their secrets), of one user when ``user_id`` is given."""
    return state.list_keys(user_id)


@admin.post("/security/generate-report")
async def generate_security_report(body: m.ReportRequest, state: State) -> m.SecurityReport:
    return state.security_report(body)


@admin.post("/api-keys", status_code=201)
async def create_api_key(body: m.ApiKeyCreate, state: State) -> m.ApiKeyCreated:
    """Issue a key; the secret is returned only here."""
    return state.create_key(body)


@admin.delete("/api-keys/{key_id}", responses=NOT_FOUND)
async def revoke_api_key(key_id: str, state: State) -> m.ApiKeyRevocation:
    """Revoke a key; revoking it again answers 200 with ``already_revoked: true``."""
    return state.revoke_key(key_id)


@admin.get("/api-keys/{key_id}/usage", responses=NOT_FOUND)
async def get_api_key_usage(key_id: str, state: State, hours: Hours = 24) -> m.ApiKeyUsage:
    return state.key_usage(key_id, hours)


@admin.post("/audit/search")
async def search_audit(body: m.AuditSearch, state: State) -> m.AuditEvents:
    return state.audit_search(body)


@admin.post("/users/{user_id}/throttle", responses=NOT_FOUND)
async def throttle_user(user_id: str, body: m.ThrottleRequest, state: State) -> m.Throttle:
    return state.throttle(user_id, body)


@admin.post("/optimization/cost-strategy")
async def set_cost_strategy(body: m.CostStrategyRequest, state: State) -> m.CostStrategy:
    return state.set_cost_strategy(body)


@admin.post("/alerts/cost")
async def create_cost_alert(body: m.CostAlertRequest, state: State) -> m.CostAlert:
    return state.add_cost_alert(body)


# ---- sandbox fault injection ------------------------------------------------------------------------


@sandbox.get("/faults")
async def get_faults(state: State) -> m.FaultsStatus:
    return state.fault_status()


@sandbox.put("/faults")
async def update_faults(body: m.Faults, state: State) -> m.FaultsStatus:
    """Partial update: fields left out keep their value; ``leaked_key_id: null`` clears the leak."""
    return state.set_faults(state.faults.model_copy(update=body.model_dump(exclude_unset=True)))


@sandbox.delete("/faults")
async def clear_faults(state: State) -> m.FaultsStatus:
    return state.set_faults(m.Faults())


@sandbox.post("/reset")
async def reset_sandbox(state: State) -> m.FaultsStatus:
    """Back to the initial state: faults, models, keys, configs and logs."""
    state.reset()
    return state.fault_status()


@sandbox.get("/release")
async def get_release(state: State) -> m.ReleaseStatus:
    """What the double believes is deployed: ready API pods per image, read from the Kubernetes API about every
    second, and the release effect they add (the release catalogue, sandbox/releases.py). Observed, not injected:
    ``/_sandbox/reset`` leaves it alone."""
    return state.release


# ---- assembly ---------------------------------------------------------------------------------------


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    error = {"type": "value_error", "loc": exc.loc, "msg": exc.msg, "input": None}
    return await request_validation_exception_handler(request, RequestValidationError([error]))


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Follow what is deployed when RUNBOOKS_PLATFORM_KUBECONFIG names a kubeconfig (platform_api/deployed.py)."""
    state: PlatformState = app.state.platform
    watcher = start_release_watcher(state.observe_release, asyncio.get_running_loop())
    try:
        yield
    finally:
        if watcher is not None:
            watcher.stop()


def create_app(admin_token: str, *, seed: int = 7, clock: Clock = time.time) -> FastAPI:
    if not admin_token:
        raise ValueError("admin_token must not be empty")
    app = FastAPI(
        title="AI Multi-Model Platform API (sandbox)",
        version=VERSION,
        description=DESCRIPTION,
        generate_unique_id_function=lambda route: route.name,
        lifespan=_lifespan,
    )
    app.state.platform = PlatformState(seed, clock)
    app.state.admin_token = admin_token.encode()
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(InvalidInput, _invalid_input)
    for router in (public, frontend, admin, sandbox):
        app.include_router(router)
    return app


def __getattr__(name: str) -> FastAPI:
    """``app`` for ``uvicorn sandbox.platform_api.app:app``: built on first access, token from the env."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise RuntimeError(
            f"{ADMIN_TOKEN_ENV} is not set: export the admin token the sandbox API should accept "
            f"(e.g. {ADMIN_TOKEN_ENV}=$(openssl rand -hex 16)) and start it again"
        )
    built = globals()["app"] = create_app(token)
    return built
