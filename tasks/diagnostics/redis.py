"""Redis diagnostics: the seed's "Redis Operations / Monitoring" (``INFO all``, ``INFO memory``, ``INFO
commandstats``, ``CLIENT LIST``, ``SCAN 0 MATCH "session:*"``, ``TTL``, ``redis-cli --latency-history``) as
read-only, bounded tasks, and the verdicts on what they read.

Nothing here writes, and nothing may stall the server: keys are walked with ``SCAN`` (never ``KEYS``) in calls of
``COUNT`` keys, the walk stops at a key count and a time budget and says when it is partial, and it backs off
while a PING probe beside it sees the server slow. The probe runs in a thread on its own connection, so the
event loop's own work (parsing a SCAN batch) does not count as the server's latency.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import statistics
import threading
import time
from collections import Counter
from typing import Any, Literal

import redis as sync_redis
import redis.exceptions
from pydantic import BaseModel

from blocks.redis import RedisDatabase
from kernel.retry import read_task
from tasks.diagnostics.policy import BigKeys, KeyPattern, LatencySampling, RedisLimits, ScanBounds
from tasks.redis import _redis_failure

Verdict = Literal["pass", "warn", "fail", "no-data"]
TTL_BUCKETS = ("no TTL", "< 1 min", "1 min - 1 h", "1 h - 1 d", "> 1 d")


class RedisInfo(BaseModel):
    """The figures of ``INFO all`` the runbook reads (memory, hit ratio, evictions, persistence, clients)."""

    address: str
    version: str
    uptime_s: int
    used_memory_bytes: int
    used_memory_rss_bytes: int
    used_memory_peak_bytes: int
    maxmemory_bytes: int
    maxmemory_policy: str
    fragmentation_ratio: float | None
    evicted_keys: int
    expired_keys: int
    keyspace_hits: int
    keyspace_misses: int
    connected_clients: int
    blocked_clients: int
    ops_per_sec: int
    rdb_last_save_time: int
    rdb_changes_since_last_save: int
    rdb_last_bgsave_status: str
    aof_enabled: bool
    keyspace: dict[int, int]

    @property
    def hit_ratio(self) -> float | None:
        lookups = self.keyspace_hits + self.keyspace_misses
        return self.keyspace_hits / lookups if lookups else None


class CommandStat(BaseModel):
    command: str
    calls: int
    usec: int
    usec_per_call: float
    rejected_calls: int = 0
    failed_calls: int = 0


class ClientGroup(BaseModel):
    """``CLIENT LIST`` grouped by the client's host, name and last command."""

    host: str
    name: str
    command: str
    clients: int
    max_idle_s: int
    total_memory_bytes: int


class LatencySample(BaseModel):
    """PING round trips (what ``redis-cli --latency`` measures), in milliseconds."""

    samples: int
    min_ms: float | None
    avg_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    windows: list[dict[str, float]] = []  # one a second: the seed's --latency-history lines
    started_at: float | None = None  # wall clock (epoch seconds) of the first and the last PING
    ended_at: float | None = None

    @classmethod
    def of(
        cls,
        rtts_ms: list[float],
        windows: list[dict[str, float]] | None = None,
        span: tuple[float, float] | None = None,
    ) -> LatencySample:
        started_at, ended_at = span or (None, None)
        if not rtts_ms:
            return cls(
                samples=0,
                min_ms=None,
                avg_ms=None,
                p50_ms=None,
                p99_ms=None,
                max_ms=None,
                started_at=started_at,
                ended_at=ended_at,
            )
        ordered = sorted(rtts_ms)
        return cls(
            started_at=started_at,
            ended_at=ended_at,
            samples=len(ordered),
            min_ms=round(ordered[0], 3),
            avg_ms=round(statistics.fmean(ordered), 3),
            p50_ms=round(_quantile(ordered, 0.50), 3),
            p99_ms=round(_quantile(ordered, 0.99), 3),
            max_ms=round(ordered[-1], 3),
            windows=windows or [],
        )


