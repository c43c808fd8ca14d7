"""tasks/diagnostics/redis.py against a real Redis database of the run (``spare_redis``) holding 100,000+ keys of
the platform's kinds, with the server's latency watched from another process during the scan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from blocks.redis import RedisDatabase
from kernel.errors import PolicyError
from tasks.diagnostics.policy import KeyPattern, load_policy
from tasks.diagnostics.redis import (
    classify,
    judge_redis,
    read_clients,
    read_command_stats,
    read_redis_info,
    sample_latency,
    scan_keyspace,
)

SESSIONS, SESSIONS_NO_TTL, CACHE, RATELIMITS, OTHER = 40_000, 37, 55_000, 1_200, 6_000

# PING round trips from a process of its own (what redis-cli --latency does), until the stop file appears
PROBE = """
import json, os, sys, time, redis
client = redis.Redis.from_url(sys.argv[1])
client.ping()
print("ready", flush=True)
rtts = []
while not os.path.exists(sys.argv[2]):
    t = time.perf_counter(); client.ping(); rtts.append((time.perf_counter() - t) * 1000); time.sleep(0.005)
rtts.sort()
print(json.dumps({"p99": rtts[int(0.99 * (len(rtts) - 1))], "max": rtts[-1], "n": len(rtts)}))
"""


@pytest.fixture()
def loaded_redis(spare_redis: RedisDatabase) -> RedisDatabase:
    """102,237 keys: sessions (37 of them without a TTL), model cache entries, rate limits and keys of no pattern."""
    client = redis.Redis.from_url(spare_redis.url.get_secret_value())
    pipe = client.pipeline(transaction=False)
    for i in range(SESSIONS):
        pipe.hset(f"session:{i:08d}", mapping={"user_id": str(i), "plan": "pro"})
        if i >= SESSIONS_NO_TTL:
            pipe.expire(f"session:{i:08d}", 3700 + i % 7200)
    for i in range(CACHE):
        pipe.set(f"cache:model:gpt-4:{i:08x}", "x" * 40, ex=600 + i % 20_000)
    for i in range(RATELIMITS):
        pipe.set(f"ratelimit:key{i}", i, ex=55)  # under a minute, yet not gone before a slow fill ends
    for i in range(OTHER):
        pipe.set(f"job:{i}", "queued")
    pipe.set("cache:model:gpt-4:big", "y" * 200_000, ex=3600)  # the big key
    pipe.execute()
    client.close()
    return spare_redis


async def test_scan_counts_every_pattern_flags_sessions_without_ttl_and_keeps_the_server_responsive(
    loaded_redis: RedisDatabase, tmp_path: Path
) -> None:
    policy = load_policy().redis
    bounds = policy.scan.model_copy(update={"max_seconds": 60})
    stop = tmp_path / "stop"
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, loaded_redis.url.get_secret_value(), str(stop)], stdout=subprocess.PIPE, text=True
    )
    assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
    scan = await scan_keyspace.fn(loaded_redis, policy.patterns, bounds, policy.big_keys, 10)
    stop.touch()
    probe_out = json.loads(probe.communicate(timeout=30)[0])
    counts = {p.name: p for p in scan.patterns}
    assert scan.complete and scan.stopped_because is None
    assert scan.dbsize == scan.scanned == SESSIONS + CACHE + RATELIMITS + OTHER + 1
    assert counts["sessions"].key_count == SESSIONS and counts["sessions"].without_ttl == SESSIONS_NO_TTL
    assert counts["sessions"].ttl["1 h - 1 d"] == SESSIONS - SESSIONS_NO_TTL
    assert counts["model cache"].key_count == CACHE + 1 and counts["model cache"].without_ttl == 0
    assert counts["cache"].key_count == 0  # cache:model:* came first
    assert counts["rate limits"].key_count == RATELIMITS and counts["rate limits"].ttl["< 1 min"] == RATELIMITS
    assert counts["other job:*"].key_count == OTHER
    assert all(k.startswith("session:000000") for k in counts["sessions"].no_ttl_examples)
    assert scan.sampled_for_memory > 100 and scan.big_keys == sorted(scan.big_keys, key=lambda b: -b.bytes)
    # the server stayed responsive for a client of its own during the scan (the policy's bound on p99)
    assert probe_out["n"] > 100 and probe_out["p99"] <= bounds.max_latency_ms, probe_out

    findings = {f.check: f for f in judge_redis(await read_redis_info.fn(loaded_redis), scan, None,
                                                policy.limits, bounds, policy.latency.max_p99_ms)}  # fmt: skip
    assert findings["sessions without TTL"].verdict == "warn"
    assert findings["sessions without TTL"].value == f"{SESSIONS_NO_TTL} of {SESSIONS}"
    assert findings["model cache without TTL"].verdict == "pass"
    assert findings["keys scanned"].verdict == "pass"


async def test_a_bounded_scan_says_it_is_partial(loaded_redis: RedisDatabase) -> None:
    policy = load_policy().redis
    bounds = policy.scan.model_copy(update={"max_keys": 5_000, "count": 1000})
    scan = await scan_keyspace.fn(loaded_redis, policy.patterns, bounds, policy.big_keys, 10)
    assert not scan.complete and "max_keys" in (scan.stopped_because or "")
    assert 5_000 <= scan.scanned < 5_000 + 2 * bounds.count
    findings = {f.check: f for f in judge_redis(await read_redis_info.fn(loaded_redis), scan, None, policy.limits,
                                                bounds, 10)}  # fmt: skip
    assert findings["keys scanned"].verdict == "warn" and "max_keys" in findings["keys scanned"].detail
    assert "estimates" in findings["keys scanned"].detail


async def test_a_partial_scan_estimates_each_pattern_from_the_fraction_scanned(loaded_redis: RedisDatabase) -> None:
    policy = load_policy().redis
    total = SESSIONS + CACHE + RATELIMITS + OTHER + 1
    bounds = policy.scan.model_copy(update={"max_keys": 30_000, "count": 1000})
    scan = await scan_keyspace.fn(loaded_redis, policy.patterns, bounds, policy.big_keys, 10)
    counts = {p.name: p for p in scan.patterns}
    assert not scan.complete and total - RATELIMITS <= scan.dbsize <= total  # rate limits expire after 55 s
    assert scan.fraction == pytest.approx(scan.scanned / scan.dbsize, abs=0.01) and 0.25 < scan.fraction < 0.35
    # the scanned counts stay exact counts of what was scanned; the estimates divide them by the fraction
    assert sum(p.key_count for p in scan.patterns) == scan.scanned
    for p in scan.patterns:
        assert p.estimated_count == round(p.key_count / scan.fraction)
    # SCAN's order is unrelated to the key names: the estimates land near the truth (a 30% sample of 100,000 keys)
    assert counts["sessions"].estimated_count == pytest.approx(SESSIONS, rel=0.1)
    assert counts["model cache"].estimated_count == pytest.approx(CACHE, rel=0.1)
    findings = {f.check: f for f in judge_redis(await read_redis_info.fn(loaded_redis), scan, None, policy.limits,
                                                bounds, 10)}  # fmt: skip
    assert "estimated" in findings["sessions without TTL"].value and f"{scan.fraction:.1%}" in (
        findings["sessions without TTL"].value
    )

    complete = await scan_keyspace.fn(
        loaded_redis, policy.patterns, policy.scan.model_copy(update={"max_seconds": 60}), policy.big_keys, 10
    )
    assert complete.complete and complete.fraction == 1.0
    assert all(p.estimated_count is None for p in complete.patterns)  # exact counts, no estimate


async def test_info_commands_clients_and_latency(loaded_redis: RedisDatabase) -> None:
    info = await read_redis_info.fn(loaded_redis)
    assert info.used_memory_bytes > 0 and info.version.count(".") == 2 and info.keyspace
    commands = await read_command_stats.fn(loaded_redis)
    assert commands and all(a.usec >= b.usec for a, b in zip(commands, commands[1:], strict=False))
    assert {"hset", "set"} & {c.command for c in commands}
    client = redis.Redis.from_url(loaded_redis.url.get_secret_value())
    client.client_setname("diag-test-client")
    try:
        groups = await read_clients.fn(loaded_redis)
        assert any(g.name == "diag-test-client" and g.clients == 1 for g in groups)
    finally:
        client.close()
    spec = load_policy().redis.latency.model_copy(update={"duration_s": 1.5, "interval_ms": 10})
    latency = await sample_latency.fn(loaded_redis, spec)
    assert latency.samples > 20 and latency.min_ms is not None and latency.min_ms <= latency.p99_ms <= latency.max_ms
    assert len(latency.windows) in (1, 2)


def test_patterns_match_in_order_and_a_bad_policy_is_one_clear_error(tmp_path: Path) -> None:
    patterns = [KeyPattern(name="model", match="cache:model:*"), KeyPattern(name="cache", match="cache:*")]
    assert classify("cache:model:gpt-4:ab", patterns).name == "model"  # type: ignore[union-attr]
    assert classify("cache:other", patterns).name == "cache"  # type: ignore[union-attr]
    assert classify("session:1", patterns) is None
    bad = tmp_path / "policy.yaml"
    bad.write_text("redis: {patterns: [], scan: {count: 1}}\n")
    with pytest.raises(PolicyError, match="redis.scan.count"):
        load_policy(bad)
