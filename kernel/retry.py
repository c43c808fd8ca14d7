"""The retry policy, and the three task policies every task of the project is declared with.

Retry only what is known to be transient: connection errors, timeouts, HTTP 408/429/5xx, and errors that
say so themselves (``RunbookError(transient=True)``). Everything else (a ``KeyError``, a validation error, a
401, a bad configuration) fails at once with its message, since trying again cannot help.

The policies, named once and used everywhere::

    @read_task              # reads: retried on transient errors
    @idempotent_task        # writes that are safe to repeat (scale to N, set an image, delete a pod): retried
    @once_task              # never retried (rollback, restart, restore: a second try does it again)

Each accepts Prefect's task options (``@read_task(name="...")``). Each redacts the message of an exception
leaving the task before Prefect records it (:func:`kernel.redact.redact_errors`).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

from kernel.errors import RunbookError
from kernel.redact import redact_errors

TRANSIENT_STATUS = frozenset({408, 425, 429})
TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
     errno.ENETUNREACH, errno.EPIPE, errno.EAGAIN}
)  # fmt: skip
# (module, class) of vendor errors that mean the network or the server hiccuped. Looked up in sys.modules, never
# imported here: an error of a library that was never imported cannot be the one we are classifying.
_TRANSIENT_TYPES = (
    ("httpx", "TimeoutException"),
    ("httpx", "NetworkError"),
    ("httpx", "RemoteProtocolError"),
    ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"),
    ("redis.exceptions", "BusyLoadingError"),
    ("botocore.exceptions", "HTTPClientError"),
    ("botocore.exceptions", "ConnectionError"),
    ("aiohttp", "ClientConnectionError"),
    ("aiohttp", "ServerTimeoutError"),
)
_NEVER_TRANSIENT_TYPES = (("redis.exceptions", "AuthenticationError"),)
# SQLSTATE classes that a retry can get past: connection exceptions, insufficient resources, operator
# intervention (admin shutdown, cannot connect now), serialization failure and deadlock
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P", "40001", "40P01")


def _types(names: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    found = []
    for module, name in names:
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def status_of(error: BaseException) -> int | None:
    """The HTTP status an error carries, whichever client raised it."""
    for attr in ("status_code", "status"):
        value = getattr(error, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(error, "response", None)
    value = getattr(response, "status_code", None)
    if isinstance(value, int):
        return value
    if isinstance(response, dict):  # botocore ClientError
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def _postgres_transient(error: BaseException) -> bool | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(error, psycopg.Error):
        return None
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    # no SQLSTATE: the server was never reached (refused, reset, timed out), unless it refused our password
    text = str(error).lower()
    return isinstance(error, psycopg.OperationalError) and "authentication" not in text and "password" not in text


def is_transient(error: BaseException | None) -> bool:
    """True when another try may succeed: network trouble, a timeout, 408/429/5xx; never bad input or config."""
    if error is None:
        return False
    if isinstance(error, RunbookError):
        if error.transient is not None:
            return error.transient
        if error.status_code is not None:
            return error.status_code in TRANSIENT_STATUS or error.status_code >= 500
        return is_transient(error.__cause__)
    if isinstance(error, _types(_NEVER_TRANSIENT_TYPES)):
        return False
    status = status_of(error)
    if status is not None and 100 <= status < 600:
        return status in TRANSIENT_STATUS or status >= 500
    postgres = _postgres_transient(error)
    if postgres is not None:
        return postgres
    if isinstance(error, TimeoutError | ConnectionError):
        return True
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return True
    return isinstance(error, _types(_TRANSIENT_TYPES))


def _exception_of(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        state.result(raise_on_failure=True)
    except BaseException as err:  # noqa: BLE001 - we are classifying the failure, not hiding it
        return err
    return None


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` for Prefect tasks."""
    return is_transient(_exception_of(state))


# ------------------------------------------------------------------------------------------- task policies
READ: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": retry_on_transient}
IDEMPOTENT_WRITE: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_on_transient,
}
ONCE: dict[str, Any] = {"retries": 0}


def _policy(defaults: dict[str, Any]) -> Callable[..., Any]:
    def decorator(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        # no caching by default: our tasks act on live systems, and their inputs (blocks) do not hash stably
        settings = {"cache_policy": NO_CACHE, **defaults, **options}
        if fn is None:
            return lambda f: task(redact_errors(f), **settings)
        return task(redact_errors(fn), **settings)

    return decorator


read_task = _policy(READ)
idempotent_task = _policy(IDEMPOTENT_WRITE)
once_task = _policy(ONCE)
