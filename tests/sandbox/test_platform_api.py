"""Contract and behaviour tests of the platform API double, over real HTTP.

The app runs on a real uvicorn server on 127.0.0.1 (ephemeral port) with a fake clock; every operation in the
committed ``openapi.json`` is called and its answer validated against the documented schema.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from sandbox.platform_api import app as app_module
from sandbox.platform_api.app import ADMIN_TOKEN_ENV, create_app
from sandbox.platform_api.export_openapi import OPENAPI_PATH, render
from sandbox.platform_api.fleet import MODEL_NAMES
from sandbox.platform_api.state import PlatformState

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("2xx", "4xx", "5xx")
TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
START = 1_700_000_000.0
SPEC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
OPERATIONS = [(method.upper(), path) for path, item in SPEC["paths"].items() for method in item]
PROTECTED = [(method, path) for method, path in OPERATIONS if path.startswith(("/admin/", "/_sandbox/"))]


@pytest.fixture(scope="module")
def prefect_harness() -> None:
    """This module talks to its own HTTP server only: no Prefect test server needed (overrides conftest)."""


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def server(clock: FakeClock) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(TOKEN, clock=clock), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    assert httpx.get(f"{url}/health").status_code == 200
    yield url
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def api(server: str, clock: FakeClock) -> Iterator[httpx.Client]:
    """A client without credentials, on a freshly reset sandbox at the start time."""
    clock.now = START
    with httpx.Client(base_url=server, timeout=10) as client:
        client.post("/_sandbox/reset", headers=ADMIN).raise_for_status()
        yield client


@pytest.fixture
def admin(server: str, api: httpx.Client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=ADMIN, timeout=10) as client:
        yield client


# ---- helpers ----------------------------------------------------------------------------------------


def validate(schema: dict[str, Any], instance: Any) -> None:
    """Validate against a schema of the OpenAPI document, resolving ``#/components/...`` references."""
    Draft202012Validator({**schema, "components": SPEC["components"]}, format_checker=FormatChecker()).validate(
        instance
    )


def check_documented(method: str, path: str, response: httpx.Response) -> None:
    """The status code is documented for the operation and the body matches its schema."""
    documented = SPEC["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, f"{method} {path} -> undocumented {response.status_code}"
    content = documented[str(response.status_code)].get("content")
    if not content:
        assert response.content == b""
        return
    media_type = response.headers["content-type"]
    assert media_type in content, f"{media_type} not in {list(content)}"
    body = response.json() if media_type == "application/json" else response.text
    validate(content[media_type]["schema"], body)


def example_body(operation: dict[str, Any]) -> Any:
    """The example the contract documents for the request body (itself checked against the schema)."""
    if "requestBody" not in operation:
        return None
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    example = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]["examples"][0]
    validate(schema, example)
    return example


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample of /metrics, by name and (a subset of) its labels."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in client.get("/metrics").text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{")[0] == name and all(w in sample for w in wanted):
            return float(value)
    raise AssertionError(f"no sample {name}{labels}")


def model(client: httpx.Client, name: str) -> dict[str, Any]:
    return next(m for m in client.get("/api/v1/models").json()["models"] if m["name"] == name)


def breaker(client: httpx.Client, name: str) -> dict[str, Any]:
    return next(b for b in client.get("/api/v1/load-balancer/circuit-breakers").json() if b["model"] == name)


def distribution(client: httpx.Client) -> dict[str, float]:
    return client.get("/api/v1/load-balancer/stats").json()["model_distribution"]


def some_key(client: httpx.Client) -> tuple[str, str]:
    """(key id, user id) of a seeded key, found the way an operator would: from the top users."""
    user = client.get("/api/v1/analytics/top-users").json()["users"][0]
    return user["api_key_ids"][0], user["user_id"]


def set_faults(admin: httpx.Client, **faults: Any) -> dict[str, Any]:
    response = admin.put("/_sandbox/faults", json=faults)
    assert response.status_code == 200, response.text
    return response.json()


# ---- the contract -----------------------------------------------------------------------------------


def test_openapi_on_disk_is_what_the_app_generates(api: httpx.Client) -> None:
    assert OPENAPI_PATH.read_text() == render(), "run: python -m sandbox.platform_api.export_openapi"
    assert api.get("/openapi.json").json() == SPEC


