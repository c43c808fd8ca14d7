"""redis-diagnostics: the seed's "Redis Operations / Monitoring" as one read-only, bounded run.

``INFO all`` (memory, fragmentation, evictions, hit ratio, persistence), ``INFO commandstats``, ``CLIENT LIST``
grouped, keys per pattern by ``SCAN`` with their TTLs (sessions without a TTL flagged), the big keys of a sample
by ``MEMORY USAGE``, and the seed's ``--latency-history`` as a bounded sampling, run beside the scan (the latency a
client sees while the scan runs). Nothing is written to Redis; the scan is bounded in keys and time and backs off
while the server is slow (:mod:`tasks.diagnostics.redis`). A scan stopped by its bounds reports the keys it scanned
and, per pattern, an estimate labelled as such: the scanned count divided by the fraction of the keys scanned.

What it leaves: a table artifact ``redis-diagnostics-<environment>`` (every check: value, limit, verdict), a
markdown artifact ``redis-report-<environment>`` (keyspace, big keys, commands, clients, latency) and an event
``runbooks.redis.diagnosed``. The run completes whatever it finds (the verdicts say what to look at); it fails
only when Redis cannot be read.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.diagnostics.policy import KeyPattern, load_policy
from tasks.diagnostics.redis import (
    ClientGroup,
    CommandStat,
    KeyspaceScan,
    LatencySample,
    RedisInfo,
    judge_redis,
    read_clients,
    read_command_stats,
    read_redis_info,
    sample_latency,
    scan_keyspace,
)
from tasks.reporting import emit, publish_markdown, publish_table


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(
    environment: str,
    info: RedisInfo,
    scan: KeyspaceScan | None,
    latency: LatencySample,
    commands: list[CommandStat],
    clients: list[ClientGroup],
) -> str:
    parts = [
        f"# Redis diagnostics of {environment}: {info.address}",
        f"Redis {info.version}, up {info.uptime_s // 3600} h; {info.connected_clients} clients; "
        f"{info.ops_per_sec} ops/s; used memory {info.used_memory_bytes} B (peak {info.used_memory_peak_bytes} B); "
        f"keys per database {info.keyspace or '{}'}.",
    ]
    if scan is not None:
        buckets = list(scan.patterns[0].ttl.keys()) if scan.patterns else []
        if scan.complete:
            heading = f"## Keys per pattern ({scan.scanned} of {scan.dbsize} keys in {scan.seconds}s, complete)"
            keys_table = _table(
                ["pattern", "match", "keys", *buckets],
                [[p.name, f"`{p.match}`", p.key_count, *p.ttl.values()] for p in scan.patterns],
            )
        else:
            heading = (
                f"## Keys per pattern: ESTIMATES from {scan.fraction:.1%} of the keys ({scan.scanned} of "
                f"{scan.dbsize} in {scan.seconds}s; partial: {scan.stopped_because})\n\n"
                f"`estimated keys` is the scanned count divided by {scan.fraction:.4f} (SCAN's order does not follow "
                "key names, so the scanned keys are a sample of the whole); the TTL columns count the scanned keys."
            )
            keys_table = _table(
                ["pattern", "match", "estimated keys", "scanned keys", *(f"{b} (scanned)" for b in buckets)],
                [
                    [p.name, f"`{p.match}`", f"~{p.estimated_count}", p.key_count, *p.ttl.values()]
                    for p in scan.patterns
                ],
            )
        parts += [
            heading,
            keys_table,
            f"## Big keys (MEMORY USAGE of {scan.sampled_for_memory} sampled keys)",
            _table(
                ["key", "type", "bytes", "pattern"], [[f"`{b.key}`", b.type, b.bytes, b.pattern] for b in scan.big_keys]
            ),
        ]
    parts += [
        "## Commands (INFO commandstats, by total time)",
        _table(
            ["command", "calls", "usec", "usec/call", "rejected", "failed"],
            [[c.command, c.calls, c.usec, c.usec_per_call, c.rejected_calls, c.failed_calls] for c in commands],
        ),
        "## Clients (CLIENT LIST by host, name and last command)",
        _table(
            ["host", "name", "command", "clients", "max idle s", "memory B"],
            [[g.host, g.name, g.command, g.clients, g.max_idle_s, g.total_memory_bytes] for g in clients],
        ),
        f"## Latency (PING, {latency.samples} samples{', during the scan' if scan is not None else ''}): "
        f"min {latency.min_ms} / avg {latency.avg_ms} / p99 {latency.p99_ms} / max {latency.max_ms} ms",
        _table(
            ["second", "min ms", "avg ms", "max ms"],
            [[i + 1, w["min_ms"], w["avg_ms"], w["max_ms"]] for i, w in enumerate(latency.windows)],
        ),
    ]
    return "\n\n".join(parts)


@flow(name="redis-diagnostics", log_prints=False)
@redact_errors
async def redis_diagnostics(
    environment: str = "sandbox",
    scan_keys: bool = True,
    max_keys: int | None = None,
    max_seconds: float | None = None,
    extra_patterns: list[str] | None = None,
) -> State:
    """Read the environment's Redis the way the seed's monitoring section does, bounded, and judge what it reads.

    ``scan_keys=False`` skips the SCAN (INFO, commands, clients and latency only). ``max_keys`` / ``max_seconds``
    override the policy's scan bounds for this run. ``extra_patterns`` (Redis globs) are counted beside the policy's.
    """
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_policy().redis
    bounds = policy.scan.model_copy(
        update={k: v for k, v in {"max_keys": max_keys, "max_seconds": max_seconds}.items() if v is not None}
    )
    patterns = [KeyPattern(name=g, match=g) for g in extra_patterns or []] + policy.patterns
    info, commands, clients = await asyncio.gather(
        read_redis_info(env.redis), read_command_stats(env.redis), read_clients(env.redis)
    )
    # the seed's --latency-history sampled while the scan runs: the latency a client sees during the scan is what
    # "must not stall the server" asks about, and the run takes the longer of the two instead of their sum
    scan: KeyspaceScan | None
    if scan_keys:
        latency, scan = await asyncio.gather(
            sample_latency(env.redis, policy.latency),
            scan_keyspace(env.redis, patterns, bounds, policy.big_keys, policy.latency.interval_ms),
        )
    else:
        latency, scan = await sample_latency(env.redis, policy.latency), None
    findings = judge_redis(info, scan, latency, policy.limits, bounds, policy.latency.max_p99_ms)
    flagged = [f for f in findings if f.verdict in ("warn", "fail")]
    summary = f"{len(findings) - len(flagged)} of {len(findings)} checks pass" + (
        f"; {', '.join(f'{f.check}: {f.value}' for f in flagged)}" if flagged else ""
    )
    await publish_table(
        f"redis-diagnostics-{environment}",
        [f.row() for f in findings],
        f"Redis diagnostics of {environment}: {summary}",
    )
    await publish_markdown(
        f"redis-report-{environment}",
        render_report(environment, info, scan, latency, commands, clients),
        f"Redis of {environment}: keyspace, big keys, commands, clients, latency",
    )
    emit(
        "runbooks.redis.diagnosed",
        {"prefect.resource.id": f"runbooks.environment.{environment}", "prefect.resource.name": environment},
        {
            "address": info.address,
            "checks": len(findings),
            "flagged": [f.row() for f in flagged],
            "keys_scanned": scan.scanned if scan else None,
            "scan_complete": scan.complete if scan else None,
            "scan_fraction": scan.fraction if scan else None,
        },
    )
    for f in findings:
        (logger.warning if f.verdict in ("warn", "fail") else logger.info)(
            "%-7s %s: %s (limit %s) %s", f.verdict.upper(), f.check, f.value, f.limit, f.detail
        )
    return Completed(message=summary, data={"findings": findings, "scan": scan, "info": info, "latency": latency})
