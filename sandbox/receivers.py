"""A loopback stand-in for Slack, PagerDuty and Opsgenie that records what each would receive.

It checks credentials the way the real services do (webhook path secret, bot token, routing key, GenieKey),
answers in their shapes, and lets tests read what arrived: ``GET /_received?system=slack``; ``DELETE
/_received`` clears. Tokens come from the environment (see :func:`tokens_env`).
"""

from __future__ import annotations

import hmac
import itertools
import os
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

SYSTEMS = ("slack", "pagerduty", "opsgenie")


def tokens_env(secrets: dict[str, str]) -> dict[str, str]:
    return {
        "RUNBOOKS_RECEIVER_SLACK_WEBHOOK_TOKEN": secrets["slack_webhook_token"],
        "RUNBOOKS_RECEIVER_SLACK_BOT_TOKEN": secrets["slack_bot_token"],
        "RUNBOOKS_RECEIVER_PAGERDUTY_ROUTING_KEY": secrets["pagerduty_routing_key"],
        "RUNBOOKS_RECEIVER_OPSGENIE_API_KEY": secrets["opsgenie_api_key"],
    }


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def create_app(
    *, slack_webhook_token: str, slack_bot_token: str, pagerduty_routing_key: str, opsgenie_api_key: str
) -> FastAPI:
    app = FastAPI(title="Notification receivers (sandbox)", version="1.0.0")
    lock = threading.Lock()
    received: list[dict[str, Any]] = []
    ts_counter = itertools.count(1)

    def record(system: str, kind: str, body: Any, **extra: Any) -> dict[str, Any]:
        entry = {"system": system, "kind": kind, "body": body, "at": time.time(), **extra}
        with lock:
            entry["seq"] = len(received) + 1
            received.append(entry)
        return entry

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(400, "invalid JSON body") from err
        if not isinstance(body, dict):
            raise HTTPException(400, "JSON body must be an object")
        return body

    @app.get("/_received")
    def list_received(system: str | None = None) -> list[dict[str, Any]]:
        with lock:
            return [e for e in received if system is None or e["system"] == system]

    @app.delete("/_received")
    def clear_received() -> dict[str, int]:
        with lock:
            count = len(received)
            received.clear()
        return {"cleared": count}

    # Slack -----------------------------------------------------------------------------------------------
    @app.post("/slack/webhook/{token}", response_class=PlainTextResponse)
    async def slack_webhook(token: str, request: Request) -> PlainTextResponse:
        if not _same(token, slack_webhook_token):
            return PlainTextResponse("no_service", status_code=404)  # Slack's answer to an unknown webhook
        body = await json_body(request)
        if not body.get("text") and not body.get("blocks"):
            return PlainTextResponse("no_text", status_code=400)
        record("slack", "webhook", body)
        return PlainTextResponse("ok")

    def slack_auth(authorization: str | None) -> None:
        if not _same((authorization or "").removeprefix("Bearer "), slack_bot_token):
            raise HTTPException(200, "invalid_auth")  # Slack answers 200 with ok=false

    @app.exception_handler(HTTPException)
    async def _slack_style(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 200:
            return JSONResponse({"ok": False, "error": exc.detail})
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.post("/slack/api/chat.postMessage")
    async def slack_post(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        slack_auth(authorization)
        body = await json_body(request)
        if not body.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        ts = f"{int(time.time())}.{next(ts_counter):06d}"
        record("slack", "chat.postMessage", body, ts=ts)
        return {"ok": True, "channel": body["channel"], "ts": ts, "message": {"text": body.get("text", "")}}

    @app.post("/slack/api/chat.update")
    async def slack_update(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        slack_auth(authorization)
        body = await json_body(request)
        record("slack", "chat.update", body)
        return {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}

    # PagerDuty Events API v2 ------------------------------------------------------------------------------
    @app.post("/pagerduty/v2/enqueue", status_code=202)
    async def pagerduty_enqueue(request: Request) -> JSONResponse:
        body = await json_body(request)
        if not _same(body.get("routing_key"), pagerduty_routing_key):
            return JSONResponse(
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": ["Invalid routing key"],
                },
                status_code=400,
            )
        action = body.get("event_action")
        if action not in {"trigger", "acknowledge", "resolve"}:
            return JSONResponse({"status": "invalid event", "errors": ["'event_action' is invalid"]}, 400)
        if action == "trigger" and not (body.get("payload") or {}).get("summary"):
            return JSONResponse({"status": "invalid event", "errors": ["'payload.summary' is missing"]}, 400)
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        stored = {k: v for k, v in body.items() if k != "routing_key"}
        record("pagerduty", action, stored, dedup_key=dedup_key)
        return JSONResponse({"status": "success", "message": "Event processed", "dedup_key": dedup_key}, 202)

    # Opsgenie -------------------------------------------------------------------------------------------
    def genie_auth(authorization: str | None) -> None:
        if not _same((authorization or "").removeprefix("GenieKey "), opsgenie_api_key):
            raise HTTPException(401, "Could not authenticate")

    @app.post("/opsgenie/v2/alerts", status_code=202)
    async def opsgenie_create(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        genie_auth(authorization)
        body = await json_body(request)
        if not body.get("message"):
            raise HTTPException(422, "message is required")
        request_id = str(uuid.uuid4())
        record("opsgenie", "create", body, request_id=request_id)
        return {"result": "Request will be processed", "took": 0.01, "requestId": request_id}

    @app.post("/opsgenie/v2/alerts/{identifier}/close", status_code=202)
    async def opsgenie_close(
        identifier: str,
        request: Request,
        identifierType: str = "id",  # noqa: N803
        authorization: str | None = Header(None),
    ) -> dict[str, Any]:
        genie_auth(authorization)
        body = await json_body(request) if await request.body() else {}
        request_id = str(uuid.uuid4())
        record(
            "opsgenie",
            "close",
            body,
            identifier=identifier,
            identifier_type=identifierType,
            request_id=request_id,
        )
        return {"result": "Request will be processed", "took": 0.01, "requestId": request_id}

    return app


def _app_from_env() -> FastAPI:
    names = ("SLACK_WEBHOOK_TOKEN", "SLACK_BOT_TOKEN", "PAGERDUTY_ROUTING_KEY", "OPSGENIE_API_KEY")
    missing = [n for n in names if not os.environ.get(f"RUNBOOKS_RECEIVER_{n}")]
    if missing:
        raise RuntimeError(f"set RUNBOOKS_RECEIVER_{missing[0]} (start the receivers with `runbooks sandbox up`)")
    return create_app(**{n.lower(): os.environ[f"RUNBOOKS_RECEIVER_{n}"] for n in names})


def __getattr__(name: str) -> Any:  # `uvicorn sandbox.receivers:app` builds the app from the environment
    if name == "app":
        return _app_from_env()
    raise AttributeError(name)
