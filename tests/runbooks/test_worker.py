"""The in-process worker against the test Prefect server: a deployment's run executes inside the worker's process,
with its parameters, and ends Completed through Prefect's own engine."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import InfrastructureNotFound

from runbooks.worker import IDENTIFIER_PREFIX, WORKER_TYPE, InProcessWorker
from tests.runbooks.worker_flows import record_pid

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def test_flow_run_executes_in_the_worker_process(tmp_path: Path) -> None:
    pool = f"test-in-process-{uuid.uuid4().hex[:6]}"
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type=WORKER_TYPE))
        deployment = await record_pid.to_deployment(name=pool, work_pool_name=pool)
        deployment_id = await deployment.apply()
        out = tmp_path / "pid.txt"
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"path": str(out), "word": "triage"}
        )

        worker = InProcessWorker(work_pool_name=pool, limit=1)
        await worker.start(run_once=True)  # polls once, runs what it found, waits for it (limit)

        finished = await client.read_flow_run(run.id)
    assert finished.state is not None and finished.state.is_completed(), finished.state
    assert out.read_text() == f"{os.getpid()} triage"  # this process, the run's parameters
    assert (finished.infrastructure_pid or "").startswith(IDENTIFIER_PREFIX)
    async with get_client() as client:
        assert (await client.read_flow(finished.flow_id)).name == "record-pid"


async def test_unknown_run_is_not_killed() -> None:
    worker = InProcessWorker(work_pool_name="unused")
    with pytest.raises(InfrastructureNotFound):
        await worker.kill_infrastructure(f"{IDENTIFIER_PREFIX}1:nothing", configuration=None)  # type: ignore[arg-type]


def test_registers_its_own_type_and_leaves_process_alone() -> None:
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker
    from prefect.workers.process import ProcessWorker

    assert lookup_type(BaseWorker, "process") is ProcessWorker
    assert lookup_type(BaseWorker, WORKER_TYPE) is InProcessWorker
