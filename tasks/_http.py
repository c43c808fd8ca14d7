"""One place that turns httpx outcomes into our typed errors."""

from __future__ import annotations

from typing import Any

import httpx

from kernel.errors import PlatformAPIError, PlatformAuthError
from kernel.redact import quote_body


async def platform_request(
    client: httpx.AsyncClient, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any
) -> httpx.Response:
    """Send a request to the platform API; network errors, 401/403 and unexpected statuses become typed errors."""
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.TimeoutException as err:
        raise PlatformAPIError(
            f"{method} {path} timed out",
            hint="the platform API is slow or down",
            transient=method in {"GET", "HEAD"},
        ) from err
    except httpx.TransportError as err:
        raise PlatformAPIError(
            f"{method} {path}: cannot reach {client.base_url}: {err}",
            hint="check the Platform API block's base_url",
            transient=isinstance(err, httpx.ConnectError) or method in {"GET", "HEAD"},
        ) from err
    if response.status_code in (401, 403):
        raise PlatformAuthError(
            f"{method} {path} was refused ({response.status_code})",
            status_code=response.status_code,
            hint="the Platform API block's admin_token is wrong or expired",
        )
    if response.status_code not in expect:
        detail = quote_body(response.text)  # cut, then redacted: a third party's body may echo what we sent
        raise PlatformAPIError(
            f"{method} {path} answered {response.status_code}: {detail}", status_code=response.status_code
        )
    return response
