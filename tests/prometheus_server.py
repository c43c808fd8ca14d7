"""A real Prometheus (Debian's) on loopback, scraping a metrics endpoint that moves like a live service's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from blocks.prometheus import PrometheusServer
from kernel import processes
from tests.conftest import free_port
from tests.servers import serve

_scrapes = {"n": 0}


async def service_metrics(scope, receive, send):  # type: ignore[no-untyped-def]
    """Counters that rise at every scrape (5 % of requests 5xx), latency as a histogram (p95 between 0.5 and 1 s)."""
    _scrapes["n"] += 1
    n = _scrapes["n"]
    body = (
        "# TYPE http_requests_total counter\n"
        f'http_requests_total{{status="2xx"}} {100 * n}\n'
        f'http_requests_total{{status="5xx"}} {5 * n}\n'
        "# TYPE http_response_time_seconds histogram\n"
        f'http_response_time_seconds_bucket{{le="0.5"}} {90 * n}\n'
        f'http_response_time_seconds_bucket{{le="1"}} {99 * n}\n'
        f'http_response_time_seconds_bucket{{le="+Inf"}} {100 * n}\n'
        f"http_response_time_seconds_sum {40 * n}\n"
        f"http_response_time_seconds_count {100 * n}\n"
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _scalar(url: str, query: str) -> float:
    result = httpx.get(f"{url}/api/v1/query", params={"query": query}).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


@contextmanager
def prometheus_scraping_a_service(home: Path) -> Iterator[PrometheusServer]:
    """Prometheus scraping :func:`service_metrics` every second, with three scrapes done."""
    with serve(service_metrics, lifespan="off") as target:
        config = home / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: app\n    static_configs: [{{targets: ['{target.removeprefix('http://')}']}}]\n"
        )
        port = free_port()
        argv = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        pid = processes.spawn_daemon(argv, log_path=home / "prometheus.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for("Prometheus ready", lambda: httpx.get(f"{url}/-/ready").status_code == 200)
            # three scrapes at least, so rate() has points to work with
            wait_for("three scrapes", lambda: _scalar(url, "count_over_time(up[1m])") >= 3)
            yield PrometheusServer(url=url)
        finally:
            processes.stop_group(pid)
