"""The gateway's ASGI app: authenticate, validate, deduplicate, store, answer 202; deliver events behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_settings import BaseSettings, SettingsConfigDict

from kernel.redact import quote_body
from runbooks.gateway.models import (
    AlertmanagerWebhook,
    GenericAlert,
    GrafanaWebhook,
    NormalizedAlert,
    PayloadJsonSchema,
)
from runbooks.gateway.store import GatewayStore, Outcome

logger = logging.getLogger("runbooks.gateway")
MAX_BODY = 1_000_000
NEW_EVENT_ACTIONS = frozenset({"opened", "resolved"})  # the outcomes that put an event in the outbox


class GatewaySettings(BaseSettings):
    """``RUNBOOKS_GATEWAY_*``: at least one of ``token`` or ``hmac_secret`` must be set."""

    model_config = SettingsConfigDict(env_prefix="RUNBOOKS_GATEWAY_", extra="ignore")

    token: SecretStr | None = None
    hmac_secret: SecretStr | None = None
    signature_window_s: float = 300.0
    db_path: Path = Path.home() / ".local" / "state" / "runbooks" / "gateway.sqlite3"
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    # Prefect Cloud's (or an authenticating proxy's) key, sent as ``Authorization: Bearer``; read from PREFECT_API_KEY
    # (Prefect's own variable, no RUNBOOKS_GATEWAY_ prefix) and never logged
    prefect_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("prefect_api_key", "PREFECT_API_KEY")
    )
    delivery_interval_s: float = 0.5
    max_backoff_s: float = 30.0
    # delivered events are kept this long (to answer "was it sent?"), then pruned every ``prune_interval_s``
    delivered_retention_s: float = 7 * 24 * 3600.0
    prune_interval_s: float = 3600.0
    # gc.freeze() once started: what start-up made lives as long as the process, so keep it out of every later
    # GC pass. Process-wide, so only for a process that is the gateway (``runbooks gateway serve``); an app built
    # inside another process (tests, an embedding server) sets it off.
    freeze_gc: bool = True


class Accepted(BaseModel):
    accepted: int
    incidents: list[dict[str, str]]


class Problem(BaseModel):
    """A 401, 409 or 413: what is wrong, in words."""

    detail: str


class ValidationIssue(BaseModel):
    """One of pydantic's errors (without the input, which may hold what the sender would not have echoed)."""

    model_config = ConfigDict(extra="allow")
    type: str
    loc: list[str | int]
    msg: str


class ValidationProblem(BaseModel):
    """A 422: the body is not JSON (type ``json_invalid``) or not the endpoint's payload."""

    detail: list[ValidationIssue]


# The OpenAPI description. The endpoints read the raw body and validate it in one pass (pydantic-core, no
# intermediate dict), so FastAPI does not see a body parameter: the request bodies, the security schemes and the
# 4xx answers are declared here.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "RUNBOOKS_GATEWAY_TOKEN"},
    "signature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Runbooks-Signature",
        "description": 'sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with RUNBOOKS_GATEWAY_HMAC_SECRET>',
    },
    "timestamp": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Runbooks-Timestamp",
        "description": "unix seconds, within the signature window; each signature is accepted once",
    },
}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"signature": [], "timestamp": []}]
AUTH_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no credentials, a wrong token, a bad or stale signature"},
    409: {"model": Problem, "description": "a replayed request: this signature was already used"},
}
BODY_ANSWERS: dict[int | str, dict[str, Any]] = {
    **AUTH_ANSWERS,
    413: {"model": Problem, "description": f"a body over {MAX_BODY} bytes"},
    422: {"model": ValidationProblem, "description": "not JSON, or not the endpoint's payload"},
}
PAYLOADS: tuple[type[BaseModel], ...] = (AlertmanagerWebhook, GrafanaWebhook, GenericAlert)


