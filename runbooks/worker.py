"""A Prefect worker that runs flow runs inside its own process: the fast lane for alert-triggered triage.

Prefect's process worker starts a new Python interpreter for every flow run. Before the first diagnostic, that
interpreter has to import Prefect, the blocks (boto3, kubernetes-asyncio) and the flow: 3 s on a quiet machine,
5 to 10 s on two loaded cores. A page at 3 a.m. should not wait for that. So the work pool of ``incident-triage``
is served by this worker instead. It imports each entrypoint once, and runs every flow run as an asyncio task in
its own event loop, through Prefect's own flow engine. States, logs, results, events, pauses for approval and
the UI work as they do for any other flow run.

What it gives up, on purpose:

- No process isolation. A flow that blocks the event loop delays the other runs. The triage flow only awaits
  network calls.
- The deployment's ``pull`` steps are not run. The worker runs the code of its own checkout (its working
  directory), which is what the sandbox's pull step points at anyway.
- ``job_variables`` (command, env) do not apply.
- A pending run is cancelled by cancelling its task. A running one keeps going until it finishes, as with a
  worker whose process died.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.exceptions import InfrastructureNotFound
from prefect.flow_engine import run_flow
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

IDENTIFIER_PREFIX = "in-process:"
#: the worker type (and work pool type) of its own; Prefect's ``process`` type stays Prefect's
WORKER_TYPE = "runbooks-inprocess"


class InProcessWorker(ProcessWorker):
    """A worker whose flow runs are asyncio tasks of its own process (see the module docstring).

    It reuses the process worker's job configuration, so a pool of this type has the process pool's template.
    """

    type = WORKER_TYPE
    _description = "Runs each flow run as an asyncio task of the worker's own process (runbooks/worker.py)."
    _display_name = "Runbooks in-process"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flows: dict[str, Flow[..., Any]] = {}
        self._running: dict[str, asyncio.Task[Any]] = {}

    async def load_flow(self, flow_run: FlowRun) -> Flow[..., Any]:
        """The deployment's flow, imported once per entrypoint from this worker's working directory."""
        if flow_run.deployment_id is None:
            raise ValueError(f"flow run {flow_run.id} has no deployment: only deployments run on a worker")
        deployment = await self.client.read_deployment(flow_run.deployment_id)
        if not deployment.entrypoint:
            raise ValueError(f"deployment {deployment.name!r} has no entrypoint")
        if deployment.entrypoint not in self._flows:
            flow: Flow[..., Any] = await asyncio.to_thread(load_flow_from_entrypoint, deployment.entrypoint, False)
            self._flows[deployment.entrypoint] = flow
        return self._flows[deployment.entrypoint]

    async def preload(self, entrypoints: list[str]) -> None:
        """Import flows before the first run needs them (the first triage should be as fast as the next)."""
        for entrypoint in entrypoints:
            self._flows[entrypoint] = await asyncio.to_thread(load_flow_from_entrypoint, entrypoint, False)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        flow = await self.load_flow(flow_run)
        identifier = f"{IDENTIFIER_PREFIX}{os.getpid()}:{flow_run.id}"
        execution = asyncio.create_task(run_flow(flow, flow_run=flow_run, return_type="state"))  # type: ignore[arg-type]
        self._running[identifier] = execution
        (task_status or anyio.TASK_STATUS_IGNORED).started(identifier)  # type: ignore[arg-type]
        try:
            await execution
        except asyncio.CancelledError:
            # cancelled by kill_infrastructure; the base worker records the run as cancelled
            return ProcessWorkerResult(status_code=0, identifier=identifier)
        except Exception:  # noqa: BLE001 - the engine failed outside the flow: the base worker marks it crashed
            self.get_flow_run_logger(flow_run).exception("the flow engine failed in the in-process worker")
            return ProcessWorkerResult(status_code=1, identifier=identifier)
        finally:
            self._running.pop(identifier, None)
        return ProcessWorkerResult(status_code=0, identifier=identifier)

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: ProcessJobConfiguration, grace_seconds: int = 30
    ) -> None:
        execution = self._running.get(infrastructure_pid)
        if execution is None:
            raise InfrastructureNotFound(f"no flow run {infrastructure_pid!r} in this worker")
        execution.cancel()
        with anyio.move_on_after(grace_seconds):
            await asyncio.gather(execution, return_exceptions=True)


async def serve(pool: str, *, name: str | None = None, preload: list[str] | None = None, query_s: float = 1.0) -> None:
    """Poll ``pool`` every ``query_s`` seconds and run its flow runs in this process until cancelled."""
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

    from kernel.redact import install_log_redaction

    install_log_redaction()  # the worker's own records too, not only those of the flows it runs
    with temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: query_s}):
        worker = InProcessWorker(work_pool_name=pool, name=name, prefetch_seconds=5, heartbeat_interval_seconds=15)
        await worker.preload(preload or [])
        await worker.start()
