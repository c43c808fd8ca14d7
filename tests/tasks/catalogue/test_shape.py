"""The catalogue's log findings: the lines that matched, counted by word and by the address each names as its
source (``ip=``, else the first address in it)."""

from __future__ import annotations

from tasks.catalogue.shape import log_findings, source_address

LINES = [
    'WARN UNAUTHORIZED request refused ip=203.0.113.50 status=401 reason="invalid API key"',
    'WARN UNAUTHORIZED request refused ip=203.0.113.50 status=401 reason="invalid API key"',
    'WARN BLOCKED ip=203.0.113.50 requests refused at the edge from now on reason="from 10.9.9.9"',
    'WARN UNAUTHORIZED request refused ip=10.1.2.3 status=401 reason="invalid API key"',
    "WARN THREAT api_key=key-1 user=user-008 reason=unknown",
]


def test_the_lines_are_counted_by_word_and_by_source_address() -> None:
    assert source_address(LINES[2]) == "203.0.113.50"  # the ip= field, not the address in the reason
    assert source_address("connection from 198.51.100.7 refused") == "198.51.100.7"
    assert source_address(LINES[4]) is None
    summary, *by_address = log_findings("UNAUTHORIZED|BLOCKED|THREAT", LINES, ["UNAUTHORIZED", "BLOCKED", "THREAT"])
    assert (summary.check, summary.figure, summary.verdict) == (
        "API log lines UNAUTHORIZED|BLOCKED|THREAT",
        "5",
        "warn",
    )
    assert summary.detail == "UNAUTHORIZED x3, BLOCKED x1, THREAT x1; from 2 address(es)"
    assert [(f.check, f.figure, f.detail) for f in by_address] == [
        ("API log 203.0.113.50", "3 line(s)", "UNAUTHORIZED x2, BLOCKED x1"),
        ("API log 10.1.2.3", "1 line(s)", "UNAUTHORIZED x1"),
    ]
    flagged = log_findings(
        "malware|hack", ["prompt category=Malware ip=198.51.100.9"], ["malware", "hack"], ignore_case=True
    )
    assert [(f.check, f.detail) for f in flagged[1:]] == [("API log 198.51.100.9", "malware x1")]
    assert log_findings("X", [], ["X"])[0].verdict == "ok"