class PatternCount(BaseModel):
    """The keys of one pattern the scan saw (``key_count``, ``ttl``: exact counts of the scanned keys) and, when the
    scan was partial, ``estimated_count``: ``key_count`` divided by the fraction of the database scanned (SCAN walks
    the hash table's buckets, an order unrelated to key names, so the scanned keys are a fair sample). ``None``
    when the scan was complete: ``key_count`` is then the exact count."""

    name: str
    match: str
    expect_ttl: bool
    key_count: int = 0
    ttl: dict[str, int] = {}
    no_ttl_examples: list[str] = []
    estimated_count: int | None = None

    @property
    def without_ttl(self) -> int:
        return self.ttl.get(TTL_BUCKETS[0], 0)

    @property
    def estimated_without_ttl(self) -> int | None:
        if self.estimated_count is None or not self.key_count:
            return None
        return round(self.without_ttl * self.estimated_count / self.key_count)


class BigKey(BaseModel):
    key: str
    type: str
    bytes: int
    pattern: str


class KeyspaceScan(BaseModel):
    address: str
    dbsize: int
    scanned: int
    complete: bool
    stopped_because: str | None
    fraction: float  # scanned / dbsize (1.0 when complete): what the estimates of a partial scan divide by
    seconds: float
    started_at: float  # wall clock (epoch seconds)
    ended_at: float
    scan_calls: int
    backoffs: int
    patterns: list[PatternCount]
    big_keys: list[BigKey]
    sampled_for_memory: int
    probe: LatencySample  # the server's PING latency while the scan ran


class Finding(BaseModel):
    check: str
    value: str
    limit: str
    verdict: Verdict
    detail: str = ""

    def row(self) -> dict[str, str]:
        return {
            "check": self.check,
            "value": self.value,
            "limit": self.limit,
            "verdict": self.verdict,
            "detail": self.detail,
        }


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


def _int(info: dict[str, Any], name: str) -> int:
    try:
        return int(info.get(name, 0))
    except (TypeError, ValueError):
        return 0


@read_task
async def read_redis_info(cache: RedisDatabase) -> RedisInfo:
    """``INFO all``: memory, fragmentation, evictions, hit ratio, persistence, clients, keyspace."""
    client = cache.get_client()
    try:
        info = await client.info("all")
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "INFO all", err) from err
    finally:
        await client.aclose()
    ratio = info.get("mem_fragmentation_ratio")
    return RedisInfo(
        address=cache.safe_address,
        version=str(info.get("redis_version", "?")),
        uptime_s=_int(info, "uptime_in_seconds"),
        used_memory_bytes=_int(info, "used_memory"),
        used_memory_rss_bytes=_int(info, "used_memory_rss"),
        used_memory_peak_bytes=_int(info, "used_memory_peak"),
        maxmemory_bytes=_int(info, "maxmemory"),
        maxmemory_policy=str(info.get("maxmemory_policy", "?")),
        fragmentation_ratio=float(ratio) if ratio is not None else None,
        evicted_keys=_int(info, "evicted_keys"),
        expired_keys=_int(info, "expired_keys"),
        keyspace_hits=_int(info, "keyspace_hits"),
        keyspace_misses=_int(info, "keyspace_misses"),
        connected_clients=_int(info, "connected_clients"),
        blocked_clients=_int(info, "blocked_clients"),
        ops_per_sec=_int(info, "instantaneous_ops_per_sec"),
        rdb_last_save_time=_int(info, "rdb_last_save_time"),
        rdb_changes_since_last_save=_int(info, "rdb_changes_since_last_save"),
        rdb_last_bgsave_status=str(info.get("rdb_last_bgsave_status", "?")),
        aof_enabled=bool(_int(info, "aof_enabled")),
        keyspace={int(k[2:]): int(v["keys"]) for k, v in info.items() if k.startswith("db") and isinstance(v, dict)},
    )