def test_every_runbook_path_is_in_the_contract() -> None:
    runbook = {  # every platform URL that operational-runbooks.md curls, with its placeholders as path parameters
        "/health",
        "/metrics",
        "/api/v1/metrics",
        "/api/v1/models",
        "/api/v1/models/{name}/health",
        "/api/v1/models/{name}/test",
        "/api/v1/load-balancer/status",
        "/api/v1/load-balancer/stats",
        "/api/v1/load-balancer/config",
        "/api/v1/load-balancer/circuit-breakers",
        "/api/v1/analytics/latency",
        "/api/v1/analytics/costs",
        "/api/v1/analytics/anomalies",
        "/api/v1/analytics/top-users",
        "/api/v1/analytics/summary",
        "/api/v1/security/events",
        "/api/v1/security/rate-limits",
        "/api/v2/summary.json",
        "/admin/circuit-breaker",
        "/admin/models/{name}/disable",
        "/admin/models/config",
        "/admin/models/{name}/config",
        "/admin/models/{name}/reconnect",
        "/admin/models/{name}/fallback",
        "/admin/models/{name}/switch-endpoint",
        "/admin/load-balancer/config",
        "/admin/load-balancer/weights",
        "/admin/load-balancer/circuit-breakers/{name}/reset",
        "/admin/load-balancer/circuit-breakers/config",
        "/admin/security/block-ip",
        "/admin/security/generate-report",
        "/admin/api-keys",
        "/admin/api-keys/{key_id}",
        "/admin/api-keys/{key_id}/usage",
        "/admin/audit/search",
        "/admin/users/{user_id}/throttle",
        "/admin/optimization/cost-strategy",
        "/admin/alerts/cost",
    }
    assert runbook <= set(SPEC["paths"])


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_answers_as_documented(method: str, path: str, api: httpx.Client, admin: httpx.Client) -> None:
    operation = SPEC["paths"][path][method.lower()]
    protected = (method, path) in PROTECTED
    assert bool(operation.get("security")) == protected  # the contract says which operations need the token
    values = {"name": "gpt-4", "user_id": "user-001", "ip": "203.0.113.7"}
    if "{key_id}" in path:
        values["key_id"] = admin.post("/admin/api-keys", json={"user_id": "user-001", "name": "k"}).json()["id"]
    response = (admin if protected else api).request(method, path.format(**values), json=example_body(operation))
    success = min(code for code in operation["responses"] if code.startswith("2"))
    assert response.status_code == int(success), response.text
    check_documented(method, path, response)


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}])
def test_protected_operation_refuses_without_the_admin_token(
    method: str, path: str, headers: dict[str, str], api: httpx.Client
) -> None:
    response = api.request(
        method, path.format(name="gpt-4", key_id="key_x", user_id="user-001", ip="203.0.113.7"), headers=headers
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or invalid admin token"}
    check_documented(method, path, response)


def test_refused_mutation_changes_nothing(api: httpx.Client) -> None:
    assert api.post("/admin/models/gpt-4/disable").status_code == 401
    assert api.put("/_sandbox/faults", json={"service_down": True}).status_code == 401
    assert model(api, "gpt-4")["status"] == "active"
    assert api.get("/health").json()["status"] == "healthy"


# ---- faults show on the public endpoints ------------------------------------------------------------


def test_healthy_baseline(api: httpx.Client) -> None:
    assert api.get("/health").json()["status"] == "healthy"
    assert {m["status"] for m in api.get("/api/v1/models").json()["models"]} == {"active"}
    assert metric(api, "error_rate") < 0.05
    assert metric(api, "http_response_time_recent_seconds", quantile="0.95") < 2.0
    assert api.get("/api/v2/summary.json").json()["incidents"] == []
    assert api.get("/api/v1/analytics/anomalies").json()["anomalies"] == []
    assert api.get("/metrics").headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_model_down(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    baseline = metric(api, "error_rate")
    set_faults(admin, models_down=["gpt-4"])
    gpt4 = model(api, "gpt-4")
    assert gpt4["status"] == "down" and gpt4["error"] and gpt4["error_rate"] == 1.0
    health = api.get("/api/v1/models/gpt-4/health")
    assert health.status_code == 503 and health.json()["status"] == "down"
    check_documented("GET", "/api/v1/models/{name}/health", health)
    provider = api.get("/api/v1/models/openai/health")  # gpt-3.5-turbo still answers
    assert provider.status_code == 200 and provider.json()["status"] == "degraded"
    assert metric(api, "ai_model_up", model="gpt-4") == 0
    assert metric(api, "ai_model_up", model="gpt-3.5-turbo") == 1
    assert metric(api, "error_rate") > baseline + 0.2
    assert api.get("/api/v1/models/gpt-4/test").json()["ok"] is False
    assert api.get("/health").json()["checks"]["models"] == "degraded"
    status = api.get("/api/v2/summary.json").json()
    assert status["status"]["indicator"] == "major" and len(status["incidents"]) == 1

    clock.advance(60)  # the periodic health checks keep failing: the breaker trips and traffic moves away
    assert breaker(api, "gpt-4")["state"] == "OPEN"
    assert distribution(api)["gpt-4"] == 0
    assert metric(api, "error_rate") < baseline + 0.01

    admin.delete("/_sandbox/faults").raise_for_status()
    clock.advance(120)  # OPEN -> HALF_OPEN after retry_timeout, then a good check closes it
    assert breaker(api, "gpt-4")["state"] == "CLOSED"
    assert model(api, "gpt-4")["status"] == "active"
    assert api.get("/api/v2/summary.json").json()["incidents"] == []


def test_error_rate_fault(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    set_faults(admin, error_rate=0.3)
    assert metric(api, "error_rate") >= 0.3
    assert all(m["error_rate"] >= 0.3 and m["status"] == "degraded" for m in api.get("/api/v1/models").json()["models"])
    failed, served = (
        metric(api, "http_requests_total", status="5xx", model="claude-3-5-sonnet"),
        sum(metric(api, "http_requests_total", status=s, model="claude-3-5-sonnet") for s in ("2xx", "4xx", "5xx")),
    )
    clock.advance(600)
    failed_after = metric(api, "http_requests_total", status="5xx", model="claude-3-5-sonnet")
    served_after = sum(
        metric(api, "http_requests_total", status=s, model="claude-3-5-sonnet") for s in ("2xx", "4xx", "5xx")
    )
    assert (failed_after - failed) / (served_after - served) == pytest.approx(0.3, abs=0.02)
    assert api.get("/health").json()["status"] == "degraded"
    assert "error_rate_spike" in {a["kind"] for a in api.get("/api/v1/analytics/anomalies").json()["anomalies"]}


def test_service_down(api: httpx.Client, admin: httpx.Client) -> None:
    set_faults(admin, service_down=True)
    response = api.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "unhealthy"
    check_documented("GET", "/health", response)
    assert api.head("/health").status_code == 503
    assert api.get("/api/v2/summary.json").json()["status"]["indicator"] == "critical"
    assert api.get("/metrics").status_code == 503  # a service that is down fails its scrapes
    set_faults(admin, service_down=False)
    assert api.get("/health").status_code == 200 and api.head("/health").status_code == 200
    assert api.get("/metrics").status_code == 200


def test_frontend_health_and_page_go_down_with_the_service(api: httpx.Client, admin: httpx.Client) -> None:
    health, page = api.get("/frontend/health"), api.get("/frontend/")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["version"]
    assert page.status_code == 200 and "<title>AI Multi-Model Platform</title>" in page.text
    check_documented("GET", "/frontend/", page)
    set_faults(admin, service_down=True)
    health, page = api.get("/frontend/health"), api.get("/frontend/")
    assert health.status_code == 503 and health.json()["status"] == "down"
    assert page.status_code == 503 and "AI Multi-Model Platform" not in page.text
    check_documented("GET", "/frontend/health", health)
    check_documented("GET", "/frontend/", page)


def test_latency_fault(api: httpx.Client, admin: httpx.Client) -> None:
    before = {m["name"]: m["avg_latency"] for m in api.get("/api/v1/analytics/latency?window=1h").json()["models"]}
    p95 = metric(api, "http_response_time_recent_seconds", quantile="0.95")
    set_faults(admin, latency_ms=4000)
    after = {m["name"]: m["avg_latency"] for m in api.get("/api/v1/analytics/latency?window=1h").json()["models"]}
    assert all(after[n] == pytest.approx(before[n] + 4000) for n in MODEL_NAMES)
    assert metric(api, "http_response_time_recent_seconds", quantile="0.95") > p95 + 4
    assert {m["status"] for m in api.get("/api/v1/models").json()["models"]} == {"degraded"}


def test_memory_growth_fault(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    rss, heap = metric(api, "process_resident_memory_bytes"), metric(api, "nodejs_heap_used_bytes")
    set_faults(admin, memory_growth_mb_per_min=50)
    clock.advance(600)
    assert metric(api, "process_resident_memory_bytes") - rss == pytest.approx(500 * 2**20, rel=0.01)
    assert metric(api, "nodejs_heap_used_bytes") - heap == pytest.approx(500 * 2**20, rel=0.01)
    assert metric(api, "nodejs_heap_size_total_bytes") > metric(api, "nodejs_heap_used_bytes")


def test_leaked_key(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    key_id, user_id = some_key(api)
    assert all(u["requests"] < 1000 for u in api.get("/api/v1/analytics/top-users?hours=24").json()["users"])
    set_faults(admin, leaked_key_id=key_id)
    top = api.get("/api/v1/analytics/top-users?hours=24").json()["users"][0]
    assert top["user_id"] == user_id and top["requests"] > 1000
    anomalies = api.get("/api/v1/analytics/anomalies?hours=24").json()["anomalies"]
    assert any(a["kind"] == "api_key_traffic_spike" and a["api_key_id"] == key_id for a in anomalies)
    events = api.get("/api/v1/security/events").json()["events"]
    assert sum(e["api_key_id"] == key_id and e["type"] == "threat" for e in events) >= 10
    assert admin.get(f"/admin/api-keys/{key_id}/usage?hours=24").json()["requests"] > 1000

    admin.delete(f"/admin/api-keys/{key_id}").raise_for_status()  # the runbook: revoke, then look again
    clock.advance(2 * 3600)
    usage = admin.get(f"/admin/api-keys/{key_id}/usage?hours=1").json()
    assert usage["revoked"] and usage["requests"] == 0
    audit = admin.post("/admin/audit/search", json={"api_key_id": key_id, "hours": 72}).json()["events"]
    actions = {e["action"] for e in audit}
    assert {"api_key.revoke", "security.threat"} <= actions and all(e["api_key_id"] == key_id for e in audit)


def test_fault_update_is_partial_and_validated(admin: httpx.Client) -> None:
    set_faults(admin, error_rate=0.2)
    faults = set_faults(admin, latency_ms=100)
    assert faults["error_rate"] == 0.2 and faults["latency_ms"] == 100 and faults["active"]
    assert admin.put("/_sandbox/faults", json={"leaked_key_id": "key_nope"}).status_code == 422
    assert admin.put("/_sandbox/faults", json={"models_down": ["gpt-5"]}).status_code == 422
    assert admin.put("/_sandbox/faults", json={"error_rate": 1.5}).status_code == 422
    assert admin.delete("/_sandbox/faults").json()["active"] is False


# ---- admin mutations show on the public endpoints ---------------------------------------------------


def test_disable_and_enable_model(api: httpx.Client, admin: httpx.Client) -> None:
    assert admin.post("/admin/models/qwen/disable").json()["status"] == "disabled"
    assert model(api, "qwen")["status"] == "disabled"
    assert metric(api, "ai_model_up", model="qwen") == 0
    assert distribution(api)["qwen"] == 0
    assert admin.get("/admin/models/qwen/config").json()["enabled"] is False
    admin.post("/admin/models/qwen/enable").raise_for_status()
    assert model(api, "qwen")["status"] == "active" and distribution(api)["qwen"] > 0


def test_weights_and_algorithm(api: httpx.Client, admin: httpx.Client) -> None:
    config = admin.patch("/admin/load-balancer/weights", json={"gpt-4": 0.05, "deepseek": 0.5}).json()
    assert config["weights"]["gpt-4"] == 0.05 and config["weights"]["qwen"] == 0.08  # others unchanged
    assert api.get("/api/v1/load-balancer/config").json()["weights"] == config["weights"]
    shares = distribution(api)
    assert shares["deepseek"] > shares["gpt-4"] and sum(shares.values()) == pytest.approx(1, abs=1e-3)
    for bad in ({"gpt-4": 1.5}, {"gpt-5": 0.1}, {}, {"gpt-4": "heavy"}):
        assert admin.patch("/admin/load-balancer/weights", json=bad).status_code == 422, bad

    admin.patch(
        "/admin/load-balancer/config", json={"algorithm": "round_robin", "reset_stats": True}
    ).raise_for_status()
    stats = api.get("/api/v1/load-balancer/stats").json()
    assert stats["algorithm"] == "round_robin" and stats["total_requests"] == 0
    assert set(stats["model_distribution"].values()) == {round(1 / len(MODEL_NAMES), 4)}


def test_circuit_breaker_open_reset_and_expiry(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    opened = admin.post("/admin/circuit-breaker", json={"model": "gemini-pro", "action": "open", "duration": 300})
    assert opened.json()["state"] == "OPEN"
    assert breaker(api, "gemini-pro")["state"] == "OPEN" and distribution(api)["gemini-pro"] == 0
    lb = api.get("/api/v1/load-balancer/status").json()
    assert (
        lb["status"] == "degraded"
        and {"model": "gemini-pro", "state": "circuit_open"}.items()
        <= next(b for b in lb["backends"] if b["model"] == "gemini-pro").items()
    )
    assert admin.post("/admin/load-balancer/circuit-breakers/gemini-pro/reset").json()["state"] == "CLOSED"
    assert breaker(api, "gemini-pro")["state"] == "CLOSED"

    admin.post("/admin/circuit-breaker", json={"model": "qwen", "action": "open", "duration": 300}).raise_for_status()
    clock.advance(301)  # healthy model: HALF_OPEN when the duration ends, CLOSED after the next good check
    assert breaker(api, "qwen")["state"] == "CLOSED"
    admin.post("/admin/circuit-breaker", json={"model": "qwen", "action": "open"}).raise_for_status()
    closed = admin.post("/admin/circuit-breaker", json={"model": "qwen", "action": "close"}).json()
    assert closed["state"] == "CLOSED"


def test_circuit_breaker_config(admin: httpx.Client, api: httpx.Client, clock: FakeClock) -> None:
    patched = admin.patch("/admin/load-balancer/circuit-breakers/config", json={"failure_threshold": 2})
    assert patched.json() == {"failure_threshold": 2, "timeout": 30000, "retry_timeout": 60000}
    assert admin.get("/admin/load-balancer/circuit-breakers/config").json()["failure_threshold"] == 2
    set_faults(admin, models_down=["deepseek"])
    clock.advance(10)  # two failed checks are now enough
    assert breaker(api, "deepseek")["state"] == "OPEN"
    assert admin.patch("/admin/load-balancer/circuit-breakers/config", json={"failure_threshold": 0}).status_code == 422


def test_model_config_fallback_and_endpoint(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    admin.patch("/admin/models/gpt-4/config", json={"timeout": 45000, "retry_attempts": 2}).raise_for_status()
    configs = {c["name"]: c for c in admin.get("/admin/models/config").json()}
    assert configs["gpt-4"]["timeout"] == 45000 and configs["gpt-4"]["retry_attempts"] == 2
    assert configs["gpt-4"]["api_key_status"] == "valid"
    set_faults(admin, models_down=["gpt-4"])
    assert model(api, "gpt-4")["response_time"] == 45000  # a down model answers with its timeout

    before = distribution(api)
    fallback = admin.post(
        "/admin/models/gpt-4/fallback", json={"fallback_model": "claude-3-5-sonnet", "duration": 1800}
    )
    assert fallback.json()["fallback_model"] == "claude-3-5-sonnet"
    after = distribution(api)
    assert after["gpt-4"] == 0 and after["claude-3-5-sonnet"] == pytest.approx(
        before["claude-3-5-sonnet"] + before["gpt-4"], abs=1e-3
    )
    clock.advance(1801)
    assert admin.get("/admin/models/gpt-4/config").json()["fallback_model"] is None

    switched = admin.post("/admin/models/gpt-4/switch-endpoint", json={"region": "us-west-2"}).json()
    assert switched["region"] == "us-west-2" and "us-west-2" in switched["endpoint"]
    assert admin.post("/admin/models/gpt-4/reconnect").json()["ok"] is False  # still down
    admin.delete("/_sandbox/faults").raise_for_status()
    assert admin.post("/admin/models/gpt-4/reconnect").json()["ok"] is True


def test_api_keys_revocation_is_idempotent(admin: httpx.Client, api: httpx.Client) -> None:
    created = admin.post(
        "/admin/api-keys", json={"user_id": "user-002", "name": "Replacement key", "permissions": ["read", "ai_query"]}
    )
    assert created.status_code == 201
    key = created.json()
    assert key["secret"].startswith(key["prefix"]) and key["revoked_at"] is None
    assert (
        key["id"]
        in next(u for u in api.get("/api/v1/analytics/top-users").json()["users"] if u["user_id"] == "user-002")[
            "api_key_ids"
        ]
    )
    first = admin.delete(f"/admin/api-keys/{key['id']}")
    second = admin.delete(f"/admin/api-keys/{key['id']}")
    assert first.status_code == second.status_code == 200
    assert first.json()["already_revoked"] is False and second.json()["already_revoked"] is True
    assert first.json()["revoked_at"] == second.json()["revoked_at"]
    missing = admin.delete("/admin/api-keys/key_unknown")
    assert missing.status_code == 404 and "key_unknown" in missing.json()["detail"]
    assert admin.get("/admin/api-keys/key_unknown/usage").status_code == 404
    revocations = admin.post("/admin/audit/search", json={"api_key_id": key["id"]}).json()["events"]
    assert [e["action"] for e in revocations] == ["api_key.create", "api_key.revoke"]


def test_security_actions(api: httpx.Client, admin: httpx.Client) -> None:
    ip = next(
        e["source_ip"] for e in api.get("/api/v1/security/events").json()["events"] if e["type"] == "unauthorized"
    )
    admin.post(
        "/admin/security/block-ip", json={"ip": ip, "duration": 3600, "reason": "brute force"}
    ).raise_for_status()
    limits = api.get("/api/v1/security/rate-limits").json()
    assert [b["ip"] for b in limits["blocked_ips"]] == [ip]
    assert any(
        e["type"] == "blocked" and e["source_ip"] == ip for e in api.get("/api/v1/security/events").json()["events"]
    )
    admin.post("/admin/users/user-003/throttle", json={"rate_limit": 10, "duration": 3600}).raise_for_status()
    assert api.get("/api/v1/security/rate-limits").json()["throttled_users"][0]["rate_limit"] == 10
    assert admin.post("/admin/users/nobody/throttle", json={"rate_limit": 10}).status_code == 404
    report = admin.post(
        "/admin/security/generate-report",
        json={"type": "unauthorized_access", "start_time": "2023-11-13T00:00:00Z", "end_time": "2023-11-15T00:00:00Z"},
    ).json()
    assert report["events_by_type"]["unauthorized"] >= 1 and report["blocked_ips"] == [ip]


def test_unauthorized_ips_fault_stops_when_blocked_and_reversals(
    api: httpx.Client, admin: httpx.Client, clock: FakeClock
) -> None:
    def unauthorized(ip: str) -> int:
        events = api.get("/api/v1/security/events").json()["events"]
        return sum(1 for e in events if e["type"] == "unauthorized" and e["source_ip"] == ip)

    set_faults(admin, unauthorized_ips=["203.0.113.9"])
    clock.advance(10)
    before = unauthorized("203.0.113.9")
    assert before >= 60  # a new fault starts with a minute of history
    admin.post(
        "/admin/security/block-ip", json={"ip": "203.0.113.9", "duration": 3600, "reason": "t"}
    ).raise_for_status()
    clock.advance(30)
    assert unauthorized("203.0.113.9") == before  # a blocked address stops producing them
    assert admin.delete("/admin/security/block-ip/203.0.113.9").json() == {"ip": "203.0.113.9", "was_blocked": True}
    assert admin.delete("/admin/security/block-ip/203.0.113.9").json()["was_blocked"] is False
    clock.advance(5)
    assert unauthorized("203.0.113.9") > before  # unblocked: they come back
    admin.post("/admin/users/user-003/throttle", json={"rate_limit": 10, "duration": 60}).raise_for_status()
    assert admin.delete("/admin/users/user-003/throttle").json()["was_throttled"] is True
    assert api.get("/api/v1/security/rate-limits").json()["throttled_users"] == []
    admin.post("/admin/models/gpt-4/fallback", json={"fallback_model": "qwen", "duration": 60}).raise_for_status()
    assert admin.delete("/admin/models/gpt-4/fallback").json()["fallback_model"] is None
    admin.post("/admin/optimization/cost-strategy", json={"strategy": "cost_efficient"}).raise_for_status()
    assert admin.delete("/admin/optimization/cost-strategy").json()["strategy"] == "cost_efficient"
    assert admin.delete("/admin/optimization/cost-strategy").json() is None
    keys = admin.get("/admin/api-keys", params={"user_id": "user-001"}).json()["keys"]
    assert keys and {k["user_id"] for k in keys} == {"user-001"} and all("secret" not in k for k in keys)


def test_slow_model_is_cured_by_switching_its_endpoint(api: httpx.Client, admin: httpx.Client) -> None:
    def p95(name: str) -> float:
        rows = api.get("/api/v1/analytics/latency", params={"window": "1h"}).json()["models"]
        return float(next(r["p95_latency"] for r in rows if r["name"] == name))

    healthy = p95("qwen")
    set_faults(admin, slow_models=["qwen"])
    assert p95("qwen") > healthy + 6000 and p95("gpt-4") < healthy + 6000
    admin.post("/admin/models/qwen/switch-endpoint", json={"region": "us-west-2"}).raise_for_status()
    assert p95("qwen") == healthy
    admin.post("/admin/models/qwen/switch-endpoint", json={"region": "us-east-1"}).raise_for_status()
    assert p95("qwen") > healthy + 6000  # back in the slow region


def test_a_throttle_caps_the_users_rate(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    key_id, user_id = some_key(api)
    set_faults(admin, leaked_key_id=key_id)

    def last_hour() -> int:
        return int(admin.get(f"/admin/api-keys/{key_id}/usage", params={"hours": 1}).json()["requests"])

    free = last_hour()
    assert free > 2000  # the leak: about 2,400 an hour on top of the key's own traffic
    admin.post(f"/admin/users/{user_id}/throttle", json={"rate_limit": 10, "duration": 3600}).raise_for_status()
    clock.advance(3600)
    assert last_hour() <= 10 * 60 + 1  # a whole hour at 10 a minute
    admin.delete(f"/admin/users/{user_id}/throttle").raise_for_status()
    clock.advance(3600)
    assert last_hour() == pytest.approx(free, rel=0.05)  # lifted: the full rate again


def test_leaked_key_metrics(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    """ApiKeyLeak's figure: the leaked key's distinct source addresses; revoked, they are gone after the window."""
    key_id, user_id = some_key(api)
    assert metric(api, "ai_api_key_source_addresses", key_id=key_id) <= 3
    before = metric(api, "ai_api_key_requests_total", key_id=key_id, user_id=user_id)
    set_faults(admin, leaked_key_id=key_id)
    assert metric(api, "ai_api_key_source_addresses", key_id=key_id) > 40
    # its six hours of history were served: the counter takes them at once, then grows at the leak's rate
    assert metric(api, "ai_api_key_requests_total", key_id=key_id) - before >= 6 * 2400
    admin.delete(f"/admin/api-keys/{key_id}").raise_for_status()
    served = metric(api, "ai_api_key_requests_total", key_id=key_id)
    clock.advance(301)
    assert metric(api, "ai_api_key_source_addresses", key_id=key_id) == 0
    assert metric(api, "ai_api_key_requests_total", key_id=key_id) == served  # a revoked key serves nothing


def test_spiking_user_is_capped_by_a_throttle(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    """SuspiciousUsage's figure: one user's requests a day; a throttle caps their rate."""
    quiet = api.get("/api/v1/analytics/top-users?hours=24").json()["users"][-1]["user_id"]

    def served() -> float:
        return sum(
            metric(api, "ai_api_key_requests_total", key_id=k)
            for k in next(u for u in top() if u["user_id"] == quiet)["api_key_ids"]
        )

    def top() -> list[dict[str, Any]]:
        return list(api.get("/api/v1/analytics/top-users?hours=24").json()["users"])

    start = served()
    set_faults(admin, spiking_user_id=quiet)
    assert top()[0]["user_id"] == quiet and top()[0]["requests"] > 1000
    assert served() - start >= 3000  # its first hour, already served
    anomalies = api.get("/api/v1/analytics/anomalies?hours=24").json()["anomalies"]
    assert any(a["kind"] == "user_traffic_spike" and a["user_id"] == quiet for a in anomalies)
    start = served()
    clock.advance(600)
    assert served() - start >= 500  # 3,000 an hour
    admin.post(f"/admin/users/{quiet}/throttle", json={"rate_limit": 10, "duration": 3600}).raise_for_status()
    start = served()
    clock.advance(600)
    assert served() - start <= 10 * 10 + 1  # 10 a minute
    assert admin.put("/_sandbox/faults", json={"spiking_user_id": "nobody"}).status_code == 422


def test_cost_spike_goes_over_the_budget_and_the_strategy_brings_it_back(
    api: httpx.Client, admin: httpx.Client, clock: FakeClock
) -> None:
    """CostBudgetExceeded's figure: USD spent over requests served, both counters, against the policy's budget."""
    budget = yaml.safe_load((ROOT / "tasks" / "catalogue" / "policy.yaml").read_text())["cost_optimization"][
        "max_avg_cost_per_request"
    ]

    def cost_per_request() -> float:
        def totals() -> tuple[float, float]:
            usd = sum(metric(api, "ai_cost_usd_total", model=n) for n in MODEL_NAMES)
            requests = sum(metric(api, "http_requests_total", model=n, status=c) for n in MODEL_NAMES for c in CLASSES)
            return usd, requests

        usd0, req0 = totals()
        clock.advance(600)
        usd1, req1 = totals()
        return (usd1 - usd0) / (req1 - req0)

    assert cost_per_request() < budget  # the double's normal traffic is within the budget
    set_faults(admin, expensive_models=["gpt-4"])
    assert cost_per_request() > budget
    gpt4 = next(m for m in api.get("/api/v1/analytics/costs").json()["models"] if m["name"] == "gpt-4")
    assert gpt4["cost_per_request"] == pytest.approx(0.18)
    strategy = {"strategy": "cost_efficient", "max_cost_per_request": 0.10, "prefer_models": ["claude-3-haiku"]}
    admin.post("/admin/optimization/cost-strategy", json=strategy).raise_for_status()
    assert cost_per_request() < budget and distribution(api)["gpt-4"] == 0


def test_skewed_weight_and_stuck_breaker_faults(api: httpx.Client, admin: httpx.Client, clock: FakeClock) -> None:
    """LoadImbalance's and CircuitBreakerOpen's faults: a configuration push, a breaker that does not recover."""
    set_faults(admin, skewed_weights={"claude-3-5-sonnet": 1.0}, stuck_breakers=["gemini-pro"])
    assert metric(api, "ai_lb_model_share", model="claude-3-5-sonnet") > 0.5
    clock.advance(3600)
    assert breaker(api, "gemini-pro")["state"] == "OPEN" and metric(api, "ai_circuit_breaker_open", model="gemini-pro")
    assert api.get("/api/v1/models/gemini-pro/test").json()["ok"]  # the model answers: only its breaker is stuck
    assert admin.post("/admin/load-balancer/circuit-breakers/gemini-pro/reset").json()["state"] == "CLOSED"
    admin.patch("/admin/load-balancer/weights", json={"claude-3-5-sonnet": 0.3}).raise_for_status()
    assert metric(api, "ai_lb_model_share", model="claude-3-5-sonnet") < 0.5
    set_faults(admin, skewed_weights={}, stuck_breakers=[])  # off: a weight changed since is left alone
    assert api.get("/api/v1/load-balancer/config").json()["weights"]["claude-3-5-sonnet"] == 0.3
    set_faults(admin, skewed_weights={"qwen": 0.9}, stuck_breakers=["qwen"])
    set_faults(admin, skewed_weights={}, stuck_breakers=[])  # off: the default weight back, the breaker closed
    assert api.get("/api/v1/load-balancer/config").json()["weights"]["qwen"] == 0.08
    assert breaker(api, "qwen")["state"] == "CLOSED"


def test_audit_log_records_admin_mutations(admin: httpx.Client) -> None:
    admin.post("/admin/models/qwen/disable").raise_for_status()
    admin.patch("/admin/load-balancer/weights", json={"qwen": 0.2}).raise_for_status()
    admin.post(
        "/admin/optimization/cost-strategy", json={"strategy": "cost_efficient", "max_cost_per_request": 0.01}
    ).raise_for_status()
    admin.post("/admin/alerts/cost", json={"threshold": 1, "period": "daily", "action": "notify"}).raise_for_status()
    events = admin.post("/admin/audit/search", json={"hours": 1}).json()["events"]
    assert [e["action"] for e in events] == [
        "model.disable",
        "load_balancer.weights",
        "optimization.cost_strategy",
        "alerts.cost",
    ]


def test_cost_strategy_moves_traffic_to_cheap_models(api: httpx.Client, admin: httpx.Client) -> None:
    admin.post(
        "/admin/optimization/cost-strategy",
        json={"strategy": "cost_efficient", "max_cost_per_request": 0.01, "prefer_models": ["claude-3-haiku"]},
    ).raise_for_status()
    shares = distribution(api)
    assert shares["gpt-4"] == shares["claude-3-5-sonnet"] == 0  # above the cap
    assert shares["claude-3-haiku"] == max(shares.values())
    costs = api.get("/api/v1/analytics/costs?period=24h").json()
    assert {m["name"]: m["requests"] for m in costs["models"]}["gpt-4"] == 0


# ---- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/admin/circuit-breaker", {"model": "gpt-4", "action": "explode"}),
        ("POST", "/admin/circuit-breaker", {"model": "gpt-4", "action": "open", "duration": -1}),
        ("POST", "/admin/circuit-breaker", {"model": "problematic-model", "action": "open"}),
        ("POST", "/admin/circuit-breaker", None),
        ("PATCH", "/admin/models/gpt-4/config", {"timeout": "slow"}),
        ("PATCH", "/admin/models/gpt-4/config", {"timeuot": 100}),
        ("POST", "/admin/models/gpt-4/fallback", {"fallback_model": "gpt-4"}),
        ("POST", "/admin/models/gpt-4/switch-endpoint", {"region": "mars"}),
        ("POST", "/admin/security/block-ip", {"ip": "999.1.1.1", "reason": "x"}),
        (
            "POST",
            "/admin/security/generate-report",
            {"type": "full", "start_time": "2024-01-02T00:00:00Z", "end_time": "2024-01-01T00:00:00Z"},
        ),
        ("POST", "/admin/api-keys", {"name": "no user"}),
        ("POST", "/admin/api-keys", {"user_id": "u", "name": "k", "permissions": ["root"]}),
        ("POST", "/admin/audit/search", {"hours": 0}),
        ("POST", "/admin/alerts/cost", {"threshold": 100, "period": "daily", "action": "panic"}),
        ("GET", "/admin/api-keys/key_x/usage?hours=0", None),
        ("GET", "/api/v1/analytics/latency?window=forever", None),
        ("GET", "/api/v1/analytics/top-users?hours=-3", None),
    ],
)
def test_invalid_input_is_422(method: str, path: str, body: Any, admin: httpx.Client) -> None:
    response = admin.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


def test_malformed_json_is_422(admin: httpx.Client) -> None:
    response = admin.post("/admin/circuit-breaker", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/models/gpt-5/health"),
        ("GET", "/api/v1/models/gpt-5/test"),
        ("POST", "/admin/models/gpt-5/disable"),
        ("GET", "/admin/models/gpt-5/config"),
        ("POST", "/admin/load-balancer/circuit-breakers/gpt-5/reset"),
    ],
)
def test_unknown_model_is_404(method: str, path: str, admin: httpx.Client) -> None:
    response = admin.request(method, path)
    assert response.status_code == 404 and "gpt-5" in response.json()["detail"]


# ---- construction -----------------------------------------------------------------------------------


def test_state_is_deterministic_for_a_seed() -> None:
    def snapshot(seed: int) -> tuple[str, str]:
        state = PlatformState(seed, clock=lambda: START)
        return state.metrics(), state.model_list().model_dump_json() + state.top_users(24).model_dump_json()

    assert snapshot(7) == snapshot(7)
    assert snapshot(7) != snapshot(8)


def test_module_app_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    vars(app_module).pop("app", None)
    try:
        with pytest.raises(RuntimeError, match=f"{ADMIN_TOKEN_ENV} is not set"):
            getattr(app_module, "app")  # noqa: B009 - the attribute is built on first access
        monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
        built = getattr(app_module, "app")  # noqa: B009
        assert built is getattr(app_module, "app")  # noqa: B009 - built once
        assert built.state.platform.model_list().models
    finally:
        vars(app_module).pop("app", None)


def test_uvicorn_refuses_to_start_without_the_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "sandbox.platform_api.app:app", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode != 0 and f"{ADMIN_TOKEN_ENV} is not set" in done.stderr


def _histogram(api: httpx.Client) -> tuple[dict[float, float], float, float]:
    """The response-time histogram summed over the models: (cumulative count per bound, sum, count)."""
    from tasks.platform import parse_prometheus

    buckets: dict[float, float] = {}
    total = {"_sum": 0.0, "_count": 0.0}
    for s in parse_prometheus(api.get("/metrics").text):
        if s.name == "http_response_time_seconds_bucket":
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name.startswith("http_response_time_seconds_"):
            total[s.name.removeprefix("http_response_time_seconds")] += s.value
    return buckets, total["_sum"], total["_count"]


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """histogram_quantile over the increase between two scrapes (linear within a bucket, as Prometheus does)."""
    bounds = sorted(after)
    increase = [after[b] - before[b] for b in bounds]
    rank, lower, below = q * increase[-1], 0.0, 0.0
    for bound, count in zip(bounds, increase, strict=True):
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return bounds[-2]


def test_response_time_is_a_histogram_that_follows_latency(
    api: httpx.Client, admin: httpx.Client, clock: FakeClock
) -> None:
    admin.delete("/_sandbox/faults").raise_for_status()
    first, sum_1, count_1 = _histogram(api)
    assert count_1 == first[float("inf")]
    assert [first[k] for k in sorted(first)] == sorted(first.values())  # cumulative
    clock.advance(120)
    second, sum_2, count_2 = _histogram(api)
    assert count_2 > count_1 and sum_2 > sum_1  # the counters keep rising
    assert _quantile(0.95, first, second) < 1.5  # healthy: under the HighResponseTime threshold
    set_faults(admin, latency_ms=3000)
    clock.advance(120)
    third, _, _ = _histogram(api)
    assert _quantile(0.95, second, third) > 3.0  # over the severe threshold within one rate window
    admin.delete("/_sandbox/faults").raise_for_status()
