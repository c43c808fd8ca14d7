"""prefect.yaml is valid: every entrypoint imports to a flow, names are unique, pools are defined."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = SPEC["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_imports_to_a_flow(deployment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded the way the worker loads it (from the project directory, by Prefect's own loader)."""
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    assert "environment" in flow.parameters.properties


def test_deployment_names_are_unique() -> None:
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names))


def test_every_deployment_uses_a_defined_work_pool_and_takes_an_environment() -> None:
    pools = {pool["name"] for pool in SPEC["definitions"]["work_pools"].values()}
    for deployment in DEPLOYMENTS:
        assert deployment["work_pool"]["name"] in pools
        assert "environment" in deployment.get("parameters", {}), deployment["name"]


def test_no_secret_in_prefect_yaml() -> None:
    text = (ROOT / "prefect.yaml").read_text().lower()
    for word in ("password", "token:", "secret_access_key", "routing_key", "api_key"):
        assert word not in text


def test_high_memory_usage_routes_to_high_memory(tmp_path: Path) -> None:
    """The gateway's event for a firing HighMemoryUsage (its resource names the alert, its payload the pod) is
    matched by high-memory's trigger, by Prefect's own matching; another alert's is not (incident-triage's is)."""
    from prefect.events import DeploymentTriggerTypes
    from prefect.events.schemas.events import Resource
    from pydantic import TypeAdapter

    from runbooks.gateway.models import NormalizedAlert
    from runbooks.gateway.store import GatewayStore

    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "high-memory"]
    [trigger] = deployment["triggers"]
    assert trigger["expect"] == ["runbooks.incident.opened"]
    store = GatewayStore(tmp_path / "gateway.sqlite")
    labels = {"alertname": "HighMemoryUsage", "namespace": "production", "pod": "api-1", "container": "api"}
    for name, extra in (("HighMemoryUsage", labels), ("HighErrorRate", {"alertname": "HighErrorRate"})):
        store.accept([NormalizedAlert(fingerprint=name, name=name, status="firing", labels=extra, source="test")])
    events = {e["resource"]["runbooks.alert.name"]: e for _, e in store.due()}
    store.close()
    spec = TypeAdapter(DeploymentTriggerTypes).validate_python(trigger).match  # as `prefect deploy` reads it
    assert spec.includes([Resource.model_validate(events["HighMemoryUsage"]["resource"])])
    assert not spec.includes([Resource.model_validate(events["HighErrorRate"]["resource"])])
    assert events["HighMemoryUsage"]["payload"]["labels"]["pod"] == "api-1"
    params = trigger["parameters"]
    assert params["pod"] == "{{ event.payload.labels.pod }}" and params["dry_run"] is False
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert flow.name == "high-memory" and set(params) <= set(flow.parameters.properties)


def test_verify_backup_runs_weekly_one_at_a_time() -> None:
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "verify-backup"]
    [schedule] = deployment["schedules"]
    assert schedule["cron"] == "0 4 * * 0" and schedule["timezone"] == "UTC"  # Sundays 04:00 UTC
    assert schedule["active"] is False  # like every schedule here: switched on per environment
    assert deployment["concurrency_limit"]["limit"] == 1


def test_the_backup_missing_automation_has_its_deployment() -> None:
    """deployments/automations.py runs ``backup-missing/backup-missing``: the flow name and the deployment name."""
    from deployments.automations import BACKUP_MISSING_DEPLOYMENT

    flow_name, _, deployment_name = BACKUP_MISSING_DEPLOYMENT.partition("/")
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == deployment_name]
    assert load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"])).name == flow_name


def test_releases_run_one_at_a_time() -> None:
    for name in ("deploy-and-validate", "rollback-release"):
        [deployment] = [d for d in DEPLOYMENTS if d["name"] == name]
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert "schedules" not in deployment  # a release is started by a person (or CI), never by a clock


def test_weekly_maintenance_runs_on_sundays_before_verify_backup() -> None:
    [maintenance] = [d for d in DEPLOYMENTS if d["name"] == "weekly-maintenance"]
    [verify] = [d for d in DEPLOYMENTS if d["name"] == "verify-backup"]
    [schedule] = maintenance["schedules"]
    minute, hour, _, _, weekday = schedule["cron"].split()
    v_minute, v_hour, _, _, v_weekday = verify["schedules"][0]["cron"].split()
    assert weekday == v_weekday == "0" and schedule["timezone"] == "UTC" and schedule["active"] is False
    starts, verify_starts = int(hour) * 60 + int(minute), int(v_hour) * 60 + int(v_minute)
    assert starts + maintenance["parameters"]["window_minutes"] <= verify_starts  # its window closes first
    assert maintenance["concurrency_limit"]["limit"] == 1
    assert load_flow_from_entrypoint(str(ROOT / maintenance["entrypoint"])).name == "weekly-maintenance"