@read_task
async def read_command_stats(cache: RedisDatabase, top: int = 15) -> list[CommandStat]:
    """``INFO commandstats``: the commands that took the server's time, most first."""
    client = cache.get_client()
    try:
        info = await client.info("commandstats")
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "INFO commandstats", err) from err
    finally:
        await client.aclose()
    stats = [
        CommandStat(
            command=name.removeprefix("cmdstat_"),
            calls=_int(v, "calls"),
            usec=_int(v, "usec"),
            usec_per_call=float(v.get("usec_per_call", 0.0)),
            rejected_calls=_int(v, "rejected_calls"),
            failed_calls=_int(v, "failed_calls"),
        )
        for name, v in info.items()
        if name.startswith("cmdstat_") and isinstance(v, dict)
    ]
    return sorted(stats, key=lambda s: s.usec, reverse=True)[:top]


@read_task
async def read_clients(cache: RedisDatabase) -> list[ClientGroup]:
    """``CLIENT LIST``, grouped by host, client name and last command (a pool leaking connections stands out)."""
    client = cache.get_client()
    try:
        clients = await client.client_list()
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "CLIENT LIST", err) from err
    finally:
        await client.aclose()
    groups: dict[tuple[str, str, str], ClientGroup] = {}
    for c in clients:
        host = str(c.get("addr", "?")).rsplit(":", 1)[0]
        key = (host, str(c.get("name") or "-"), str(c.get("cmd") or "?"))
        group = groups.setdefault(
            key, ClientGroup(host=key[0], name=key[1], command=key[2], clients=0, max_idle_s=0, total_memory_bytes=0)
        )
        group.clients += 1
        group.max_idle_s = max(group.max_idle_s, _int(c, "idle"))
        group.total_memory_bytes += _int(c, "tot-mem")
    return sorted(groups.values(), key=lambda g: g.clients, reverse=True)


class _Probe:
    """PING every ``interval_ms`` on a connection of its own, in a thread, until stopped."""

    def __init__(self, cache: RedisDatabase, interval_ms: float) -> None:
        self._client = sync_redis.Redis.from_url(
            cache.url.get_secret_value(), socket_timeout=cache.socket_timeout_s, socket_connect_timeout=5
        )
        self._interval = interval_ms / 1000
        self._stop = threading.Event()
        self.rtts_ms: list[float] = []
        self.windows: list[dict[str, float]] = []
        self.last_ms = 0.0
        self.error: BaseException | None = None
        self.started_at = self.ended_at = time.time()

    def run(self) -> None:
        window: list[float] = []
        window_started = time.monotonic()
        self.started_at = time.time()
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                self._client.ping()
                self.last_ms = (time.perf_counter() - started) * 1000
                self.rtts_ms.append(self.last_ms)
                window.append(self.last_ms)
                if time.monotonic() - window_started >= 1.0:
                    self.windows.append(_window(window))
                    window, window_started = [], time.monotonic()
                self._stop.wait(self._interval)
            if window:
                self.windows.append(_window(window))
        except redis.exceptions.RedisError as err:
            self.error = err
        finally:
            self.ended_at = time.time()
            self._client.close()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> LatencySample:
        return LatencySample.of(self.rtts_ms, self.windows, (self.started_at, self.ended_at))


def _window(rtts: list[float]) -> dict[str, float]:
    return {
        "min_ms": round(min(rtts), 3),
        "avg_ms": round(statistics.fmean(rtts), 3),
        "max_ms": round(max(rtts), 3),
        "samples": float(len(rtts)),
    }


@read_task
async def sample_latency(cache: RedisDatabase, spec: LatencySampling) -> LatencySample:
    """The seed's ``redis-cli --latency-history -i 1``, bounded to ``spec.duration_s``: PING round trips, with
    min/avg/max per one-second window."""
    probe = _Probe(cache, spec.interval_ms)
    thread = asyncio.create_task(asyncio.to_thread(probe.run))
    await asyncio.sleep(spec.duration_s)
    probe.stop()
    await thread
    if probe.error is not None:
        raise _redis_failure(cache, "PING", probe.error) from probe.error
    return probe.sample()


