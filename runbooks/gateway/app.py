"""The gateway's ASGI app: authenticate, validate, deduplicate, store, answer 202; deliver events behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runbooks.gateway.models import AlertmanagerWebhook, GenericAlert, GrafanaWebhook, NormalizedAlert
from runbooks.gateway.store import GatewayStore

logger = logging.getLogger("runbooks.gateway")
MAX_BODY = 1_000_000


class GatewaySettings(BaseSettings):
    """``RUNBOOKS_GATEWAY_*``: at least one of ``token`` or ``hmac_secret`` must be set."""

    model_config = SettingsConfigDict(env_prefix="RUNBOOKS_GATEWAY_", extra="ignore")

    token: SecretStr | None = None
    hmac_secret: SecretStr | None = None
    signature_window_s: float = 300.0
    db_path: Path = Path.home() / ".local" / "state" / "runbooks" / "gateway.sqlite3"
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    delivery_interval_s: float = 0.5
    max_backoff_s: float = 30.0


class Accepted(BaseModel):
    accepted: int
    incidents: list[dict[str, str]]


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
    """Group commit: requests that arrive while a transaction is being written wait for the next one, so one fsync
    acknowledges many alerts. Each request still gets its 202 only after its own alerts are committed."""

    def __init__(self, store: GatewayStore, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[list[NormalizedAlert], asyncio.Future[list[Any]]]] = asyncio.Queue()

    async def submit(self, alerts: list[NormalizedAlert]) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self.queue.put((alerts, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < self.max_batch:
                batch.append(self.queue.get_nowait())
            try:
                results = await asyncio.to_thread(self.store.accept_batches, [alerts for alerts, _ in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error (a 500), none is lost
                for _, future in batch:
                    future.set_exception(err)
                continue
            for (_, future), outcomes in zip(batch, results, strict=True):
                future.set_result(outcomes)


class Deliverer:
    """Sends the outbox to Prefect's ``POST /api/events``; backs off while Prefect is down, never drops."""

    def __init__(self, store: GatewayStore, settings: GatewaySettings) -> None:
        self.store = store
        self.settings = settings
        self.wake = asyncio.Event()
        self._failures = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                delivered = await self.deliver_once(client)
                if not delivered:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.settings.delivery_interval_s)
                    self.wake.clear()

    async def deliver_once(self, client: httpx.AsyncClient) -> int:
        batch = await asyncio.to_thread(self.store.due)
        if not batch:
            return 0
        ids = [row_id for row_id, _ in batch]
        try:
            response = await client.post(
                f"{self.settings.prefect_api_url.rstrip('/')}/events", json=[event for _, event in batch]
            )
            response.raise_for_status()
        except httpx.HTTPError as err:
            self._failures += 1
            backoff = min(self.settings.max_backoff_s, 0.5 * 2 ** min(self._failures, 6))
            await asyncio.to_thread(self.store.failed, ids, f"{type(err).__name__}: {err}", backoff)
            logger.warning("Prefect unreachable (%s); %d event(s) kept, retry in %.1fs", err, len(ids), backoff)
            return 0
        self._failures = 0
        await asyncio.to_thread(self.store.delivered, ids)
        return len(ids)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    if settings.token is None and settings.hmac_secret is None:
        raise ValueError("set RUNBOOKS_GATEWAY_TOKEN or RUNBOOKS_GATEWAY_HMAC_SECRET: the gateway never runs open")
    store = GatewayStore(settings.db_path)
    deliverer = Deliverer(store, settings)
    committer = Committer(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(deliverer.run()), asyncio.create_task(committer.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            store.close()

    app = FastAPI(title="runbooks alert gateway", version="1.0.0", lifespan=lifespan)
    app.state.store = store
    app.state.deliverer = deliverer

    async def receive(request: Request, parse: Any) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"body over {MAX_BODY} bytes")
        _authenticate(settings, store, request, body)
        try:
            raw = json.loads(body)
            alerts: list[NormalizedAlert] = parse(raw)
        except (ValueError, TypeError) as err:  # json errors and pydantic ValidationError are ValueErrors
            detail = (
                err.errors(include_url=False, include_input=False)
                if isinstance(err, ValidationError)
                else f"invalid JSON: {err}"
            )
            raise HTTPException(422, detail) from err
        outcomes = await committer.submit(alerts)
        deliverer.wake.set()
        result = Accepted(
            accepted=len(alerts),
            incidents=[
                {"incident_id": o.incident_id, "fingerprint": o.fingerprint, "action": o.action} for o in outcomes
            ],
        )
        return JSONResponse(result.model_dump(), status_code=202)

    @app.post("/alerts/alertmanager", status_code=202, response_model=Accepted)
    async def alertmanager(request: Request) -> JSONResponse:
        return await receive(request, lambda raw: AlertmanagerWebhook.model_validate(raw).normalize())

    @app.post("/alerts/grafana", status_code=202, response_model=Accepted)
    async def grafana(request: Request) -> JSONResponse:
        return await receive(request, lambda raw: GrafanaWebhook.model_validate(raw).normalize())

    @app.post("/alerts/generic", status_code=202, response_model=Accepted)
    async def generic(request: Request) -> JSONResponse:
        return await receive(request, lambda raw: GenericAlert.model_validate(raw).normalize())

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pending_events": await asyncio.to_thread(store.pending)}

    @app.get("/incidents")
    async def incidents(request: Request, status: str | None = None) -> list[dict[str, Any]]:
        _authenticate(settings, store, request, b"")
        return await asyncio.to_thread(store.incidents, status)

    return app
