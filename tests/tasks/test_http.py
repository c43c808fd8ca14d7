"""tasks/_http.py: a platform API error quotes the response body cut and redacted."""

from __future__ import annotations

import httpx
import pytest

from kernel.errors import PlatformAPIError
from kernel.redact import register_secret
from tasks._http import platform_request

ADMIN_TOKEN = "platform-admin-token-for-http-tests"


async def test_an_unexpected_status_quotes_the_body_cut_and_redacted() -> None:
    register_secret(ADMIN_TOKEN)
    body = f"upstream said: your token {ADMIN_TOKEN} is fine but we failed\n" + "z" * 4000

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=body)

    async with httpx.AsyncClient(base_url="http://platform.test", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(PlatformAPIError) as info:
            await platform_request(client, "GET", "/models")
    text = str(info.value)
    assert "GET /models answered 502" in text and ADMIN_TOKEN not in text
    assert "more characters" in text and len(text) < 500
    assert info.value.status_code == 502
