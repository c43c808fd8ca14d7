"""kernel/redact.py: redaction is idempotent, so an exception redacted twice keeps its type."""

from __future__ import annotations

import pytest

from kernel.errors import NotificationError
from kernel.redact import MASK, redact, redact_exception


@pytest.mark.parametrize(
    "text",
    [
        "password=hunter2-long x",
        "dsn host=db password=abc123456 dbname=app",
        'token: "abcdefghijk"',
        "routing_key=abcdefgh12345 and https://u:pw123456@host/x?token=zzz",
    ],
)
def test_redacting_twice_changes_nothing(text: str) -> None:
    once = redact(text)
    assert MASK in once and redact(once) == once


def test_an_already_redacted_error_keeps_its_type() -> None:
    err = NotificationError(f"Slack webhook answered 500: {redact('password=hunter2-long')}", status_code=500)
    assert redact_exception(err) is err
