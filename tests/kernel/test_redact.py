"""Redaction: registered secret values and credential-shaped text never leave the process."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from blocks.postgres import PostgresDatabase
from kernel.errors import NotificationError, RunbookError
from kernel.redact import (
    MASK,
    RedactedError,
    RedactingFilter,
    quote_body,
    redact,
    redact_errors,
    redact_exception,
    redact_obj,
    register_secret,
)


def test_registered_values_are_masked_wherever_they_appear() -> None:
    register_secret("s3cr3t-value-for-redact-test")
    assert redact("token is s3cr3t-value-for-redact-test!") == f"token is {MASK}!"
    assert "s3cr3t" not in redact_obj({"a": ["x s3cr3t-value-for-redact-test y"]})["a"][0]


def test_a_block_registers_its_secrets_and_the_password_inside_its_dsn() -> None:
    PostgresDatabase(dsn=SecretStr("postgresql://app:pw-in-block-dsn-77@db.internal:5432/app"))
    assert "pw-in-block-dsn-77" not in redact("FATAL: password pw-in-block-dsn-77 rejected")
    assert "pw-in-block-dsn-77" not in redact("postgresql://app:pw-in-block-dsn-77@db.internal:5432/app")


def test_short_values_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc abc") == "abc abc"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("connect postgresql://app:hunter2hunter@10.0.0.5/db failed", "hunter2hunter"),
        ("redis://:r3dispass@cache:6379/0 refused", "r3dispass"),
        ("host=db user=app password=libpqpass123 dbname=x", "libpqpass123"),
        ('{"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}', "wJalrXUtnFEMI"),
        ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
        ("GET /hook?token=abcdef123456 failed", "abcdef123456"),
        ("slack said xoxb-1234567890-abcdefghij", "xoxb-1234567890"),
    ],
)
def test_credential_shapes_are_masked(text: str, leak: str) -> None:
    assert leak not in redact(text)


def test_ordinary_text_is_left_alone() -> None:
    text = "error rate 4.2% over 5m on ai-multimodel-api (3/3 pods ready)"
    assert redact(text) == text


def test_quote_body_cuts_then_redacts() -> None:
    body = "password=bodypass99 " + "x" * 1000
    quoted = quote_body(body, limit=100)
    assert "bodypass99" not in quoted
    assert len(quoted) < 200 and "more characters" in quoted


def test_exception_messages_are_rewritten_in_place_with_their_causes() -> None:
    register_secret("exc-secret-value-123")
    try:
        try:
            raise ValueError("inner exc-secret-value-123")
        except ValueError as inner:
            raise RunbookError("outer exc-secret-value-123", hint="rotate exc-secret-value-123") from inner
    except RunbookError as caught:
        err = caught
    clean = redact_exception(err)
    assert clean is err
    assert "exc-secret-value-123" not in str(err)
    assert "exc-secret-value-123" not in str(err.__cause__)
    assert err.hint is not None and "exc-secret-value-123" not in err.hint


def test_an_exception_that_cannot_be_rewritten_is_replaced() -> None:
    class Stubborn(Exception):
        def __str__(self) -> str:
            return "stubborn exc-secret-value-456"

    register_secret("exc-secret-value-456")
    clean = redact_exception(Stubborn())
    assert isinstance(clean, RedactedError)
    assert "exc-secret-value-456" not in str(clean) and "Stubborn" in str(clean)


async def test_redact_errors_decorator_on_async_and_sync() -> None:
    register_secret("deco-secret-value-789")

    @redact_errors
    async def fails_async() -> None:
        raise RuntimeError("boom deco-secret-value-789")

    @redact_errors
    def fails_sync() -> None:
        raise RuntimeError("boom deco-secret-value-789")

    with pytest.raises(RuntimeError) as async_info:
        await fails_async()
    with pytest.raises(RuntimeError) as sync_info:
        fails_sync()
    assert "deco-secret-value-789" not in str(async_info.value)
    assert "deco-secret-value-789" not in str(sync_info.value)


def test_log_filter_masks_message_args_and_traceback() -> None:
    register_secret("log-secret-value-000")
    try:
        raise RuntimeError("trace log-secret-value-000")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "msg %s", ("log-secret-value-000",), sys.exc_info())
    RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert "log-secret-value-000" not in formatted
    assert "RuntimeError" in formatted


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
