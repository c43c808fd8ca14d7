"""Synthetic container logs: deterministic, realistic lines per app (API, frontend, PostgreSQL, Redis, other),
a function of the container run, the second, and whether the app is steered to log errors; crashed runs end
with a stack trace and a FATAL line. The API's pods also log what the platform double records (``extra``: its
security events and a leaked key's traffic, :mod:`sandbox.k8s.platform_feed`). The kubelet's query parameters
are applied as kubelet applies them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sandbox.k8s.behaviour import ContainerSim, Instance

# the platform double's fleet (importing sandbox.platform_api would pull FastAPI into the node)
MODELS = ("gpt-4", "gpt-3.5-turbo", "claude-3-5-sonnet", "claude-3-haiku", "gemini-pro", "qwen", "deepseek")
PROVIDERS = {"gpt": "openai", "cla": "anthropic", "gem": "google", "qwe": "alibaba", "dee": "deepseek"}
MAX_BYTES = 10 * 2**20  # like kubelet's container-log-max-size: older output has been rotated away


@dataclass(frozen=True)
class LogQuery:
    since: float | None = None  # epoch seconds (from sinceSeconds or sinceTime)
    tail_lines: int | None = None
    timestamps: bool = False
    limit_bytes: int | None = None


def _kind(app: str, image: str) -> str:
    name = f"{app} {image}".lower()
    for kind in ("frontend", "postgres", "redis", "api"):
        if kind in name:
            return kind
    return "generic"


def _pick(options: tuple[str, ...], u: float) -> str:
    return options[int(u * len(options)) % len(options)]


def _draws(key: str, sec: int, j: int) -> tuple[list[float], str]:
    """Eight deterministic numbers in [0, 1) for line ``j`` of second ``sec``, and a request id."""
    digest = hashlib.blake2b(f"{key}|{sec}|{j}".encode(), digest_size=32).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 32, 4)], digest[:6].hex()


def _line(kind: str, ts: float, draws: list[float], request_id: str, errors: bool) -> str:
    """One line; ``draws`` [0] and [1] decided whether and when it is written, the rest shape it."""
    sec, model = int(ts), _pick(MODELS, draws[2])
    roll, which, a, b = draws[3:7]
    millis = f"{int((ts - sec) * 1000):03d}"
    if kind == "api":
        if errors and roll < 0.4:
            return _pick(
                (
                    f'ERROR upstream model={model} provider={PROVIDERS[model[:3]]} error="timeout after 30000ms" '
                    "status=504",
                    f'ERROR database query failed error="connection pool exhausted" pool_size=20 model={model}',
                    f'ERROR redis cache get failed error="ECONNRESET" key=session:{int(a * 1e6):06d}',
                    f"ERROR request failed model={model} status=500 error=InternalServerError "
                    f"latency_ms={int(800 + a * 4000)}",
                ),
                which,
            )
        if roll < 0.05:
            return f"WARN slow upstream model={model} latency_ms={int(2000 + a * 6000)} status=200"
        if roll < 0.07:
            return f"WARN rate limited tenant=t-{int(b * 900) + 100} model={model} status=429"
        return (
            f"INFO request method=POST path=/api/v1/chat/completions model={model} status=200 "
            f"latency_ms={int(40 + a * 900)} tokens={int(50 + b * 2000)} request_id={request_id}"
        )
    if kind == "frontend":
        if errors and roll < 0.4:
            return f"ERROR failed to fetch /api/v1/models/{model}: 502 Bad Gateway upstream=ai-multimodel-api"
        path = _pick(("/", "/chat", "/dashboard", "/_next/static/chunks/main.js", "/api/health", "/settings"), a)
        return f"INFO GET {path} status={304 if roll < 0.2 else 200} duration_ms={int(2 + b * 120)}"
    if kind == "postgres":
        stamp = dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{millis} UTC"
        pid = 100 + int(a * 900)
        if errors and roll < 0.4:
            return f"{stamp} [{pid}] " + _pick(
                (
                    "ERROR:  canceling statement due to statement timeout",
                    "FATAL:  sorry, too many clients already",
                    "ERROR:  deadlock detected",
                ),
                which,
            )
        if roll < 0.2:
            return f"{stamp} [{pid}] LOG:  checkpoint complete: wrote {int(b * 500)} buffers"
        return (
            f"{stamp} [{pid}] LOG:  duration: {100 + b * 900:.3f} ms  statement: "
            "SELECT id, model, created_at FROM ai_queries WHERE user_id = $1 ORDER BY created_at DESC LIMIT 50"
        )
    if kind == "redis":
        stamp = dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%d %b %Y %H:%M:%S") + f".{millis}"
        if errors and roll < 0.4:
            return f"1:M {stamp} # WARNING OOM command not allowed when used memory > 'maxmemory'"
        return f"1:M {stamp} * " + _pick(
            (
                f"{int(10 + b * 990)} changes in 60 seconds. Saving...",
                f"Background saving started by pid {int(100 + a * 900)}",
                "DB saved on disk",
                "Background saving terminated with success",
            ),
            which,
        )
    if errors and roll < 0.4:
        return "ERROR operation failed: context deadline exceeded"
    return f"INFO heartbeat ok queue_depth={int(a * 20)}"


def _startup(kind: str, c: ContainerSim) -> list[str]:
    """The lines a run begins with; its last line says the app is serving (a crashing run never gets there)."""
    version = c.image.rsplit(":", 1)[-1] if ":" in c.image.rsplit("/", 1)[-1] else "latest"
    if kind == "postgres":
        return [
            f"LOG:  starting PostgreSQL {version} on x86_64-pc-linux-gnu",
            'LOG:  listening on IPv4 address "0.0.0.0", port 5432',
            "LOG:  database system is ready to accept connections",
        ]
    if kind == "redis":
        return [
            "1:C * oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo",
            f"1:C * Redis version={version}, bits=64, commit=00000000, modified=0, pid=1, just started",
            "1:M * Ready to accept connections tcp",
        ]
    port = "3000" if kind == "frontend" else "8000"
    return [
        f"INFO starting {c.name} version={version} image={c.image}",
        "INFO loaded configuration environment=production",
        f"INFO listening on 0.0.0.0:{port}",
    ]


def _crash(kind: str, c: ContainerSim) -> list[str]:
    """The last lines of a crashed run: a stack-ish trace ending with FATAL."""
    if kind == "postgres":
        return [
            'FATAL:  could not open file "global/pg_filenode.map": Permission denied',
            "LOG:  database system is shut down",
            "FATAL:  postmaster exited with status 1",
        ]
    if kind == "redis":
        return [
            "1:M # Fatal error loading the DB: Permission denied. Exiting.",
            "1:M # FATAL redis-server exited with status 1",
        ]
    cause = (
        f'RuntimeError: incompatible model registry schema (got v3, this build supports v2): image "{c.image}"'
        if c.behaviour.reason in ("image", "release")
        else "ConnectionError: could not connect to upstream dependency after 3 attempts"
    )
    return [
        "ERROR unhandled exception during startup",
        "Traceback (most recent call last):",
        '  File "/app/server/main.py", line 87, in <module>',
        "    app = create_app(settings)",
        '  File "/app/server/bootstrap.py", line 142, in create_app',
        "    registry.load(settings.models)",
        cause,
        f"FATAL {c.name} exited with status 1",
    ]


def _entries(c: ContainerSim, app: str, run: Instance, now: float) -> Iterator[tuple[float, str]]:
    """The run's lines, newest first."""
    kind = _kind(app, c.image)
    end = run.finished if run.finished is not None else now
    key = f"{c.key}/{run.index}"
    if run.crashed:
        yield from ((end - 0.001 * (i + 1), text) for i, text in enumerate(reversed(_crash(kind, c))))
    rate = 0.9 if kind in ("api", "frontend") else 0.15
    limit = end - 0.01 if run.crashed else end
    for sec in range(int(end), int(run.started), -1):
        errors = c.error_since is not None and sec >= c.error_since
        for j in (1, 0):
            draws, request_id = _draws(key, sec, j)
            ts = sec + (j + draws[1]) / 2
            if ts <= limit and draws[0] < rate / (1 + j * 3):
                yield ts, _line(kind, ts, draws, request_id, errors)
    startup = _startup(kind, c)[: -1 if run.crashed else None]
    for i, text in enumerate(reversed(startup)):
        yield run.started + 0.01 * (len(startup) - i), text


