"""What the catalogue's flow tests share: the platform read as an operator reads it, ``runbooks actions``, and
waiting for a run paused for approval."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType

from runbooks.cli import main as runbooks_cli


def model_config(platform_admin: tuple[str, dict[str, str]], model: str) -> dict[str, Any]:
    url, headers = platform_admin
    response = httpx.get(f"{url}/admin/models/{model}/config", headers=headers)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def runbooks_actions(environment: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``runbooks actions -e <environment>``, as the operator types it (in a thread: it runs its own loop)."""
    capsys.readouterr()
    assert await asyncio.to_thread(runbooks_cli, ["actions", "-e", environment]) == 0
    return capsys.readouterr().out


async def paused_run(flow_name: str, incident: str, run: asyncio.Task[Any], timeout_s: float = 120) -> Any:
    """The flow run of ``flow_name`` for ``incident`` once it is paused for approval."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.done():
            raise AssertionError(f"{flow_name} did not pause: {run.result()}")
        async with get_client() as client:
            paused = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for flow_run in paused:
            if flow_run.parameters.get("incident") == incident:
                return flow_run
        await asyncio.sleep(0.5)
    raise AssertionError(f"{flow_name} never paused within {timeout_s}s")


async def approval_form(flow_run: Any) -> dict[str, str]:
    """The paused run's form: its action tickboxes as {label: field}, each ticked by default, ``approve`` not."""
    from prefect.input.run_input import read_flow_run_input

    keyset = flow_run.state.state_details.run_input_keyset
    schema = await read_flow_run_input(keyset["schema"], flow_run_id=flow_run.id)
    fields = {p["title"]: name for name, p in schema["properties"].items() if name.startswith("action_")}
    assert all(schema["properties"][f]["default"] is True for f in fields.values())
    assert schema["properties"]["approve"]["default"] is False  # default deny
    return fields


async def answer(flow_run: Any, fields: dict[str, str], tick: set[str], approver: str = "alice") -> None:
    """Approve with only the actions labelled in ``tick`` ticked (every other one unticked)."""
    from prefect.flow_runs import aresume_flow_run

    assert tick <= set(fields), f"{tick - set(fields)} not in the form {sorted(fields)}"
    ticks = {field: label in tick for label, field in fields.items()}
    await aresume_flow_run(flow_run.id, run_input={"approve": True, "approver": approver, **ticks})


async def findings_table(runbook: str, environment: str) -> dict[str, dict[str, Any]]:
    """The latest findings table artifact of ``runbook`` in ``environment`` (as the UI shows it), rows by check."""
    import json

    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from blocks.environment import load_environment

    key = f"{runbook}-{(await load_environment(environment)).kind}-findings"
    async with get_client() as client:
        [table] = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    return {row["check"]: row for row in rows}
