"""Two runs of the suite on one machine share no Redis database: the leases of tests/conftest.py."""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.conftest import LEASE_PREFIX, RedisDatabases


def test_two_runs_never_share_a_redis_database() -> None:
    one, other = RedisDatabases(run_id=f"test-{uuid.uuid4().hex}"), RedisDatabases(run_id=f"test-{uuid.uuid4().hex}")
    try:
        first, second = one.claim(), other.claim()
        assert first != second
        with pytest.raises(RuntimeError, match="leased by another test run"):
            other.pin(first)
        index = int(first.rsplit("/", 1)[1])
        with redis.Redis.from_url(one.url(0)) as admin:
            assert admin.get(f"{LEASE_PREFIX}{index}") == one.run_id.encode()
            assert 0 < admin.ttl(f"{LEASE_PREFIX}{index}") <= 7200  # a run that dies leaves no lease for ever
    finally:
        one.release_all()
        other.release_all()
    with redis.Redis.from_url(one.url(0)) as admin:
        assert admin.get(f"{LEASE_PREFIX}{index}") is None


def test_a_database_holding_keys_is_never_claimed() -> None:
    run = RedisDatabases(run_id=f"test-{uuid.uuid4().hex}")
    try:
        url = run.claim()
        with redis.Redis.from_url(url) as client:
            client.set("someone-elses", "data", ex=60)  # as a run without leases (an older suite) would
        run._leases.delete(f"{LEASE_PREFIX}{url.rsplit('/', 1)[1]}")  # and its lease gone
        run._held.clear()
        assert run.claim() != url
        with redis.Redis.from_url(url) as client:
            assert client.get("someone-elses") == b"data"
            client.delete("someone-elses")
    finally:
        run.release_all()
