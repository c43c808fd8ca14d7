"""A Prometheus server (or anything that speaks its HTTP API: Thanos, Mimir, VictoriaMetrics)."""

from __future__ import annotations

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr

from blocks._base import RunbookBlock, tls_context


class PrometheusServer(RunbookBlock):
    """Where the platform's metrics are queried with PromQL.

    Example:
        ```python
        from blocks.prometheus import PrometheusServer
        prometheus = PrometheusServer.load("BLOCK_NAME")
        async with prometheus.get_client() as client:
            (await client.get("/api/v1/query", params={"query": "up"})).raise_for_status()
        ```
    """

    _block_type_name = "Runbooks Prometheus"

    url: AnyHttpUrl = Field(description="Base URL of the Prometheus HTTP API, e.g. http://prometheus:9090.")
    bearer_token: SecretStr | None = Field(
        default=None, description="Bearer token, where the server (or its proxy) asks for one."
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="Per-request timeout in seconds.")

    def get_client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": "runbooks"}
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        return httpx.AsyncClient(verify=tls_context(), base_url=str(self.url), headers=headers, timeout=self.timeout_s)
