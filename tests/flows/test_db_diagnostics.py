"""db-diagnostics on the session's sandbox: a session holding a row lock and two waiting on it, read back as the
blocking tree with the right root, beside every other check, in the run's table artifacts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks.environment import RunbookEnvironment
from flows.db_diagnostics import db_diagnostics
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.pglocks import LockChain


@pytest.fixture()
def lock_chain(sandbox: Sandbox) -> Iterator[LockChain]:
    env = RunbookEnvironment.load(TEST_ENVIRONMENT)
    chain = LockChain(env.postgres.dsn.get_secret_value()).start()
    try:
        yield chain
    finally:
        chain.close()


async def test_db_diagnostics_shows_the_blocking_tree_with_its_root(lock_chain: LockChain) -> None:
    state = await db_diagnostics(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]

    [root] = [n for n in result["lock_tree"] if set(n.pids()) & set(lock_chain.waiter_pids)]
    assert root.session.pid == lock_chain.holder_pid
    assert set(root.pids()) == {lock_chain.holder_pid, *lock_chain.waiter_pids}
    assert result["slow_queries"].installed and result["slow_queries"].columns.startswith("total_exec_time")

    keys = [f"db-{name}-{TEST_ENVIRONMENT}" for name in ("diagnostics", "locks", "slow-queries", "sessions")]
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    tables = {a.key: json.loads(a.data) if isinstance(a.data, str) else a.data for a in artifacts}
    assert set(tables) == set(keys)
    checks = {r["check"]: r for r in tables[keys[0]]}  # type: ignore[union-attr]
    assert (
        checks["lock waits"]["verdict"] == "warn" and f"root {lock_chain.holder_pid}" in checks["lock waits"]["detail"]
    )
    assert checks["slow queries"]["verdict"] == "pass"
    assert {"connections", "cache hit ratio", "never-used indexes", "idle in transaction"} <= set(checks)
    locks = [r for r in tables[keys[1]] if r["root"] == lock_chain.holder_pid]  # type: ignore[union-attr,index]
    assert [r["pid"] for r in locks if r["level"] == 0] == [lock_chain.holder_pid]
    assert {r["pid"] for r in locks if r["level"] > 0} == set(lock_chain.waiter_pids)
    [holder] = [r for r in locks if r["level"] == 0]
    assert "pg_sleep(?)" in holder["query"] and "600" not in holder["query"]  # literals removed
