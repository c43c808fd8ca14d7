"""Retry policy shared by tasks: retry transient failures, never configuration, auth or other 4xx errors."""

from __future__ import annotations

from typing import Any

from runbooks.errors import RunbookError


def _exception_of(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        state.result(raise_on_failure=True)
    except BaseException as err:  # noqa: BLE001 - we are classifying the failure, not hiding it
        return err
    return None


def is_transient(error: BaseException | None) -> bool:
    """True when another try may succeed: network trouble, 5xx, 429; never auth, bad input or config."""
    if error is None:
        return False
    if isinstance(error, RunbookError) and error.transient is not None:
        return error.transient
    status = getattr(error, "status_code", None)
    return not (isinstance(status, int) and 400 <= status < 500 and status != 429)


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` for Prefect tasks."""
    return is_transient(_exception_of(state))
