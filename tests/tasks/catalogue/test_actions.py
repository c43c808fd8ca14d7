"""The catalogue's shared storage in a real Redis (a database leased to this run): an action's key is claimed by
exactly one of many concurrent claimers, a claim left ``applying`` by a dead worker is taken over after its lease,
a due temporary action is taken by one reverter; and the policy's allow-list and modes."""

from __future__ import annotations

import asyncio

import pytest

from blocks.redis import RedisDatabase
from tasks.catalogue import actions as act
from tasks.catalogue.actions import ActionRecord
from tasks.catalogue.policy import load_policy


@pytest.fixture(scope="module")
def prefect_harness() -> None:
    """Redis only: no Prefect server needed (overrides conftest)."""


def record(key: str, run: str, outcome: str = "applying") -> ActionRecord:
    return ActionRecord(
        key=key, runbook="test", kind="block_ip", target="203.0.113.1", reason="r", outcome=outcome, run=run
    )


async def test_one_of_many_concurrent_claims_wins(spare_redis: RedisDatabase) -> None:
    held = await asyncio.gather(*(act.claim(spare_redis, record("k1", f"run-{i}")) for i in range(20)))
    winners = [i for i, h in enumerate(held) if h is None]
    assert len(winners) == 1
    assert {h.run for h in held if h is not None} == {f"run-{winners[0]}"}


async def test_a_stale_applying_claim_is_taken_over_after_its_lease(spare_redis: RedisDatabase) -> None:
    dead = record("k2", "dead-run").model_copy(update={"claimed_at": act.now() - 1000})
    await act.save(spare_redis, dead)  # a worker that claimed the key 1,000 s ago and died
    held = await act.claim(spare_redis, record("k2", "second-run"), lease_s=5000)
    assert held is not None and held.run == "dead-run"  # within the lease: the first run may still be alive
    takers = await asyncio.gather(*(act.claim(spare_redis, record("k2", f"taker-{i}"), lease_s=100) for i in range(10)))
    assert takers.count(None) == 1  # past it: taken over, by exactly one of the runs that try at once
    winner = f"taker-{takers.index(None)}"
    assert {h.run for h in takers if h is not None} <= {winner, "dead-run"}
    await act.save(spare_redis, record("k2", winner, "applied"))
    held = await act.claim(spare_redis, record("k2", "late-run"), lease_s=0)
    assert held is not None and held.outcome == "applied"  # done is done, however old


async def test_a_due_temporary_action_is_taken_once_and_listed_until_then(spare_redis: RedisDatabase) -> None:
    now = act.now()
    due = record("k3", "r", "applied").model_copy(update={"expires_at": now - 1, "reversal": {"kind": "unblock_ip"}})
    later = record("k4", "r", "applied").model_copy(update={"expires_at": now + 3600})
    for r in (due, later):
        await act.save(spare_redis, r)
    assert [r.key for r in await act.temporary_actions(spare_redis)] == ["k3", "k4"]
    assert [r.key for r in await act.temporary_actions(spare_redis, due_by=now)] == ["k3"]
    taken = await asyncio.gather(*(act.take(spare_redis, "k3") for _ in range(5)))
    assert taken.count(True) == 1
    failed = due.model_copy(update={"outcome": "revert-failed"})
    await act.save(spare_redis, failed)  # a failed reversal stays listed, to be tried again
    assert [r.key for r in await act.temporary_actions(spare_redis, due_by=now)] == ["k3"]
    await act.save(spare_redis, due.model_copy(update={"outcome": "reverted"}))
    assert [r.key for r in await act.temporary_actions(spare_redis)] == ["k4"]


def test_policy_allow_list_and_modes() -> None:
    policy = load_policy()
    assert policy.allowed("10.1.2.3") == "10.0.0.0/8"
    assert policy.allowed("203.0.113.50") is None and policy.allowed("not-an-ip") is None
    assert policy.mode("sandbox") == "auto" and policy.mode("production") == "approve"
    assert policy.mode("production", "P3") == "observe"
    assert policy.channel("security-key-compromise") == "security" and policy.channel("lb-rebalance") == "alerts"