def _bucket(pttl_ms: int) -> str:
    if pttl_ms < 0:
        return TTL_BUCKETS[0]
    if pttl_ms < 60_000:
        return TTL_BUCKETS[1]
    if pttl_ms < 3_600_000:
        return TTL_BUCKETS[2]
    if pttl_ms < 86_400_000:
        return TTL_BUCKETS[3]
    return TTL_BUCKETS[4]


def classify(key: str, patterns: list[KeyPattern]) -> KeyPattern | None:
    """The first pattern whose glob matches ``key``. fnmatch's globs are Redis's (``*``, ``?``, ``[abc]``) except
    for negated classes (``[!a]`` here, ``[^a]`` in Redis); the policy's patterns use neither."""
    return next((p for p in patterns if fnmatch.fnmatchcase(key, p.match)), None)


def _classifier(patterns: list[KeyPattern]) -> re.Pattern[str]:
    """One regular expression for every pattern, in order, a named group each: ``classify`` once per key without
    a loop of fnmatch calls (the scan's Python work per key is what bounds its keys a second)."""
    return re.compile("|".join(f"(?P<p{i}>{fnmatch.translate(p.match)})" for i, p in enumerate(patterns)) or "(?!)")


def _other(key: str) -> str:
    prefix, sep, _ = key.partition(":")
    return f"{prefix}:*" if sep else "(no prefix)"