def _described(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of an alert endpoint: its body (a component schema) and its authentication."""
    body = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    return {"requestBody": {"required": True, "content": {"application/json": body}}, "security": SECURITY}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = document.setdefault("components", {})
        _, definitions = models_json_schema(
            [(model, "validation") for model in PAYLOADS],
            ref_template="#/components/schemas/{model}",
            schema_generator=PayloadJsonSchema,
        )
        components.setdefault("schemas", {}).update(definitions.get("$defs", {}))
        components["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = document
    return app.openapi_schema


def _authenticate(settings: GatewaySettings, store: GatewayStore, request: Request, body: bytes) -> None:
    auth = request.headers.get("authorization", "")
    if settings.token is not None and auth.startswith("Bearer "):
        if hmac.compare_digest(auth.removeprefix("Bearer ").encode(), settings.token.get_secret_value().encode()):
            return
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    signature = request.headers.get("x-runbooks-signature", "")
    stamp = request.headers.get("x-runbooks-timestamp", "")
    if settings.hmac_secret is not None and signature and stamp:
        try:
            age = abs(time.time() - float(stamp))
        except ValueError:
            raise HTTPException(401, "X-Runbooks-Timestamp must be unix seconds") from None
        if age > settings.signature_window_s:
            raise HTTPException(401, f"timestamp outside the {settings.signature_window_s:.0f}s window")
        expected = (
            "sha256="
            + hmac.new(
                settings.hmac_secret.get_secret_value().encode(), stamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise HTTPException(401, "bad signature")
        if not store.remember_signature(signature, settings.signature_window_s * 2):
            raise HTTPException(409, "replayed request: this signature was already used")
        return
    raise HTTPException(
        401,
        "send Authorization: Bearer <token> or X-Runbooks-Timestamp and X-Runbooks-Signature",
        headers={"WWW-Authenticate": "Bearer"},
    )


def sign(secret: str, body: bytes, stamp: float | None = None) -> dict[str, str]:
    """The headers a sender adds (used by tests, benchmarks and senders written in Python)."""
    ts = str(int(stamp if stamp is not None else time.time()))
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Runbooks-Timestamp": ts, "X-Runbooks-Signature": f"sha256={digest}"}


class Committer:
    """Group commit on a writer thread of its own: requests that arrive while a transaction is being written wait for
    the next one, so one fsync acknowledges many alerts. Each request still gets its 202 only after its own alerts
    are committed (see ``GatewayStore`` on why a commit is durable).

    A plain thread and a ``SimpleQueue`` rather than ``asyncio.to_thread`` per batch: the event loop only enqueues
    (no task switch, no executor hop per request) and is called back once per transaction."""

    def __init__(self, store: GatewayStore, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[list[NormalizedAlert], asyncio.Future[list[Outcome]]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._write_forever, name="gateway-committer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commits what was submitted before, then ends the writer thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    async def submit(self, alerts: list[NormalizedAlert]) -> list[Outcome]:
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._queue.put((alerts, future))
        return await future

    def _write_forever(self) -> None:
        assert self._loop is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            try:
                results: list[list[Outcome]] | BaseException = self.store.accept_batches(
                    [alerts for alerts, _ in batch]
                )
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error (a 500), none is lost
                results = err
            self._loop.call_soon_threadsafe(_settle, [future for _, future in batch], results)
            if stopping:
                return


def _settle(futures: list[asyncio.Future[list[Outcome]]], results: list[list[Outcome]] | BaseException) -> None:
    for i, future in enumerate(futures):
        if future.done():  # the request was cancelled (client gone); its alerts are committed all the same
            continue
        if isinstance(results, BaseException):
            future.set_exception(results)
        else:
            future.set_result(results[i])


# Prefect refusing the request itself, not one of its events: every part of the batch would be refused alike
REQUEST_REFUSALS = frozenset({401, 403, 404, 405})


def is_refusal(status: int) -> bool:
    """A 4xx that repeating will not change (408 and 429 are "later", not "no")."""
    return 400 <= status < 500 and status not in (408, 429)


class Deliverer:
    """Sends the outbox to Prefect's ``POST /api/events``; backs off while Prefect is down or busy (connection errors,
    408, 429, 5xx), never drops. An event Prefect refuses (another 4xx) goes to the dead letters, so it never blocks
    the alerts behind it: a refused batch is split in halves until the refused events are alone."""

    def __init__(self, store: GatewayStore, settings: GatewaySettings) -> None:
        self.store = store
        self.settings = settings
        self.wake = asyncio.Event()
        self._failures = 0
        self._backoff_s = 0.0
        self._next_prune = 0.0

    def notify(self) -> None:
        """New events are in the outbox. Ignored while backing off: Prefect is down and they keep till the retry."""
        self.wake.set()

    def client(self) -> httpx.AsyncClient:
        headers = {}
        if self.settings.prefect_api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.prefect_api_key.get_secret_value()}"
        return httpx.AsyncClient(timeout=10, headers=headers)

    async def run(self) -> None:
        async with self.client() as client:
            while True:
                await self.prune_if_due()
                delivered = await self.deliver_once(client)
                if delivered:
                    continue
                if self._failures:
                    await asyncio.sleep(self._backoff_s)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.settings.delivery_interval_s)
                self.wake.clear()

    async def prune_if_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.settings.prune_interval_s
        pruned = await asyncio.to_thread(self.store.prune, self.settings.delivered_retention_s)
        if pruned:
            logger.info("pruned %d delivered event(s) older than %.0fs", pruned, self.settings.delivered_retention_s)

    async def deliver_once(self, client: httpx.AsyncClient) -> int:
        """One batch of the outbox sent; returns how many events left it (delivered or dead-lettered)."""
        batch = await asyncio.to_thread(self.store.due)
        if not batch:
            return 0
        settled: set[int] = set()
        try:
            await self._send(client, batch, settled)
        except httpx.HTTPError as err:  # transient: connection errors, timeouts, 408, 429, 5xx
            rest = [row_id for row_id, _ in batch if row_id not in settled]
            self._failures += 1
            self._backoff_s = min(self.settings.max_backoff_s, 0.5 * 2 ** min(self._failures, 6))
            await asyncio.to_thread(self.store.failed, rest, f"{type(err).__name__}: {err}", self._backoff_s)
            logger.warning(
                "Prefect unreachable (%s); %d event(s) kept, retry in %.1fs", err, len(rest), self._backoff_s
            )
            return len(settled)
        self._failures = 0
        return len(batch)

    async def _send(self, client: httpx.AsyncClient, rows: list[tuple[int, dict[str, Any]]], settled: set[int]) -> None:
        ids = [row_id for row_id, _ in rows]
        response = await client.post(
            f"{self.settings.prefect_api_url.rstrip('/')}/events", json=[event for _, event in rows]
        )
        if response.is_success:
            await asyncio.to_thread(self.store.delivered, ids)
            settled.update(ids)
            return
        if not is_refusal(response.status_code):
            response.raise_for_status()
        if len(rows) > 1 and response.status_code not in REQUEST_REFUSALS:
            half = len(rows) // 2  # the good events of a refused batch are still delivered
            await self._send(client, rows[:half], settled)
            await self._send(client, rows[half:], settled)
            return
        await asyncio.to_thread(self.store.dead_letter, ids, response.status_code, quote_body(response.text))
        settled.update(ids)
        logger.error(
            "Prefect refused %d event(s) with %d; moved to the dead letters (`runbooks gateway status`, `replay`)",
            len(ids),
            response.status_code,
        )


class GatewayMetrics:
    """The gateway's own figures, in a registry of this app's (prometheus_client, not a hand-written exposition)."""

    def __init__(self, store: GatewayStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.alerts = Counter(
            "runbooks_gateway_alerts",
            "Alerts accepted, by source (alertmanager, grafana, generic) and outcome (opened, resolved, ...).",
            ["source", "action"],
            registry=self.registry,
        )
        outbox = Gauge(
            "runbooks_gateway_outbox_events",
            "Events to Prefect by state: pending, delivered (kept for the retention), dead (refused by Prefect).",
            ["state"],
            registry=self.registry,
        )
        self._store = store
        self._outbox = outbox

    def count(self, source: str, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.alerts.labels(source, outcome.action).inc()

    def render(self) -> bytes:
        counts = self._store.counts()
        for state, value in (
            ("pending", counts.pending),
            ("delivered", counts.delivered),
            ("dead", counts.dead_lettered),
        ):
            self._outbox.labels(state).set(value)
        return generate_latest(self.registry)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    if settings.token is None and settings.hmac_secret is None:
        raise ValueError("set RUNBOOKS_GATEWAY_TOKEN or RUNBOOKS_GATEWAY_HMAC_SECRET: the gateway never runs open")
    store = GatewayStore(settings.db_path)
    deliverer = Deliverer(store, settings)
    committer = Committer(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        committer.start()
        delivery = asyncio.create_task(deliverer.run())
        if settings.freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery
            committer.stop()
            store.close()

    app = FastAPI(title="runbooks alert gateway", version="1.0.0", lifespan=lifespan)
    metrics = GatewayMetrics(store)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.store = store
    app.state.deliverer = deliverer

    async def receive(request: Request, parse: Any) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"body over {MAX_BODY} bytes")
        _authenticate(settings, store, request, body)
        try:
            # JSON parsed and validated in one pass by pydantic-core (no intermediate Python dict)
            alerts: list[NormalizedAlert] = parse(body)
        except ValidationError as err:  # invalid JSON is a ValidationError too (type json_invalid)
            # through pydantic's JSON: a validator's ValueError in ``ctx`` does not serialise (a 500 schemathesis found)
            raise HTTPException(422, json.loads(err.json(include_url=False, include_input=False))) from err
        outcomes = await committer.submit(alerts)
        metrics.count(request.url.path.rsplit("/", 1)[-1], outcomes)
        if any(o.action in NEW_EVENT_ACTIONS for o in outcomes):
            deliverer.notify()
        # the Accepted shape, built directly: the response needs no second validation
        incidents = [{"incident_id": o.incident_id, "fingerprint": o.fingerprint, "action": o.action} for o in outcomes]
        return JSONResponse({"accepted": len(alerts), "incidents": incidents}, status_code=202)

    @app.post(
        "/alerts/alertmanager",
        status_code=202,
        response_model=Accepted,
        responses=BODY_ANSWERS,
        openapi_extra=_described(AlertmanagerWebhook),
    )
    async def alertmanager(request: Request) -> JSONResponse:
        return await receive(request, lambda raw: AlertmanagerWebhook.model_validate_json(raw).normalize())

    @app.post(
        "/alerts/grafana",
        status_code=202,
        response_model=Accepted,
        responses=BODY_ANSWERS,
        openapi_extra=_described(GrafanaWebhook),
    )
    async def grafana(request: Request) -> JSONResponse:
        return await receive(request, lambda raw: GrafanaWebhook.model_validate_json(raw).normalize())

    @app.post(
        "/alerts/generic",
        status_code=202,
        response_model=Accepted,
        responses=BODY_ANSWERS,
        openapi_extra=_described(GenericAlert),
    )
    async def generic(request: Request) -> JSONResponse:
        return await receive(request, lambda raw: GenericAlert.model_validate_json(raw).normalize())

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus text: alerts received by source and outcome, and the outbox by state (scraped by the
        sandbox's Prometheus; no credentials, as for /healthz: nothing in it is secret)."""
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pending_events": await asyncio.to_thread(store.pending)}

    @app.get("/incidents", responses=AUTH_ANSWERS, openapi_extra={"security": SECURITY})
    async def incidents(request: Request, status: str | None = None) -> list[dict[str, Any]]:
        _authenticate(settings, store, request, b"")
        return await asyncio.to_thread(store.incidents, status)

    return app
