"""The cert-manager stand-in's reading of ``spec.duration`` (what it issues when no lifetime is set). The stand-ins
at work (issuing, reloading, told not to): tests/flows/test_certificates.py."""

from __future__ import annotations

from sandbox.certificates import parse_duration


def test_a_certificate_duration_is_read_as_go_writes_it() -> None:
    assert parse_duration("2160h", 1) == 2160 * 3600
    assert parse_duration("1h30m15s", 1) == 5415
    assert parse_duration("0.5h", 1) == 1800
    assert parse_duration(None, 42) == 42 and parse_duration("soon", 42) == 42
