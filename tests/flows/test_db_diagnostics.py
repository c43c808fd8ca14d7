"""db-diagnostics on the session's sandbox: a session holding a row lock and two waiting on it, read back as the
blocking tree with the right root, beside every other check, in the run's table artifacts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from psycopg.conninfo import make_conninfo

from blocks.environment import RunbookEnvironment
from flows.db_diagnostics import db_diagnostics
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.test_backup import admin_dsn, save_variant
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


async def test_without_pg_stat_statements_the_check_says_how_and_the_rest_runs(sandbox: Sandbox) -> None:
    """A database where the extension was never created (the server loads it): that check says what to run, the
    others read the database as usual."""
    name, environment = f"rb_test_nopss_{uuid.uuid4().hex[:8]}", f"{TEST_ENVIRONMENT}-nopss"
    admin = admin_dsn(sandbox)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(make_conninfo(admin, dbname=name), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await save_variant(sandbox, environment, postgres_dsn=make_conninfo(admin, dbname=name))
        state = await db_diagnostics(environment=environment, return_state=True)
        assert state.is_completed(), state.message
        result = await state.result()  # type: ignore[union-attr]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    checks = {f.check: f for f in result["findings"]}
    assert checks["slow queries"].verdict == "no-data"
    assert "CREATE EXTENSION pg_stat_statements" in checks["slow queries"].detail
    assert checks["connections"].verdict == "pass" and checks["lock waits"].verdict == "pass"
    assert [t.name for t in result["relations"].tables] == ["t"]