def _stamp(ts: float) -> str:
    base = dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{int(round((ts - int(ts)) * 1e9)) % 10**9:09d}Z"


def _merged(
    c: ContainerSim, app: str, run: Instance, now: float, extra: Sequence[tuple[float, str]]
) -> Iterator[tuple[float, str]]:
    """The run's lines and ``extra`` (newest first, within the run), newest first."""
    if not extra:
        return _entries(c, app, run, now)
    return heapq.merge(_entries(c, app, run, now), extra, key=lambda e: -e[0])


def render(
    c: ContainerSim, app: str, run: Instance, now: float, query: LogQuery, extra: Sequence[tuple[float, str]] = ()
) -> bytes:
    """The run's log as kubelet returns it for ``query``."""
    picked: list[str] = []
    size = 0
    for ts, text in _merged(c, app, run, now, extra):
        if query.since is not None and ts < query.since:
            break
        if query.tail_lines is not None and len(picked) >= query.tail_lines:
            break
        line = f"{_stamp(ts)} {text}\n" if query.timestamps else f"{text}\n"
        size += len(line)
        if size > MAX_BYTES:
            break
        picked.append(line)
    body = "".join(reversed(picked)).encode()
    return body[: query.limit_bytes] if query.limit_bytes is not None else body


def follow_lines(
    c: ContainerSim,
    app: str,
    run: Instance,
    after: float,
    now: float,
    timestamps: bool,
    extra: Sequence[tuple[float, str]] = (),
) -> bytes:
    """Lines written in (after, now], oldest first: what ``follow=true`` streams next."""
    fresh = []
    for ts, text in _merged(c, app, run, now, extra):
        if ts <= after:
            break
        fresh.append(f"{_stamp(ts)} {text}\n" if timestamps else f"{text}\n")
    return "".join(reversed(fresh)).encode()