def test_slow_queries_and_database_locks_start_db_performance() -> None:
    """The gateway's incidents carry ``runbooks.alert.name``; db-performance's trigger matches those two alerts only."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.events.schemas.events import Resource

    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "db-performance"]
    [trigger] = [DeploymentEventTrigger(**t) for t in deployment["triggers"]]
    assert trigger.expect == {"runbooks.incident.opened"}

    def incident(alert: str) -> Resource:
        return Resource({"prefect.resource.id": "runbooks.incident.i-1", "runbooks.alert.name": alert})

    assert trigger.match.matches(incident("SlowQueries")) and trigger.match.matches(incident("DatabaseLocks"))
    assert not trigger.match.matches(incident("ModelDown"))
    assert load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"])).name == "db-performance"


def test_certificates_are_checked_daily_and_renewed_by_a_person() -> None:
    [check] = [d for d in DEPLOYMENTS if d["name"] == "certificate-check"]
    [renew] = [d for d in DEPLOYMENTS if d["name"] == "renew-certificate"]
    [schedule] = check["schedules"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month, weekday) == ("*", "*", "*") and schedule["timezone"] == "UTC" and schedule["active"] is False
    assert "schedules" not in renew and renew["concurrency_limit"]["limit"] == 1
    names = {load_flow_from_entrypoint(str(ROOT / d["entrypoint"])).name for d in (check, renew)}
    assert names == {"certificate-check", "renew-certificate"}


#: the runbook catalogue's alerts (alerting/rules/) and the deployment each starts; ModelDown included
CATALOGUE_ROUTES = {
    "UnauthorizedAccessSpike": "security-unauthorized-access",
    "ApiKeyLeak": "security-key-compromise",
    "SuspiciousUsage": "security-suspicious-usage",
    "LoadImbalance": "lb-rebalance",
    "CircuitBreakerOpen": "circuit-breakers",
    "ModelDown": "model-unavailable",
    "ProviderHighLatency": "model-latency",
    "CostBudgetExceeded": "cost-optimization",
}


@pytest.mark.parametrize(("alert", "name"), CATALOGUE_ROUTES.items(), ids=list(CATALOGUE_ROUTES))
def test_each_catalogue_alert_starts_its_flow_and_no_other(alert: str, name: str, tmp_path: Path) -> None:
    """The gateway's event for the firing alert (built by the gateway's own store) is matched, by Prefect's
    matching, by the trigger of its flow's deployment only; the parameters are the flow's and the alert's labels
    fill them (the leaked key, the model down)."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.events.schemas.events import Resource

    from runbooks.gateway.models import NormalizedAlert
    from runbooks.gateway.store import GatewayStore

    store = GatewayStore(tmp_path / "gateway.sqlite")
    labels = {"alertname": alert, "model": "gpt-4", "key_id": "key_0123", "user_id": "user-003"}
    store.accept([NormalizedAlert(fingerprint=alert, name=alert, status="firing", labels=labels, source="test")])
    [(_, event)] = store.due()
    store.close()
    resource = Resource.model_validate(event["resource"])
    started = [
        d["name"]
        for d in DEPLOYMENTS
        for t in d.get("triggers", [])
        if t["expect"] == ["runbooks.incident.opened"] and DeploymentEventTrigger(**t).match.matches(resource)
    ]
    assert sorted(started) == sorted([name, "incident-triage"])  # the triage tells (its policy: no mitigation)
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == name]
    [trigger] = deployment["triggers"]
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert flow.name == name and set(trigger["parameters"]) <= set(flow.parameters.properties)
    assert trigger["parameters"]["incident"] == "{{ event.payload.incident_id }}"
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    if alert == "ApiKeyLeak":
        assert trigger["parameters"]["key_id"] == "{{ event.payload.labels.key_id }}"
        assert event["payload"]["labels"]["key_id"] == "key_0123"
    if alert in ("ModelDown", "ProviderHighLatency"):
        assert trigger["parameters"]["model"] == "{{ event.payload.labels.model }}"
