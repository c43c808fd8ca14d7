"""One mitigation in a process of its own, as a second worker runs it (used by tests/flows/test_triage.py).

``python -m tests.flows.mitigation_process ENVIRONMENT INCIDENT_ID TARGET`` runs the production code (a flow run of
its own, ``mitigations.carry_out``) against the Prefect API in PREFECT_API_URL and prints the record as JSON.
"""

from __future__ import annotations

import asyncio
import sys

from prefect import flow

from tasks.triage import mitigations
from tasks.triage.mitigations import MitigationRecord, PlannedAction


@flow(name="apply-mitigation-test")
async def one_run(environment: str, incident_id: str, target: str) -> MitigationRecord:
    planned = PlannedAction(action="rollback", target=target, params={"timeout_s": 180})
    record = MitigationRecord(action="rollback", target=target, key=planned.key(incident_id), outcome="dry-run")
    return await mitigations.carry_out(environment, planned, record, observe=False)


if __name__ == "__main__":
    environment, incident_id, target = sys.argv[1:4]
    print(asyncio.run(one_run(environment, incident_id, target)).model_dump_json())
