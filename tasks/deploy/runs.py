"""One release at a time per environment: the other ``deploy-and-validate`` / ``rollback-release`` runs that are
still running or paused on the same environment, read from the Prefect API (which every worker shares)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext

from kernel.retry import read_task

RELEASE_FLOWS = ["deploy-and-validate", "rollback-release"]
_BUSY = [StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


def current_run_id() -> str:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else "no-flow-run"


@read_task
async def other_release_runs(environment: str) -> list[str]:
    """Names and ids of the other release runs on ``environment`` that are running, paused or cancelling."""
    me = current_run_id()
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=RELEASE_FLOWS)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_BUSY))),
        )
    return [
        f"{r.name} ({r.id}, {r.state.type.value if r.state else '?'})"
        for r in runs
        if str(r.id) != me and r.parameters.get("environment", "sandbox") == environment
    ]
