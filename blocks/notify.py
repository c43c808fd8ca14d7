"""Notification channels: Slack, PagerDuty Events API v2, Opsgenie."""

from __future__ import annotations

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr

from blocks._base import RunbookBlock, tls_context

#: The seed's channels (Emergency Contacts).
DEFAULT_SLACK_CHANNELS = {
    "alerts": "#ai-multimodel-alerts",
    "incidents": "#ai-multimodel-incidents",
    "support": "#ai-multimodel-support",
    "deployments": "#ai-multimodel-deployments",
    "security": "#ai-multimodel-security",
}


class SlackNotifier(RunbookBlock):
    """Slack: an incoming webhook for one-off messages and a bot token for chat.postMessage threads.

    Example:
        ```python
        from blocks.notify import SlackNotifier
        slack = SlackNotifier.load("BLOCK_NAME")
        async with slack.get_client() as client:
            await client.post(slack.webhook_url.get_secret_value(), json={"text": "hello"})
        ```
    """

    _block_type_name = "Runbooks Slack"

    webhook_url: SecretStr = Field(description="Incoming webhook URL (it is itself a secret).")
    bot_token: SecretStr | None = Field(default=None, description="Bot token (xoxb-...) for chat.postMessage.")
    api_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://slack.com/api"),
        description="Slack Web API base URL (override for tests).",
    )
    channels: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SLACK_CHANNELS),
        description="Channel per purpose: alerts, incidents, support, deployments, security.",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Per-request timeout in seconds.")

    def channel_for(self, purpose: str) -> str:
        return self.channels.get(purpose) or self.channels.get("alerts") or DEFAULT_SLACK_CHANNELS["alerts"]

    def get_client(self) -> httpx.AsyncClient:
        """A client on the Web API carrying the bot token (webhook posts use absolute URLs)."""
        headers = {"User-Agent": "runbooks"}
        if self.bot_token is not None:
            headers["Authorization"] = f"Bearer {self.bot_token.get_secret_value()}"
        return httpx.AsyncClient(
            verify=tls_context(), base_url=str(self.api_url).rstrip("/") + "/", headers=headers, timeout=self.timeout_s
        )


class PagerDutyNotifier(RunbookBlock):
    """PagerDuty Events API v2: a routing (integration) key and the enqueue URL.

    Example:
        ```python
        from blocks.notify import PagerDutyNotifier
        pagerduty = PagerDutyNotifier.load("BLOCK_NAME")
        async with pagerduty.get_client() as client:
            await client.post(pagerduty.events_url, json={...})
        ```
    """

    _block_type_name = "Runbooks PagerDuty"

    routing_key: SecretStr = Field(description="Events API v2 integration (routing) key.")
    events_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://events.pagerduty.com/v2/enqueue"),
        description="Events API v2 enqueue URL (override for tests or EU accounts).",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Per-request timeout in seconds.")

    def get_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=tls_context(), timeout=self.timeout_s, headers={"User-Agent": "runbooks"})


class OpsgenieNotifier(RunbookBlock):
    """Opsgenie Alert API: an API key and the API base URL.

    Example:
        ```python
        from blocks.notify import OpsgenieNotifier
        opsgenie = OpsgenieNotifier.load("BLOCK_NAME")
        async with opsgenie.get_client() as client:
            await client.post("/v2/alerts", json={"message": "..."})
        ```
    """

    _block_type_name = "Runbooks Opsgenie"

    api_key: SecretStr = Field(description="Opsgenie API integration key.")
    api_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://api.opsgenie.com"), description="Opsgenie API base URL (EU or tests)."
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Per-request timeout in seconds.")

    def get_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=tls_context(),
            base_url=str(self.api_url),
            headers={
                "Authorization": f"GenieKey {self.api_key.get_secret_value()}",
                "User-Agent": "runbooks",
            },
            timeout=self.timeout_s,
        )
