"""PromQL tasks against a real Prometheus (Debian's), scraping a metrics endpoint on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from blocks.prometheus import PrometheusServer
from kernel.errors import PrometheusError
from kernel.retry import is_transient
from tasks.prometheus import query_instant, query_range
from tests.prometheus_server import prometheus_scraping_a_service


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with prometheus_scraping_a_service(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


async def test_instant_query_returns_typed_samples(prometheus: PrometheusServer) -> None:
    result = await query_instant.fn(prometheus, 'up{job="app"}')
    assert result.result_type == "vector"
    assert result.value() == 1.0
    assert result.samples[0].labels["job"] == "app"


async def test_rates_and_quantiles_from_counters_and_histograms(prometheus: PrometheusServer) -> None:
    error_ratio = await query_instant.fn(
        prometheus, 'sum(rate(http_requests_total{status="5xx"}[10s])) / sum(rate(http_requests_total[10s]))'
    )
    value = error_ratio.value()
    assert value is not None and value == pytest.approx(5 / 105, rel=0.01)
    p95 = await query_instant.fn(
        prometheus, "histogram_quantile(0.95, sum by (le) (rate(http_response_time_seconds_bucket[10s])))"
    )
    p95_value = p95.value()
    assert p95_value is not None and 0.5 < p95_value <= 1.0


async def test_no_data_is_its_own_result_never_zero(prometheus: PrometheusServer) -> None:
    result = await query_instant.fn(prometheus, "sum(rate(nobody_measures_this_total[1m]))")
    assert result.no_data
    assert result.value() is None
    nan = await query_instant.fn(prometheus, "sum(rate(http_requests_total[10s])) * 0 / 0")  # NaN: no meaningful figure
    assert nan.no_data and nan.value() is None
    zero = await query_instant.fn(prometheus, "sum(rate(http_requests_total[10s])) * 0")
    assert not zero.no_data and zero.value() == 0.0


async def test_scalar_and_several_series(prometheus: PrometheusServer) -> None:
    scalar = await query_instant.fn(prometheus, "scalar(vector(3))")
    assert scalar.result_type == "scalar" and scalar.value() == 3.0
    several = await query_instant.fn(prometheus, "http_requests_total")
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
        await query_instant.fn(prometheus, "sum(rate(http_requests_total[5m]")
    assert info.value.status_code == 400
    assert "bad_data" in str(info.value) and "fix the PromQL" in str(info.value)
    assert not is_transient(info.value)


async def test_unreachable_server_is_transient() -> None:
    down = PrometheusServer(url="http://127.0.0.1:9")
    with pytest.raises(PrometheusError) as info:
        await query_instant.fn(down, "up")
    assert is_transient(info.value)
    assert "check the block's url" in str(info.value)
