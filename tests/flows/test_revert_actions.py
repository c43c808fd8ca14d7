"""revert-temporary-actions ends the catalogue's temporary actions with no one asking: its deployment's schedule is
on, every minute, one run at a time. (Each flow's test shortens its expiries and runs the flow as the schedule does:
tests/flows/test_security_unauthorized_access.py, test_security_suspicious_usage.py, test_model_unavailable.py,
test_model_latency.py; ``runbooks actions`` lists each action until then and not after.)"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]


def test_the_revert_is_scheduled_every_minute_and_on() -> None:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    [revert] = [d for d in deployments if d["name"] == "revert-temporary-actions"]
    [schedule] = revert["schedules"]
    assert (schedule["cron"], schedule["active"]) == ("* * * * *", True)  # on, unlike the other schedules
    assert revert["concurrency_limit"]["limit"] == 1
    assert load_flow_from_entrypoint(str(ROOT / revert["entrypoint"])).name == "revert-temporary-actions"
