"""Pure parts of the platform tasks, and the retry policy."""

from __future__ import annotations

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
