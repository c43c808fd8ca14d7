"""One redaction step for every text that leaves the process.

Notifications, artifacts, events, log records and exception messages all pass through :func:`redact`. It
removes the values of every secret field of the blocks loaded in this process (registered by the blocks
themselves when they are built, :func:`register_secrets_in`) and anything shaped like a credential: a bearer
token, a password in a URL or a DSN, an AWS access key, a token in a query string. Third-party response bodies
are cut before they are quoted (:func:`quote_body`).

Written here rather than taken from a library: what must be removed is our own blocks' secret values, which
only this process knows; the shapes are the few that our systems' errors are known to carry.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None  # the registered values, longest first, as one alternation

# (pattern, replacement): credentials by their shape
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> / Basic <b64> / Token <x>
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=\-]{8,}"), rf"\1\2{MASK}"),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/?#@]*:)[^\s@/]+@"), rf"\1{MASK}@"),
    # libpq key=value DSNs, env-style and JSON-style assignments of secret-named keys
    (
        re.compile(
            r"(?i)((?:password|passwd|pwd|secret|secret_key|api_key|apikey|access_token|auth_token|token|"
            r"routing_key|aws_secret_access_key|aws_session_token)[\"']?\s*[:=]\s*)"
            # not a value masked already: redacting twice must change nothing (``password=[REDACTED]`` would
            # otherwise grow a ``]`` per pass, and an error redacted twice would look as if it still held a secret)
            r"(?!\[REDACTED\])"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&}\]]+)"
        ),
        rf"\1{MASK}",
    ),
    # secret-looking query parameters
    (
        re.compile(r"(?i)([?&](?:token|key|api_key|apikey|access_token|sig|signature|x-amz-signature)=)[^&\s\"']+"),
        rf"\1{MASK}",
    ),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b"), MASK),
    # Slack tokens
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), MASK),
)


def register_secret(value: str | bytes | None) -> None:
    """Remember a secret value so that :func:`redact` removes it from every text from now on."""
    if value is None:
        return
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if len(text) < MIN_SECRET_LENGTH:
        return
    parts = [text, *_embedded_passwords(text)]
    for part in parts[1:]:
        if len(part) >= MIN_SECRET_LENGTH and part not in _secrets:
            _add(part)
    _add(text)


def _embedded_passwords(text: str) -> list[str]:
    """The password inside a secret URL or libpq DSN, which errors may quote on its own."""
    from urllib.parse import unquote, urlsplit

    found = [unquote(m.group(1)) for m in re.finditer(r"(?i)password\s*=\s*'?([^\s']+)", text)]
    try:
        password = urlsplit(text).password
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]
    return found


def _add(text: str) -> None:
    global _pattern
    with _lock:
        if text in _secrets:
            return
        _secrets.add(text)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def register_secrets_in(obj: Any, _seen: set[int] | None = None) -> None:
    """Register every ``SecretStr``/``SecretBytes`` (and Prefect ``SecretDict``) value reachable from ``obj``."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, SecretStr):
        register_secret(obj.get_secret_value())
    elif isinstance(obj, SecretBytes):
        register_secret(obj.get_secret_value())
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            register_secrets_in(getattr(obj, name, None), seen)
    elif isinstance(obj, dict):
        # prefect's SecretDict is a dict subclass whose values are all secret
        secret_dict = type(obj).__name__ == "SecretDict"
        for value in obj.values():
            if secret_dict and isinstance(value, str):
                register_secret(value)
            else:
                register_secrets_in(value, seen)
    elif isinstance(obj, list | tuple | set):
        for item in obj:
            register_secrets_in(item, seen)
    elif hasattr(obj, "get_secret_value"):
        register_secret(obj.get_secret_value())


def redact(text: str) -> str:
    """``text`` without registered secret values or credential-shaped substrings."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like structure (dicts, lists, strings) with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


def quote_body(body: str | bytes | None, limit: int = 300) -> str:
    """A third-party response body fit to quote in an error: cut to ``limit`` characters, then redacted."""
    if body is None:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return redact(text)


# --------------------------------------------------------------------------------------------- exceptions
class RedactedError(Exception):
    """Stands in for an exception whose message held a secret and that cannot be rewritten in place."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


def redact_exception(err: BaseException) -> BaseException:
    """Rewrite the messages of ``err`` and its causes in place; return the exception to raise.

    Usually that is ``err`` itself, traceback kept. An exception whose ``str()`` does not come from its
    ``args`` (and so cannot be cleaned in place) is replaced by :class:`RedactedError` carrying the clean text.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        _clean_in_place(current)
        current = current.__cause__ or current.__context__
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - a broken __str__ is replaced below
        text = ""
    if redact(text) == text:
        return err
    replacement = RedactedError(type(err).__name__, redact(text)).with_traceback(err.__traceback__)
    replacement.__cause__ = None
    replacement.__suppress_context__ = True
    return replacement


def _clean_in_place(err: BaseException) -> None:
    try:
        err.args = tuple(redact(a) if isinstance(a, str) else a for a in err.args)
        for attr in ("message", "hint", "detail"):
            value = getattr(err, attr, None)
            if isinstance(value, str):
                setattr(err, attr, redact(value))
        notes = getattr(err, "__notes__", None)
        if notes:
            err.__notes__ = [redact(n) for n in notes]
    except (AttributeError, TypeError):  # read-only attributes on some C exceptions
        pass


F = TypeVar("F", bound=Callable[..., Any])


def redact_errors(fn: F) -> F:
    """Decorator: any exception leaving ``fn`` has its message redacted before Prefect records it.

    Prefect writes an exception's message into the run's state, its events and the UI; this runs first.
    Also installs the log-record filter, so the run's logs (tracebacks included) are redacted too.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            install_log_redaction()
            try:
                return await fn(*args, **kwargs)
            except Exception as err:
                clean = redact_exception(err)
                if clean is err:
                    raise
                raise clean from None

        return _with_resolved_signature(async_wrapper, fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        install_log_redaction()
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            clean = redact_exception(err)
            if clean is err:
                raise
            raise clean from None

    return _with_resolved_signature(wrapper, fn)


def _with_resolved_signature(wrapper: Any, fn: Callable[..., Any]) -> Any:
    """Give the wrapper ``fn``'s signature with its annotations evaluated in ``fn``'s module.

    Prefect builds a flow's parameter model from the signature; with ``from __future__ import annotations`` the
    annotations are strings, which it would otherwise resolve in this module, not in the flow's.
    """
    try:
        wrapper.__signature__ = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError):  # a forward reference not defined yet: leave the strings to Prefect
        wrapper.__signature__ = inspect.signature(fn)
    return wrapper


# ------------------------------------------------------------------------------------------------ logging
class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback through :func:`redact` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep the raw text
            message = str(record.msg)
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(extra_loggers: Iterable[str] = ()) -> None:
    """Add the filter to every handler configured in this process (idempotent; cheap to call per run)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.handlers:
            loggers.append(logger)
    loggers.extend(logging.getLogger(n) for n in extra_loggers)
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