@read_task
async def scan_keyspace(
    cache: RedisDatabase, patterns: list[KeyPattern], bounds: ScanBounds, big_keys: BigKeys, probe_interval_ms: float
) -> KeyspaceScan:
    """Keys per pattern by ``SCAN`` (never ``KEYS``): counts, TTL distribution, keys without a TTL where the
    pattern expects one, and the biggest keys of a sample by ``MEMORY USAGE``.

    Keys matching no pattern are counted under their prefix (``<prefix>:*``). SCAN may return a key twice; each
    is counted once. The walk stops at ``bounds.max_keys`` keys or ``bounds.max_seconds`` and then says so
    (``complete`` false, ``stopped_because``); it sleeps ``bounds.backoff_ms`` before the next call while the
    PING probe beside it sees more than ``bounds.max_latency_ms``, and ``bounds.pace`` times the probe's last
    round trip after every batch. A partial walk gives each pattern an ``estimated_count`` (the scanned count
    divided by ``fraction``, the share of the database's keys scanned); a complete one gives exact counts only.
    """
    counts: dict[str, PatternCount] = {
        p.name: PatternCount(name=p.name, match=p.match, expect_ttl=p.expect_ttl, ttl=dict.fromkeys(TTL_BUCKETS, 0))
        for p in patterns
    }
    others: Counter[str] = Counter()
    seen: set[bytes] = set()
    sampled: list[BigKey] = []
    scan_calls = backoffs = position = 0
    stopped: str | None = None
    by_group = {f"p{i}": p for i, p in enumerate(patterns)}
    matcher = _classifier(patterns)
    probe = _Probe(cache, probe_interval_ms)
    prober = asyncio.create_task(asyncio.to_thread(probe.run))
    client = cache.get_client()
    started, started_at = time.monotonic(), time.time()
    try:
        dbsize = int(await client.dbsize())
        cursor = 0
        while True:
            if probe.last_ms > bounds.max_latency_ms:
                backoffs += 1
                await asyncio.sleep(bounds.backoff_ms / 1000)
            cursor, batch = await client.scan(cursor=cursor, count=bounds.count)
            scan_calls += 1
            fresh = [k if isinstance(k, bytes) else k.encode() for k in batch]  # bytes: no decode_responses
            fresh = [k for k in fresh if k not in seen]
            seen.update(fresh)
            if fresh:
                read = client.pipeline(transaction=False)
                for k in fresh:
                    read.pttl(k)
                ttls = await read.execute()
                memory: list[tuple[str, str]] = []
                for k, ttl in zip(fresh, ttls, strict=True):
                    if ttl == -2:  # expired between SCAN and PTTL
                        continue
                    name = k.decode(errors="replace")
                    found = matcher.match(name)
                    pattern = by_group[found.lastgroup] if found is not None and found.lastgroup else None
                    if pattern is None:
                        others[_other(name)] += 1
                        group = "other"
                    else:
                        group = pattern.name
                        entry = counts[pattern.name]
                        entry.key_count += 1
                        bucket = _bucket(int(ttl))
                        entry.ttl[bucket] += 1
                        if bucket == TTL_BUCKETS[0] and pattern.expect_ttl and len(entry.no_ttl_examples) < 5:
                            entry.no_ttl_examples.append(name)
                    position += 1
                    if position % big_keys.sample_every == 0 and len(memory) + len(sampled) < big_keys.max_samples:
                        memory.append((name, group))
                if memory:
                    sizes = client.pipeline(transaction=False)
                    for name, _ in memory:
                        sizes.memory_usage(name, samples=big_keys.memory_samples)
                        sizes.type(name)
                    answers = await sizes.execute()
                    for (name, group), size, kind in zip(memory, answers[::2], answers[1::2], strict=True):
                        if size is not None:
                            kind_text = kind.decode() if isinstance(kind, bytes) else str(kind)
                            sampled.append(BigKey(key=name, type=kind_text, bytes=int(size), pattern=group))
            if cursor == 0:
                break
            if bounds.pace and probe.last_ms:  # a pause that follows the server's latency: gentler when it is slow
                await asyncio.sleep(min(bounds.backoff_ms, bounds.pace * probe.last_ms) / 1000)
            if len(seen) >= bounds.max_keys:
                stopped = f"stopped at {len(seen)} keys (max_keys {bounds.max_keys})"
                break
            if time.monotonic() - started >= bounds.max_seconds:
                stopped = f"stopped after {bounds.max_seconds:g}s (max_seconds) at {len(seen)} keys"
                break
    except redis.exceptions.RedisError as err:
        raise _redis_failure(cache, "SCAN", err) from err
    finally:
        await client.aclose()
        probe.stop()
        await prober
    scanned = sum(c.key_count for c in counts.values()) + sum(others.values())
    complete = stopped is None
    fraction = 1.0 if complete else (round(min(1.0, len(seen) / dbsize), 4) if dbsize else 0.0)
    rows = list(counts.values()) + [
        PatternCount(name=f"other {prefix}", match=prefix, expect_ttl=False, key_count=n)
        for prefix, n in others.most_common(10)
    ]
    if not complete and fraction > 0:
        for row in rows:
            row.estimated_count = round(row.key_count / fraction)
    return KeyspaceScan(
        address=cache.safe_address,
        dbsize=dbsize,
        scanned=scanned,
        complete=complete,
        stopped_because=stopped,
        fraction=fraction,
        seconds=round(time.monotonic() - started, 3),
        started_at=started_at,
        ended_at=time.time(),
        scan_calls=scan_calls,
        backoffs=backoffs,
        patterns=rows,
        big_keys=sorted(sampled, key=lambda b: b.bytes, reverse=True)[: big_keys.top],
        sampled_for_memory=len(sampled),
        probe=probe.sample(),
    )


