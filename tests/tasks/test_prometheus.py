"""PromQL tasks against a real Prometheus (Debian's), scraping a metrics endpoint on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from blocks.prometheus import PrometheusServer
from kernel import processes
from kernel.errors import PrometheusError
from kernel.retry import is_transient
from tasks.prometheus import query_instant, query_range
from tests.conftest import free_port
from tests.servers import serve

_scrapes = {"n": 0}


async def _metrics_app(scope, receive, send):
    """A service whose counters rise at every scrape and whose latency is a histogram."""
    _scrapes["n"] += 1
    n = _scrapes["n"]
    body = (
        "# TYPE requests_total counter\n"
        f'requests_total{{status="200"}} {100 * n}\n'
        f'requests_total{{status="500"}} {5 * n}\n'
        "# TYPE latency_seconds histogram\n"
        f'latency_seconds_bucket{{le="0.5"}} {90 * n}\n'
        f'latency_seconds_bucket{{le="1"}} {99 * n}\n'
        f'latency_seconds_bucket{{le="+Inf"}} {100 * n}\n'
        f"latency_seconds_sum {40 * n}\n"
        f"latency_seconds_count {100 * n}\n"
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _wait(what: str, check, timeout_s: float = 60.0) -> None:
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


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    home: Path = tmp_path_factory.mktemp("prometheus")
    with serve(_metrics_app, lifespan="off") as target:
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
            _wait("Prometheus ready", lambda: httpx.get(f"{url}/-/ready").status_code == 200)
            # three scrapes at least, so rate() has points to work with
            _wait("three scrapes", lambda: _scalar(url, "count_over_time(up[1m])") >= 3)
            yield PrometheusServer(url=url, bearer_token=SecretStr("prometheus-test-token"))
        finally:
            processes.stop_group(pid)


async def test_instant_query_returns_typed_samples(prometheus: PrometheusServer) -> None:
    result = await query_instant.fn(prometheus, 'up{job="app"}')
    assert result.result_type == "vector"
    assert result.value() == 1.0
    assert result.samples[0].labels["job"] == "app"


async def test_rates_and_quantiles_from_counters_and_histograms(prometheus: PrometheusServer) -> None:
    error_ratio = await query_instant.fn(
        prometheus, 'sum(rate(requests_total{status="500"}[10s])) / sum(rate(requests_total[10s]))'
    )
    value = error_ratio.value()
    assert value is not None and value == pytest.approx(5 / 105, rel=0.01)
    p95 = await query_instant.fn(
        prometheus, "histogram_quantile(0.95, sum by (le) (rate(latency_seconds_bucket[10s])))"
    )
    p95_value = p95.value()
    assert p95_value is not None and 0.5 < p95_value <= 1.0


async def test_no_data_is_its_own_result_never_zero(prometheus: PrometheusServer) -> None:
    result = await query_instant.fn(prometheus, "sum(rate(nobody_measures_this_total[1m]))")
    assert result.no_data
    assert result.value() is None
    nan = await query_instant.fn(prometheus, "sum(rate(requests_total[10s])) * 0 / 0")  # NaN: no meaningful figure
    assert nan.no_data and nan.value() is None
    zero = await query_instant.fn(prometheus, "sum(rate(requests_total[10s])) * 0")
    assert not zero.no_data and zero.value() == 0.0


async def test_scalar_and_several_series(prometheus: PrometheusServer) -> None:
    scalar = await query_instant.fn(prometheus, "scalar(vector(3))")
    assert scalar.result_type == "scalar" and scalar.value() == 3.0
    several = await query_instant.fn(prometheus, "requests_total")
    assert len(several.samples) == 2
    with pytest.raises(PrometheusError, match="2 series"):
        several.value()


async def test_range_query(prometheus: PrometheusServer) -> None:
    end = time.time()
    result = await query_range.fn(prometheus, 'up{job="app"}', start=end - 30, end=end, step_s=1)
    assert not result.no_data
    assert len(result.series) == 1 and len(result.series[0].points) >= 2
    assert all(v == 1.0 for _, v in result.series[0].points)


async def test_bad_promql_fails_at_once_with_the_servers_reason(prometheus: PrometheusServer) -> None:
    with pytest.raises(PrometheusError) as info:
        await query_instant.fn(prometheus, "sum(rate(requests_total[5m]")
    assert info.value.status_code == 400
    assert "bad_data" in str(info.value) and "fix the PromQL" in str(info.value)
    assert not is_transient(info.value)


async def test_unreachable_server_is_transient() -> None:
    down = PrometheusServer(url="http://127.0.0.1:9")
    with pytest.raises(PrometheusError) as info:
        await query_instant.fn(down, "up")
    assert is_transient(info.value)
    assert "check the block's url" in str(info.value)
