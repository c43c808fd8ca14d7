"""Tasks that tell people: Slack (webhook and threads), PagerDuty Events API v2, Opsgenie.

Every payload is redacted in :func:`_post`, the one place that sends (:func:`kernel.redact.redact_obj`), and a
receiver's response body is cut and redacted before an error quotes it (:func:`kernel.redact.quote_body`).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from blocks.notify import OpsgenieNotifier, PagerDutyNotifier, SlackNotifier
from kernel.errors import NotificationError
from kernel.redact import quote_body, redact, redact_obj
from kernel.retry import idempotent_task

#: Payload fields that carry the receiver's own credential (PagerDuty's routing key): sent as they are, since
#: redacting them would only make the receiver refuse the message; everything else is content and is redacted.
_CREDENTIAL_FIELDS = frozenset({"routing_key"})


def _cut(text: str, limit: int) -> str:
    """``text`` redacted, then cut to a receiver's limit: cutting first could leave half a secret unmasked."""
    return redact(text)[:limit]


class SlackMessage(BaseModel):
    channel: str
    ts: str | None = None


async def _post(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], *, what: str, idempotent: bool
) -> httpx.Response:
    """Send ``payload`` with every string in it redacted (texts, blocks, summaries, details): the one place that
    sends, so no notification leaves unredacted whoever builds it."""
    clean = {key: value if key in _CREDENTIAL_FIELDS else redact_obj(value) for key, value in payload.items()}
    try:
        response = await client.post(url, json=clean)
    except httpx.ConnectError as err:  # never reached the server: safe to try again
        raise NotificationError(f"{what}: cannot connect: {err}", transient=True) from err
    except httpx.TransportError as err:  # may have been delivered: retry only where the receiver dedups
        raise NotificationError(f"{what}: {type(err).__name__}: {err}", transient=idempotent) from err
    if response.status_code >= 400:
        raise NotificationError(
            f"{what} answered {response.status_code}: {quote_body(response.text)}", status_code=response.status_code
        )
    return response


@idempotent_task
async def post_slack_webhook(slack: SlackNotifier, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
    """The runbook's ``curl -X POST $SLACK_*_WEBHOOK``: a one-off message."""
    payload: dict[str, Any] = {"text": text}
    if blocks:
        payload["blocks"] = blocks
    async with slack.get_client() as client:
        await _post(client, slack.webhook_url.get_secret_value(), payload, what="Slack webhook", idempotent=False)


@idempotent_task
async def post_slack_message(
    slack: SlackNotifier,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    thread_ts: str | None = None,
) -> SlackMessage:
    """chat.postMessage: returns the message ``ts`` so updates can go in its thread."""
    if slack.bot_token is None:
        raise NotificationError(
            "chat.postMessage needs a bot token", hint="set bot_token on the Slack block", transient=False
        )
    payload: dict[str, Any] = {"channel": channel, "text": text}
    if blocks:
        payload["blocks"] = blocks
    if thread_ts:
        payload["thread_ts"] = thread_ts
    async with slack.get_client() as client:
        response = await _post(client, "chat.postMessage", payload, what="Slack chat.postMessage", idempotent=False)
    body = response.json()
    if not body.get("ok"):
        error = body.get("error", "unknown_error")
        raise NotificationError(
            f"Slack chat.postMessage failed: {error}",
            transient=error == "ratelimited",
            hint="check the Slack block's bot_token" if "auth" in error else None,
        )
    return SlackMessage(channel=body.get("channel", channel), ts=body.get("ts"))


@idempotent_task(retries=3, retry_delay_seconds=[1, 5, 15])
async def send_pagerduty_event(
    pagerduty: PagerDutyNotifier,
    action: Literal["trigger", "acknowledge", "resolve"],
    dedup_key: str,
    summary: str = "",
    severity: str = "critical",
    source: str = "runbooks",
    details: dict[str, Any] | None = None,
) -> str:
    """Events API v2 with a dedup_key: a retried trigger or resolve is the same event to PagerDuty."""
    payload: dict[str, Any] = {
        "routing_key": pagerduty.routing_key.get_secret_value(),
        "event_action": action,
        "dedup_key": dedup_key,
    }
    if action == "trigger":
        payload["payload"] = {
            "summary": _cut(summary, 1024),
            "severity": severity,
            "source": source,
            "custom_details": details or {},
        }
    async with pagerduty.get_client() as client:
        response = await _post(client, str(pagerduty.events_url), payload, what="PagerDuty Events API", idempotent=True)
    return str(response.json().get("dedup_key", dedup_key))


@idempotent_task(retries=3, retry_delay_seconds=[1, 5, 15])
async def create_opsgenie_alert(
    opsgenie: OpsgenieNotifier,
    message: str,
    alias: str,
    priority: str = "P1",
    description: str = "",
    tags: list[str] | None = None,
) -> str:
    """Create an Opsgenie alert; the ``alias`` dedups retries. Returns the request id."""
    payload = {
        "message": _cut(message, 130),
        "alias": alias,
        "priority": priority,
        "description": _cut(description, 15000),
        "tags": tags or [],
    }
    async with opsgenie.get_client() as client:
        response = await _post(client, "/v2/alerts", payload, what="Opsgenie", idempotent=True)
    return str(response.json().get("requestId", ""))


@idempotent_task(retries=3, retry_delay_seconds=[1, 5, 15])
async def close_opsgenie_alert(opsgenie: OpsgenieNotifier, alias: str, note: str = "", source: str = "runbooks") -> str:
    """Close the Opsgenie alert created with ``alias`` (``POST /v2/alerts/{alias}/close?identifierType=alias``);
    closing a closed alert changes nothing. Returns the request id."""
    payload = {"source": source, "user": "runbooks", "note": _cut(note, 25000)}
    async with opsgenie.get_client() as client:
        response = await _post(
            client,
            f"/v2/alerts/{quote(alias, safe='')}/close?identifierType=alias",
            payload,
            what="Opsgenie close",
            idempotent=True,
        )
    return str(response.json().get("requestId", ""))