def judge_redis(
    info: RedisInfo,
    scan: KeyspaceScan | None,
    latency: LatencySample | None,
    limits: RedisLimits,
    bounds: ScanBounds,
    max_p99_ms: float,
) -> list[Finding]:
    """Every check with its figure, its limit and a verdict; a figure that could not be read is ``no-data``."""
    found: list[Finding] = []

    def add(check: str, value: str, limit: str, ok: bool | None, detail: str = "", bad: Verdict = "warn") -> None:
        found.append(
            Finding(
                check=check,
                value=value,
                limit=limit,
                verdict="no-data" if ok is None else ("pass" if ok else bad),
                detail=detail,
            )
        )

    ratio = info.fragmentation_ratio
    add(
        "fragmentation",
        f"{ratio:.2f}" if ratio is not None else "-",
        f"<= {limits.max_fragmentation_ratio}",
        None if ratio is None else ratio <= limits.max_fragmentation_ratio,
        f"used {info.used_memory_bytes} B, RSS {info.used_memory_rss_bytes} B",
    )
    if info.maxmemory_bytes:
        used = info.used_memory_bytes / info.maxmemory_bytes
        add(
            "memory used",
            f"{used:.1%} of {info.maxmemory_bytes} B",
            f"<= {limits.max_memory_used_ratio:.0%}",
            used <= limits.max_memory_used_ratio,
        )
    else:
        add(
            "memory used",
            f"{info.used_memory_bytes} B, no maxmemory",
            "a maxmemory",
            False,
            "no maxmemory: Redis grows until the node runs out of memory",
        )
    add(
        "maxmemory-policy",
        info.maxmemory_policy,
        " or ".join(limits.maxmemory_policy),
        info.maxmemory_policy in limits.maxmemory_policy,
        "set it with redis-maintenance (the seed's CONFIG SET maxmemory-policy allkeys-lru)",
    )
    add(
        "evicted keys",
        str(info.evicted_keys),
        f"<= {limits.max_evicted_keys}",
        info.evicted_keys <= limits.max_evicted_keys,
        "since the server started",
    )
    lookups = info.keyspace_hits + info.keyspace_misses
    hit = info.hit_ratio
    add(
        "hit ratio",
        f"{hit:.1%} of {lookups} lookups" if hit is not None else f"{lookups} lookups",
        f">= {limits.min_hit_ratio:.0%}",
        None if hit is None or lookups < limits.min_lookups else hit >= limits.min_hit_ratio,
        f"judged after {limits.min_lookups} lookups",
    )
    add(
        "last RDB save",
        info.rdb_last_bgsave_status,
        "ok",
        info.rdb_last_bgsave_status == "ok",
        f"{info.rdb_changes_since_last_save} changes since",
        bad="fail",
    )
    if latency is not None:
        p99 = latency.p99_ms
        add(
            "latency p99",
            f"{p99} ms over {latency.samples} PINGs" if p99 is not None else "-",
            f"<= {max_p99_ms} ms",
            None if p99 is None else p99 <= max_p99_ms,
            f"max {latency.max_ms} ms",
        )
    if scan is not None:
        add(
            "keys scanned",
            f"{scan.scanned} of {scan.dbsize} ({scan.fraction:.1%}) in {scan.seconds}s",
            "the whole database",
            scan.complete,
            f"{scan.stopped_because}; counts per pattern are estimates (scanned / {scan.fraction:.4f})"
            if scan.stopped_because
            else f"{scan.scan_calls} SCAN calls",
        )
        p99 = scan.probe.p99_ms
        add(
            "latency during the scan",
            f"p99 {p99} ms, max {scan.probe.max_ms} ms" if p99 is not None else "-",
            f"p99 <= {bounds.max_latency_ms} ms",
            None if p99 is None else p99 <= bounds.max_latency_ms,
            f"{scan.backoffs} back-offs",
        )
        for p in scan.patterns:
            if p.expect_ttl:
                estimate = (
                    f" scanned ({scan.fraction:.1%} of the keys), estimated {p.estimated_without_ttl} of "
                    f"{p.estimated_count}"
                    if p.estimated_count is not None
                    else ""
                )
                add(
                    f"{p.name} without TTL",
                    f"{p.without_ttl} of {p.key_count}{estimate}",
                    "0",
                    p.without_ttl == 0,
                    ", ".join(p.no_ttl_examples),
                )
    return found


__all__ = [
    "BigKey",
    "ClientGroup",
    "CommandStat",
    "Finding",
    "KeyspaceScan",
    "LatencySample",
    "PatternCount",
    "RedisInfo",
    "classify",
    "judge_redis",
    "read_clients",
    "read_command_stats",
    "read_redis_info",
    "sample_latency",
    "scan_keyspace",
]
