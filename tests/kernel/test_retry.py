"""The retry policy: only what is known to be transient is tried again."""

from __future__ import annotations

import httpx
import psycopg
import pytest
import redis
from pydantic import BaseModel, ValidationError

from kernel.errors import PlatformAPIError, RunbookError
from kernel.retry import idempotent_task, is_transient, once_task, read_task
from tests.servers import serve


class _Model(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Model(n="x")  # type: ignore[arg-type]
    except ValidationError as err:
        return err
    raise AssertionError("unreachable")


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (KeyError("x"), False),
        (TypeError("x"), False),
        (ValueError("x"), False),
        (_validation_error(), False),
        (_status_error(404), False),
        (_status_error(401), False),
        (_status_error(422), False),
        (_status_error(429), True),
        (_status_error(503), True),
        (_status_error(408), True),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (redis.exceptions.ConnectionError("down"), True),
        (redis.exceptions.AuthenticationError("wrong password"), False),
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.OperationalError('password authentication failed for user "x"'), False),
        (RunbookError("said so", transient=True), True),
        (PlatformAPIError("bad request", status_code=400), False),
        (PlatformAPIError("unavailable", status_code=502), True),
        (None, False),
    ],
)
def test_is_transient(error: BaseException | None, transient: bool) -> None:
    assert is_transient(error) is transient


def test_our_error_without_a_status_follows_its_cause() -> None:
    def chained(cause: BaseException) -> RunbookError:
        try:
            raise RunbookError("wrapped") from cause
        except RunbookError as err:
            return err

    assert is_transient(chained(httpx.ConnectError("refused"))) is True
    assert is_transient(chained(KeyError("k"))) is False


async def _unavailable(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"try later"})


@pytest.mark.usefixtures("prefect_harness")
def test_key_error_runs_once_and_503_is_retried() -> None:
    calls = {"key": 0, "http": 0}

    @read_task(retry_delay_seconds=0)
    def lookup() -> None:
        calls["key"] += 1
        raise KeyError("no such model")

    with serve(_unavailable, lifespan="off") as url:

        @read_task(retry_delay_seconds=0)
        def fetch() -> None:
            calls["http"] += 1
            httpx.get(url).raise_for_status()

        with pytest.raises(KeyError):
            lookup()
        with pytest.raises(httpx.HTTPStatusError):
            fetch()
    assert calls["key"] == 1
    assert calls["http"] == 3  # the first try and read_task's two retries


@pytest.mark.usefixtures("prefect_harness")
def test_once_task_never_retries_and_idempotent_task_does() -> None:
    calls = {"once": 0, "idem": 0}

    @once_task
    def undo() -> None:
        calls["once"] += 1
        raise httpx.ConnectError("refused")

    @idempotent_task(retry_delay_seconds=0)
    def scale() -> None:
        calls["idem"] += 1
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        undo()
    with pytest.raises(httpx.ConnectError):
        scale()
    assert calls == {"once": 1, "idem": 3}
