"""Pausing a run for a typed answer in the Prefect UI, with a timeout that is a denial.

The one place that pauses: ``incident-triage`` (a mitigation), ``deploy-and-validate`` (an inconclusive release)
and later runbooks ask through :func:`ask_approval`.
"""

from __future__ import annotations

from typing import TypeVar

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.states import Running

Form = TypeVar("Form", bound=RunInput)


async def running_again() -> None:
    """Put the run back in Running after a pause that nobody answered (else Prefect holds its next tasks)."""
    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or flow_ctx.flow_run is None:
        return
    async with get_client() as client:
        await client.set_flow_run_state(flow_ctx.flow_run.id, Running(), force=True)


async def ask_approval(
    form: type[Form], *, description: str, timeout_s: int, poll_s: float, **initial: object
) -> Form | None:
    """Pause the run until someone submits ``form`` in the UI; None when ``timeout_s`` passed first (the run is
    Running again, and the caller treats it as a denial)."""
    try:
        return await apause_flow_run(
            wait_for_input=form.with_initial_data(description=description, **initial),
            timeout=timeout_s,
            poll_interval=int(max(1, poll_s)),
        )
    except FlowPauseTimeout:
        await running_again()  # the server keeps a timed-out pause: the run goes on
        return None
