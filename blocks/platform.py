"""The AI platform's HTTP API: base URL, admin bearer token, status page."""

from __future__ import annotations

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr

from blocks._base import RunbookBlock, tls_context
from kernel.errors import ConfigurationError


class PlatformAPI(RunbookBlock):
    """Connection to the AI multi-model platform's HTTP API and its public status page.

    Example:
        ```python
        from blocks.platform import PlatformAPI
        platform = PlatformAPI.load("BLOCK_NAME")
        async with platform.get_client() as client:
            (await client.get("/health")).raise_for_status()
        ```
    """

    _block_type_name = "Runbooks Platform API"

    base_url: AnyHttpUrl = Field(description="Base URL of the platform API, e.g. https://api.example.com.")
    admin_token: SecretStr = Field(description="Bearer token for the /admin endpoints.")
    status_page_url: AnyHttpUrl = Field(description="Base URL of the public status page (serves /api/v2/summary.json).")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="Per-request timeout in seconds.")
    frontend_url: AnyHttpUrl | None = Field(
        default=None,
        description="Base URL of the web frontend (serves /health and its page); unset, the smoke tests of the "
        "frontend are reported as skipped.",
    )

    def get_client(self, *, admin: bool = True) -> httpx.AsyncClient:
        """A client on ``base_url``; with ``admin`` it carries the bearer token."""
        headers = {"User-Agent": "runbooks"}
        if admin:
            headers["Authorization"] = f"Bearer {self.admin_token.get_secret_value()}"
        return httpx.AsyncClient(
            verify=tls_context(), base_url=str(self.base_url), headers=headers, timeout=self.timeout_s
        )

    def get_frontend_client(self) -> httpx.AsyncClient:
        """A client on the frontend (no credentials); ``frontend_url`` must be set."""
        if self.frontend_url is None:
            raise ConfigurationError(
                self.display_name, "frontend_url", "no frontend URL is configured", hint="set the block's frontend_url"
            )
        headers = {"User-Agent": "runbooks"}
        return httpx.AsyncClient(
            verify=tls_context(), base_url=str(self.frontend_url), headers=headers, timeout=self.timeout_s
        )

    def get_status_page_client(self) -> httpx.AsyncClient:
        """A client on the status page (no credentials)."""
        return httpx.AsyncClient(verify=tls_context(), base_url=str(self.status_page_url), timeout=self.timeout_s)
