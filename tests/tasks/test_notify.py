"""tasks/notify.py against a real local HTTP server: what leaves is redacted, what comes back is quoted cut."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from blocks.notify import OpsgenieNotifier, PagerDutyNotifier, SlackNotifier
from kernel.errors import NotificationError
from kernel.redact import MASK, register_secret
from tasks.notify import close_opsgenie_alert, create_opsgenie_alert, post_slack_webhook, send_pagerduty_event
from tests.servers import serve

DB_PASSWORD = "s3cr3t-db-password-for-notify-tests"
ROUTING_KEY = "pd-routing-key-0123456789abcdef"


class Receiver:
    """Records every JSON body it gets; answers ``status`` with ``body``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 202
        self.body = '{"status": "success", "dedup_key": "d", "requestId": "r"}'

    async def handle(self, request: Request) -> Response:
        self.received.append(json.loads(await request.body()))
        if self.status >= 400:
            return PlainTextResponse(self.body, status_code=self.status)
        return JSONResponse(json.loads(self.body), status_code=self.status)


@pytest.fixture()
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = Starlette(routes=[Route("/{path:path}", rec.handle, methods=["POST"])])
    with serve(app, lifespan="off") as url:
        yield rec, url


async def test_every_payload_is_redacted_but_the_routing_key(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    register_secret(DB_PASSWORD)
    leak = f"pg_dump failed: password authentication failed, dsn password={DB_PASSWORD}"
    slack = SlackNotifier(webhook_url=SecretStr(f"{url}/slack/hook-token-abcdef"))
    await post_slack_webhook.fn(slack, leak, [{"type": "section", "text": {"type": "mrkdwn", "text": leak}}])
    pagerduty = PagerDutyNotifier(routing_key=SecretStr(ROUTING_KEY), events_url=f"{url}/pd")  # type: ignore[arg-type]
    await send_pagerduty_event.fn(pagerduty, "trigger", "k", summary=leak, details={"error": leak})
    opsgenie = OpsgenieNotifier(api_key=SecretStr("genie-key-0123456789"), api_url=url)  # type: ignore[arg-type]
    await create_opsgenie_alert.fn(opsgenie, leak, "alias", description=leak)

    sent = json.dumps(rec.received)
    assert DB_PASSWORD not in sent and MASK in sent
    slack_body, pd_body, genie_body = rec.received
    assert MASK in slack_body["text"] and MASK in slack_body["blocks"][0]["text"]["text"]
    assert pd_body["routing_key"] == ROUTING_KEY  # the receiver's own credential goes as it is
    assert MASK in pd_body["payload"]["summary"] and MASK in pd_body["payload"]["custom_details"]["error"]
    assert MASK in genie_body["message"] and MASK in genie_body["description"]


async def test_a_secret_cut_by_a_length_limit_is_still_masked(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    register_secret(DB_PASSWORD)
    opsgenie = OpsgenieNotifier(api_key=SecretStr("genie-key-0123456789"), api_url=url)  # type: ignore[arg-type]
    message = "x" * 120 + DB_PASSWORD  # Opsgenie keeps 130 characters: cut first, 10 of them would leak
    await create_opsgenie_alert.fn(opsgenie, message, "alias")
    [body] = rec.received
    assert DB_PASSWORD[:10] not in body["message"]


async def test_an_error_body_is_cut_and_redacted(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    register_secret(DB_PASSWORD)
    rec.status, rec.body = 500, f"internal error while handling password={DB_PASSWORD} " + "y" * 5000
    slack = SlackNotifier(webhook_url=SecretStr(f"{url}/slack/hook-token-abcdef"))
    with pytest.raises(NotificationError) as info:
        await post_slack_webhook.fn(slack, "hello")
    text = str(info.value)
    assert "answered 500" in text and DB_PASSWORD not in text
    assert "more characters" in text and len(text) < 600


async def test_opsgenie_alert_closed_by_its_alias() -> None:
    """``POST /v2/alerts/{alias}/close?identifierType=alias``, as the sandbox's Opsgenie receiver records it; the
    note is redacted like every payload."""
    import httpx

    from sandbox.receivers import create_app

    tokens = {"slack_webhook_token": "w", "slack_bot_token": "b", "pagerduty_routing_key": "r"}
    app = create_app(**tokens, opsgenie_api_key="genie-key-0123456789")
    register_secret(DB_PASSWORD)
    with serve(app, lifespan="off") as url:
        opsgenie = OpsgenieNotifier(
            api_key=SecretStr("genie-key-0123456789"),
            api_url=f"{url}/opsgenie",  # type: ignore[arg-type]
        )
        request_id = await close_opsgenie_alert.fn(opsgenie, "inc-7f3a:x", note=f"cleared; password={DB_PASSWORD}")
        [closed] = httpx.get(f"{url}/_received", params={"system": "opsgenie"}).json()
    assert request_id and closed["request_id"] == request_id
    assert (closed["kind"], closed["identifier"], closed["identifier_type"]) == ("close", "inc-7f3a:x", "alias")
    assert DB_PASSWORD not in closed["body"]["note"] and MASK in closed["body"]["note"]
