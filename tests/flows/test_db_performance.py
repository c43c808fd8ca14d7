"""db-performance on the session's sandbox (mode auto): the root of a lock chain is cancelled and its waiters go on;
a backup session (``application_name`` pg_dump) at the root of another chain is never touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run

from blocks.environment import RunbookEnvironment
from flows.db_performance import db_performance, describe_target
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.pglocks import LockChain, psql


@pytest.fixture()
def chains(sandbox: Sandbox) -> Iterator[tuple[LockChain, LockChain]]:
    dsn = RunbookEnvironment.load(TEST_ENVIRONMENT).postgres.dsn.get_secret_value()
    started: list[LockChain] = []
    try:
        started.append(LockChain(dsn, waiters=2).start())
        started.append(LockChain(dsn, holder_app="pg_dump", waiters=1).start())
        yield started[0], started[1]
    finally:
        for chain in started:
            chain.close()


async def test_db_performance_cancels_the_root_and_never_a_backup(chains: tuple[LockChain, LockChain]) -> None:
    app, backup = chains
    state = await db_performance(environment=TEST_ENVIRONMENT, min_blocked_s=0, reindex=False, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    records = {r.data["pid"]: r for r in result["actions"]}

    # the application's root: cancelled (its query, not its connection), and both waiters went on
    done = records[app.holder_pid]
    assert (done.action, done.decision, done.outcome) == ("cancel-backend", "auto", "done"), done
    app.join()
    assert isinstance(app.errors[app.holder_pid], psycopg.errors.QueryCanceled)
    assert all(app.errors[pid] is None for pid in app.waiter_pids), app.errors
    assert app.value() == 2
    assert "pg_sleep(?)" in done.data["query"] and "600" not in done.data["query"]

    # the backup's session: refused, still there, still holding its lock
    refused = records[backup.holder_pid]
    assert (refused.decision, refused.outcome) == ("refused", "not-done") and "pg_dump" in refused.detail
    assert psql(backup.dsn, f"SELECT wait_event FROM pg_stat_activity WHERE pid = {backup.holder_pid}") == "PgSleep"
    [waiter] = backup.waiter_pids
    assert psql(backup.dsn, f"SELECT pg_blocking_pids({waiter})") == f"{{{backup.holder_pid}}}"
    assert waiter not in records  # a waiter is never a target


async def test_a_dry_run_describes_and_touches_nothing(chains: tuple[LockChain, LockChain]) -> None:
    app, _ = chains
    state = await db_performance(
        environment=TEST_ENVIRONMENT, min_blocked_s=0, reindex=False, dry_run=True, return_state=True
    )
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    [record] = [r for r in result["actions"] if r.data["pid"] == app.holder_pid]
    assert (record.decision, record.outcome) == ("observed", "not-done") and result["mode"] == "observe"
    assert psql(app.dsn, f"SELECT wait_event FROM pg_stat_activity WHERE pid = {app.holder_pid}") == "PgSleep"


def test_the_approval_shows_the_query_without_its_literals() -> None:
    from tasks.diagnostics.postgres import Session, Target, redact_literals

    query = redact_literals("UPDATE users SET api_key = 'sk-live-123' WHERE id = 42")
    session = Session(
        pid=7, backend_start=None, usename="app", application_name="api", backend_type="client backend",
        client="10.0.0.5", state="active", wait_event_type=None, wait_event=None, query=query,
        query_age_s=400, xact_age_s=400, state_age_s=400, blocked_by=[],
    )  # fmt: skip
    target = Target(session=session, kind="long-running", reason="active for 400s (over 300s)")
    text = describe_target(target, "app@db:5432/ai", "production", 5, True)
    assert "pg_cancel_backend(7)" in text and "pg_terminate_backend" in text and "active for 400s" in text
    assert "UPDATE users SET api_key = ? WHERE id = ?" in text and "sk-live" not in text and "42" not in text


async def paused_run(environment: str, run: asyncio.Task[Any], timeout_s: float = 120) -> UUID:
    """The id of the db-performance run of ``environment`` once it is paused for approval."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.done():
            raise AssertionError(f"db-performance did not pause: {run.result()}")
        async with get_client() as client:
            paused = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["db-performance"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for flow_run in paused:
            if flow_run.parameters.get("environment") == environment:
                return flow_run.id
        await asyncio.sleep(0.5)
    raise AssertionError(f"db-performance never paused for approval within {timeout_s}s")


async def test_outside_the_sandbox_it_cancels_once_approved(
    chains: tuple[LockChain, LockChain], production_environment: str
) -> None:
    app, _ = chains
    run = asyncio.create_task(
        db_performance(
            environment=production_environment,
            min_blocked_s=0,
            reindex=False,
            dry_run=False,
            approval_timeout_s=60,
            return_state=True,
        )
    )
    run_id = await paused_run(production_environment, run)
    assert psql(app.dsn, f"SELECT wait_event FROM pg_stat_activity WHERE pid = {app.holder_pid}") == "PgSleep"
    await aresume_flow_run(run_id, run_input={"approve": True, "approver": "alice"})
    state = await asyncio.wait_for(run, timeout=120)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    [record] = [r for r in result["actions"] if r.data["pid"] == app.holder_pid]
    assert (record.decision, record.approver, record.outcome) == ("approved", "alice", "done"), record
    app.join()
    assert app.value() == 2  # both waiters went on
