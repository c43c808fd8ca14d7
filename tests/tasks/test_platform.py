"""Pure parts of the platform tasks, and the retry policy."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from kernel.errors import ConfigurationError, NotificationError, PlatformAPIError, PlatformAuthError
from kernel.retry import is_transient, retry_on_transient
from tasks.platform import parse_prometheus, summarize_metrics

EXPOSITION = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{status="2xx",model="gpt-4"} 900
http_requests_total{status="5xx",model="gpt-4"} 100
error_rate 0.1
http_response_time_seconds{quantile="0.95"} 1.5
ai_model_up{model="gpt-4"} 0
ai_model_up{model="qwen"} 1
process_resident_memory_bytes 1.5e+09
"""


def test_parse_and_summarize_metrics() -> None:
    samples = parse_prometheus(EXPOSITION)
    assert len(samples) == 7
    m = summarize_metrics(samples)
    assert m.requests_total == 1000 and m.requests_by_status == {"2xx": 900, "5xx": 100}
    assert m.error_rate == 0.1 and m.response_time_p95_s == 1.5 and m.memory_bytes == 1.5e9
    assert m.models_up == {"gpt-4": False, "qwen": True}
    assert m.heap_used_bytes is None  # no heap figures: said as such, never 0


def test_the_heap_figures_are_kept() -> None:
    """The seed's `curl .../metrics | grep nodejs_heap`: high-memory reports the V8 heap beside the pods."""
    text = "nodejs_heap_used_bytes 4.5e+08\nnodejs_heap_size_total_bytes 5.85e+08\nnodejs_external_memory_bytes 1e+07\n"
    m = summarize_metrics(parse_prometheus(text))
    assert (m.heap_used_bytes, m.heap_total_bytes) == (4.5e8, 5.85e8)


def test_label_values_may_hold_braces_commas_and_escaped_quotes() -> None:
    """The hand-written regex this replaced stopped at the first ``}``, even inside a quoted label value."""
    text = (
        "# TYPE http_requests_total counter\n"
        'http_requests_total{path="/api/v1/models/{model}/health",status="5xx"} 7\n'
        'http_requests_total{path="/a,b",status="2xx",note="say \\"hi\\""} 93\n'
        "error_rate 0.07\n"
    )
    samples = parse_prometheus(text)
    assert [s.labels for s in samples[:2]] == [
        {"path": "/api/v1/models/{model}/health", "status": "5xx"},
        {"path": "/a,b", "status": "2xx", "note": 'say "hi"'},
    ]
    m = summarize_metrics(samples)
    assert m.requests_by_status == {"5xx": 7, "2xx": 93} and m.error_rate == 0.07


def test_a_body_that_is_not_prometheus_text_is_a_platform_error() -> None:
    with pytest.raises(PlatformAPIError, match="Prometheus text format"):
        parse_prometheus("<html>502 Bad Gateway</html>\n")


def test_retry_policy() -> None:
    assert is_transient(PlatformAPIError("boom", status_code=503))
    assert is_transient(PlatformAPIError("slow", status_code=429))
    assert not is_transient(PlatformAPIError("bad", status_code=404))
    assert not is_transient(PlatformAuthError("no", status_code=401))
    assert not is_transient(ConfigurationError("b", "f", "missing"))
    assert is_transient(ConfigurationError("b", "f", "unreachable", transient=True))
    assert not is_transient(NotificationError("maybe delivered", transient=False))
    assert retry_on_transient(None, None, Failed(data=PlatformAPIError("x", status_code=500)))
    assert not retry_on_transient(None, None, Failed(data=PlatformAuthError("x", status_code=403)))
