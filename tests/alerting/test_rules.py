"""The alerting rules in ``alerting/rules/``: promtool's unit tests, and the thresholds the triage policy uses."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from kernel import processes

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "alerting" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "alerting" / "tests").glob("*.yml"))
POLICY = ROOT / "tasks" / "triage" / "policy.yaml"
MEMORY_POLICY = ROOT / "tasks" / "memory" / "policy.yaml"

#: the alerts the operational runbooks answer (seed: "Monitoring & Alerts"), plus ModelDown, plus the seed's
#: "Performance Issues / High Memory Usage"
EXPECTED = {"HighErrorRate", "HighResponseTime", "ServiceDown", "ModelDown", "HighMemoryUsage"}
#: the runbook catalogue's triggers (issue 14), each with the deployment it starts (prefect.yaml)
CATALOGUE = {
    "UnauthorizedAccessSpike": "security-unauthorized-access",
    "ApiKeyLeak": "security-key-compromise",
    "SuspiciousUsage": "security-suspicious-usage",
    "LoadImbalance": "lb-rebalance",
    "CircuitBreakerOpen": "circuit-breakers",
    "ModelDown": "model-unavailable",
    "ProviderHighLatency": "model-latency",
    "CostBudgetExceeded": "cost-optimization",
}


def _rules() -> dict[str, dict[str, object]]:
    found = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    return found


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus; ./dev and .ci/run do it)")
    return promtool


def test_rule_files_are_valid() -> None:
    result = processes.run([_promtool(), "check", "rules", *map(str, RULES)], timeout_s=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests() -> None:
    assert RULE_TESTS
    result = processes.run([_promtool(), "test", "rules", *map(str, RULE_TESTS)], timeout_s=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_seed_alert_has_a_rule() -> None:
    assert EXPECTED | set(CATALOGUE) <= set(_rules())


def test_thresholds_are_the_triage_policy_ones() -> None:
    """One number per threshold: the rules fire exactly where the triage stops calling the platform healthy."""
    thresholds = yaml.safe_load(POLICY.read_text())["thresholds"]
    rules = _rules()
    for alert, key in (("HighErrorRate", "error_rate"), ("HighResponseTime", "response_time_p95_s")):
        match = re.search(r">\s*([0-9.]+)\s*$", str(rules[alert]["expr"]).strip())
        assert match, f"{alert}: no trailing '> threshold' in its expr"
        assert float(match.group(1)) == thresholds[key], f"{alert} and policy.yaml thresholds.{key} differ"


def test_catalogue_alerts_use_the_catalogue_policy_and_route_to_their_flows() -> None:
    """alerting/rules/catalogue.yml fires at the catalogue policy's numbers; each alert starts its flow's deployment
    (prefect.yaml) and the triage leaves the acting to it."""
    policy = yaml.safe_load((ROOT / "tasks" / "catalogue" / "policy.yaml").read_text())
    rules = _rules()

    def threshold(alert: str) -> float:
        match = re.search(r">\s*([0-9.]+)\s*$", str(rules[alert]["expr"]).strip())
        assert match, f"{alert}: no trailing '> threshold' in its expr"
        return float(match.group(1))

    assert threshold("UnauthorizedAccessSpike") == policy["unauthorized_access"]["min_events"]
    assert threshold("ProviderHighLatency") == policy["model_latency"]["p95_ms"] / 1000
    assert threshold("LoadImbalance") == policy["lb_rebalance"]["max_share"]
    assert threshold("ApiKeyLeak") == policy["key_compromise"]["max_source_ips"]
    assert threshold("SuspiciousUsage") == policy["suspicious_usage"]["min_requests"]
    assert f"[{policy['suspicious_usage']['hours']}h]" in str(rules["SuspiciousUsage"]["expr"])  # its window too
    assert threshold("CostBudgetExceeded") == policy["cost_optimization"]["max_avg_cost_per_request"]
    routes: dict[str, str] = {}
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        for trigger in deployment.get("triggers", []):
            names = trigger["match"].get("runbooks.alert.name", [])
            for name in [names] if isinstance(names, str) else names:
                routes[name] = deployment["name"]
    assert {alert: routes.get(alert) for alert in CATALOGUE} == CATALOGUE
    triage = yaml.safe_load(POLICY.read_text())["alerts"]
    assert {alert: triage[alert]["mitigations"] for alert in CATALOGUE} == dict.fromkeys(CATALOGUE, [])


def test_high_memory_fires_at_the_memory_policy_ratio() -> None:
    """HighMemoryUsage's ratio is the memory policy's alert_ratio (one number, read by the flow's report too)."""
    expr = str(_rules()["HighMemoryUsage"]["expr"]).strip()
    match = re.search(r">\s*([0-9.]+)\s*$", expr)
    assert match and float(match.group(1)) == yaml.safe_load(MEMORY_POLICY.read_text())["alert_ratio"]
    # the limit is the container's own (cAdvisor's spec), so one rule fits pods of every size
    assert "container_spec_memory_limit_bytes" in expr and "container_memory_working_set_bytes" in expr
