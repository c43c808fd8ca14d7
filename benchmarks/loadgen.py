"""A lean open-loop HTTP/1.1 load generator (for benchmarks only; stdlib only).

Why not an HTTP client library: at a few hundred requests per second a general client (httpx) spends more CPU per
request than the server under test, so the benchmark measured the client. Here every request is pre-serialised bytes,
sent over ``connections`` persistent keep-alive connections (no pipelining) with raw asyncio streams, in a process of
its own (``run_in_process``) so the generator shares no GIL with anything else.

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened before it. Its latency is measured from the
time it was DUE to the end of its response, so a request that waits for a free connection because the server is slow
counts that wait (no coordinated omission; what wrk2 calls the corrected latency). Plain ``wrk`` is closed-loop and
would hide exactly that queueing.

CLI (a quick check against any server): ``python -m benchmarks.loadgen http://127.0.0.1:8102/healthz --rate 500``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    sent: int
    errors: int  # transport failures and statuses other than the expected one
    elapsed_s: float  # from the first due time to the last response
    latencies_ms: list[float] = field(repr=False)  # per completed request, from its due time
    statuses: dict[int, int] = field(default_factory=dict)
    max_backlog: int = 0  # most requests ever due but not yet sent (> connections: the server fell behind)
    cpu_s: float = 0.0  # CPU time of the generator itself (its own process), to show it is not the bottleneck

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def build_request(
    method: str, host: str, port: int, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """One HTTP/1.1 keep-alive request, serialised once."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status and whether the server keeps the connection; the body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    keep_alive = True
    chunked = False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep_alive


async def generate(
    host: str,
    port: int,
    requests: Sequence[bytes],
    order: Sequence[int],
    rate: float,
    *,
    connections: int = 32,
    expect_status: int = 202,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Send ``requests[order[i]]`` for every i, open loop at ``rate`` per second, over ``connections`` connections."""
    due: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    max_backlog = 0
    total = len(order)

    async def connection() -> None:
        nonlocal errors
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            index, due_at = await due.get()
            if index < 0:
                break
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(requests[order[index]])
                status, keep_alive = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            latencies.append((time.perf_counter() - due_at) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            errors += status != expect_status
            if not keep_alive:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    cpu_before = time.process_time()
    begin = time.perf_counter()
    for i in range(total):
        due_at = begin + i / rate
        delay = due_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # everything due by now goes in at once, each with its own due time (sleep() overshoots by ~1 ms)
        due.put_nowait((i, due_at))
        max_backlog = max(max_backlog, due.qsize())
    for _ in workers:
        due.put_nowait((-1, 0.0))
    await asyncio.gather(*workers)
    return LoadResult(
        sent=total,
        errors=errors,
        elapsed_s=time.perf_counter() - begin,
        latencies_ms=latencies,
        statuses=statuses,
        max_backlog=max_backlog,
        cpu_s=time.process_time() - cpu_before,
    )


def _generate_sync(
    host: str, port: int, requests: Sequence[bytes], order: Sequence[int], rate: float, connections: int, expect: int
) -> LoadResult:
    return asyncio.run(generate(host, port, requests, order, rate, connections=connections, expect_status=expect))


def run_in_process(
    host: str,
    port: int,
    requests: Sequence[bytes],
    order: Sequence[int],
    rate: float,
    *,
    connections: int = 32,
    expect_status: int = 202,
) -> LoadResult:
    """``generate`` in a fresh (spawned) process: no GIL, event loop or import side effects shared with the caller.
    Like anything ``multiprocessing`` spawns, it re-imports the caller's main module: keep that under
    ``if __name__ == "__main__"``."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_generate_sync, (host, port, list(requests), list(order), rate, connections, expect_status))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="", help="request body (sent with Content-Type: application/json)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--expect", type=int, default=200)
    args = parser.parse_args()
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    headers = dict(h.split(":", 1) for h in args.header)
    if args.body:
        headers.setdefault("Content-Type", "application/json")
    request = build_request(
        args.method,
        host,
        port,
        url.path or "/",
        args.body.encode(),
        {k.strip(): v.strip() for k, v in headers.items()},
    )
    result = asyncio.run(
        generate(
            host,
            port,
            [request],
            [0] * args.requests,
            args.rate,
            connections=args.connections,
            expect_status=args.expect,
        )
    )
    summary = {k: v for k, v in asdict(result).items() if k != "latencies_ms"}
    summary |= {
        "rate_per_s": round(result.sent / result.elapsed_s, 1),
        "p50_ms": round(result.percentile(0.5), 2),
        "p99_ms": round(result.percentile(0.99), 2),
        "max_ms": round(max(result.latencies_ms, default=float("nan")), 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
