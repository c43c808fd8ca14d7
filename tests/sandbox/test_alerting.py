"""The sandbox's alerting chain: platform double -> Prometheus (alerting/rules) -> Alertmanager -> alert gateway.

Two tests share what the chain needs (platform, gateway, Alertmanager, Prometheus) on free ports: one injects
``model-down`` through the CLI and follows the alert to the gateway, the other injects the runbook catalogue's
faults and sees each fire its rule. Every wait polls with a deadline.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel import processes
from runbooks.cli import main
from sandbox.components import AlertmanagerComponent, GatewayComponent, PrometheusComponent
from sandbox.config import SandboxState
from sandbox.manager import Sandbox
from tests.conftest import make_settings

CHAIN = ["platform", "gateway", "alertmanager", "prometheus"]


@pytest.fixture(scope="module")
def prefect_harness() -> None:
    """The gateway only queues events for Prefect here: no Prefect server needed (overrides conftest)."""


def _need(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (apt-get install prometheus prometheus-alertmanager)")


def _poll(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """``check()``'s first truthy answer, polled every half second until ``timeout_s``."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s:.0f}s (last: {last!r})")


def test_alertmanager_config_passes_amtool(tmp_path: Path, redis_url: str) -> None:
    _need("amtool")
    settings = make_settings(tmp_path, redis_url)
    component = AlertmanagerComponent(settings, SandboxState(tmp_path))
    config = component.write_config()
    result = processes.run(["amtool", "check-config", str(config)], timeout_s=30)
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "send_resolved: true" in text and "/alerts/alertmanager" in text
    token = SandboxState(tmp_path).secrets()["gateway_token"]
    assert token not in text  # the bearer token is read from a 0600 file, never written into the config
    assert component.token_path.read_text() == token and component.token_path.stat().st_mode & 0o077 == 0


def test_prometheus_config_passes_promtool(tmp_path: Path, redis_url: str) -> None:
    _need("promtool")
    config = PrometheusComponent(make_settings(tmp_path, redis_url), SandboxState(tmp_path)).write_config()
    result = processes.run(["promtool", "check", "config", str(config)], timeout_s=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_fault_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "fault", "meteor-strike"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model-down" in err and "clear" in err


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Sandbox]:
    _need("prometheus", "prometheus-alertmanager")
    settings = make_settings(tmp_path_factory.mktemp("chain") / "home", redis_url, startup_timeout_s=60.0)
    box = Sandbox(settings)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for field in ("home", "platform_port", "gateway_port", "prometheus_port", "alertmanager_port", "prefect_port"):
            monkeypatch.setenv(f"RUNBOOKS_SANDBOX_{field.upper()}", str(getattr(settings, field)))  # for the CLI
        try:
            box.up(CHAIN)
            yield box
        finally:
            main(["sandbox", "fault", "clear"])
            box.down(CHAIN)


def test_model_down_fires_and_reaches_the_gateway(chain: Sandbox) -> None:
    settings = chain.settings
    prometheus = PrometheusComponent(settings, chain.state).address
    alertmanager = AlertmanagerComponent(settings, chain.state).address
    gateway = GatewayComponent(settings, chain.state).address
    assert [s.name for s in chain.status(CHAIN)] == CHAIN and all(s.healthy for s in chain.status(CHAIN))

    def targets() -> dict[str, str] | None:
        active = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if set(health.values()) == {"up"} else None

    jobs = _poll(targets, timeout_s=30, what="every Prometheus target up")
    assert set(jobs) == {"ai-multimodel-api", "alertmanager", "prometheus", "runbooks-gateway"}

    assert main(["sandbox", "fault", "model-down"]) == 0

    def firing() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ModelDown" and a["state"] == "firing"]

    fired = _poll(firing, timeout_s=90, what="ModelDown firing in Prometheus")  # for: 30s, 5 s evaluations
    assert {a["labels"]["model"] for a in fired} == {"gpt-4"}

    def received() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{alertmanager}/api/v2/alerts", params={"filter": 'alertname="ModelDown"'}).json()
        return [a for a in alerts if a["status"]["state"] == "active"]

    assert {a["labels"]["model"] for a in _poll(received, timeout_s=30, what="ModelDown in Alertmanager")} == {"gpt-4"}

    token = chain.state.secrets()["gateway_token"]

    def incidents() -> list[dict[str, Any]]:
        answer = httpx.get(f"{gateway}/incidents", headers={"Authorization": f"Bearer {token}"})
        answer.raise_for_status()
        return [i for i in answer.json() if i["name"] == "ModelDown"]

    # group_wait 2s: Alertmanager posts it to the gateway with the bearer token at once
    assert _poll(incidents, timeout_s=30, what="a ModelDown incident at the gateway")

    assert main(["sandbox", "fault", "clear"]) == 0
    admin = {"Authorization": f"Bearer {chain.state.secrets()['platform_admin_token']}"}
    faults = httpx.get(f"{settings.url(settings.platform_port)}/_sandbox/faults", headers=admin).json()
    assert faults["active"] is False and faults["models_down"] == []


def test_catalogue_faults_fire_their_rules(chain: Sandbox) -> None:
    """Each catalogue fault through the CLI, all at once (faults add up), fires its rule of alerting/rules/catalogue.yml
    in Prometheus with the labels its flow's trigger reads: the leaked key, the spiking users, the model. About two
    minutes alone (CostBudgetExceeded's 2-minute rate and 1-minute `for:`)."""
    settings = chain.settings
    prometheus = PrometheusComponent(settings, chain.state).address
    platform = settings.url(settings.platform_port)
    users = httpx.get(f"{platform}/api/v1/analytics/top-users?hours=24").json()["users"]
    leaked_user, quiet_user = users[0]["user_id"], users[-1]["user_id"]  # the faults' picks (sandbox/faults.py)
    leaked_key = users[0]["api_key_ids"][0]

    def scraped() -> bool:
        query = httpx.get(f"{prometheus}/api/v1/query", params={"query": "ai_cost_usd_total"}).json()
        return bool(query["data"]["result"])

    _poll(scraped, timeout_s=30, what="the platform's cost counters in Prometheus")
    for fault in ("leaked-key", "suspicious-usage", "cost-spike", "load-imbalance", "breaker-open"):
        assert main(["sandbox", "fault", fault]) == 0

    expected = {
        ("ApiKeyLeak", leaked_key),
        ("SuspiciousUsage", leaked_user),  # a leaked key's traffic puts its user over 1,000 requests too
        ("SuspiciousUsage", quiet_user),
        ("CostBudgetExceeded", ""),
        ("LoadImbalance", "claude-3-5-sonnet"),
        ("CircuitBreakerOpen", "gemini-pro"),
    }

    def firing() -> set[tuple[str, str]] | None:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
        fired = {
            (
                a["labels"]["alertname"],
                a["labels"].get("key_id") or a["labels"].get("user_id") or a["labels"].get("model", ""),
            )
            for a in alerts
            if a["state"] == "firing"
        }
        return fired if expected <= fired else None

    fired = _poll(firing, timeout_s=240, what="the catalogue's alerts firing in Prometheus")
    assert not {name for name, _ in fired} & {"ModelDown", "UnauthorizedAccessSpike", "ProviderHighLatency"}
    alerts = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
    leak = next(a for a in alerts if a["labels"]["alertname"] == "ApiKeyLeak")
    assert leak["labels"]["user_id"] == leaked_user  # the flow's key_id and the owner, from the alert's labels
