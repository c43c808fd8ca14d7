"""The sandbox's default settings: what ``./dev up`` starts on a fresh machine."""

from __future__ import annotations

from sandbox.config import SandboxSettings


def test_default_ports_are_all_different() -> None:
    """Two components on one default port fail ``runbooks sandbox up`` on a fresh machine (the recovery target's
    PostgreSQL once took the main cluster's 5442: the suite's free ports hid it)."""
    fields = SandboxSettings.model_fields
    ports = {name: getattr(SandboxSettings(), name) for name in fields if name.endswith("_port")}
    by_port: dict[int, list[str]] = {}
    for name, port in ports.items():
        by_port.setdefault(port, []).append(name)
    assert len(ports) >= 10, ports
    assert {port: names for port, names in by_port.items() if len(names) > 1} == {}
