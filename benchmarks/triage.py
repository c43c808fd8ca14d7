"""Triage benchmark (run on demand: ``python -m benchmarks.triage``; never part of the tests).

(a) N alerts through the gateway into the running sandbox (``runbooks sandbox up`` first): time from sending the
    alert to the first Slack message carrying diagnostics, p50/p95 (the path: gateway → Prefect event → deployment
    trigger → worker → incident-triage → enrichers → Slack receiver).
(b) 10,000 alerts at 500/s with many duplicates against the gateway alone: ack latency p99 and incidents per
    fingerprint (must be exactly 1). The gateway runs as ``runbooks gateway serve`` in its own process and the load
    comes from ``benchmarks.loadgen`` in another (open loop, pre-serialised keep-alive requests, latency from the
    time each request was due); both report their CPU time per alert, so a client bottleneck would show.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks import loadgen
from kernel import processes
from sandbox.config import SandboxSettings, SandboxState

TOKEN = "bench-" + uuid.uuid4().hex


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def alert(name: str, fingerprint: str) -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "bench",
        "groupKey": name,
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name, "severity": "critical"},
                "annotations": {"summary": f"{name} (benchmark)"},
                "fingerprint": fingerprint,
            }
        ],
    }


@contextlib.contextmanager
def gateway(tmp: str, **settings: str) -> Iterator[tuple[str, int, int]]:
    """``runbooks gateway serve`` in its own process (as in production), on a free port; ``settings`` become
    ``RUNBOOKS_GATEWAY_*`` variables. Yields (host, port, pid) once /healthz answers."""
    port = free_port()
    env = {
        **os.environ,
        "RUNBOOKS_GATEWAY_TOKEN": TOKEN,
        "RUNBOOKS_GATEWAY_DB_PATH": f"{tmp}/gw.sqlite3",
        **{f"RUNBOOKS_GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    pid = processes.spawn_daemon(
        [sys.executable, "-m", "runbooks.cli", "gateway", "serve", "--port", str(port)],
        log_path=Path(tmp) / "gateway.log",
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or not processes.is_alive(pid):
                    log = (Path(tmp) / "gateway.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the gateway did not start:\n{log}") from None
                time.sleep(0.2)
        yield "127.0.0.1", port, pid
    finally:
        processes.stop_group(pid)


def ack_load(total: int, rate: float, fingerprints: int, connections: int) -> dict[str, Any]:
    """(b): the gateway alone, in its own process, Prefect unreachable on purpose (events stay queued, and acks
    must not wait on Prefect); the load from ``benchmarks.loadgen`` in another process, open loop."""
    with tempfile.TemporaryDirectory() as tmp:
        with gateway(tmp, prefect_api_url="http://127.0.0.1:9/api", delivery_interval_s="5") as (host, port, pid):
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            requests = [
                loadgen.build_request(
                    "POST",
                    host,
                    port,
                    "/alerts/alertmanager",
                    json.dumps(alert("BenchLoad", f"fp-{n}")).encode(),
                    headers,
                )
                for n in range(fingerprints)
            ]
            cpu_before = cpu_seconds(pid)
            result = loadgen.run_in_process(
                host, port, requests, [i % fingerprints for i in range(total)], rate, connections=connections
            )
            gateway_cpu_s = cpu_seconds(pid) - cpu_before
            response = httpx.get(f"http://{host}:{port}/incidents", headers=headers, timeout=30)
            response.raise_for_status()
            incidents = response.json()
    per_fp: dict[str, int] = {}
    for incident in incidents:
        per_fp[incident["fingerprint"]] = per_fp.get(incident["fingerprint"], 0) + 1
    return {
        "alerts_sent": total,
        "ack_errors": result.errors,
        "send_rate_per_s": round(total / result.elapsed_s, 1),
        "connections": connections,
        "ack_p50_ms": round(result.percentile(0.5), 2),
        "ack_p99_ms": round(result.percentile(0.99), 2),
        "ack_max_ms": round(max(result.latencies_ms, default=float("nan")), 2),
        "gateway_cpu_ms_per_alert": round(gateway_cpu_s * 1000 / total, 3),
        "loadgen_cpu_ms_per_alert": round(result.cpu_s * 1000 / total, 3),
        "loadgen_max_backlog": result.max_backlog,
        "fingerprints": fingerprints,
        "incidents_per_fingerprint_max": max(per_fp.values(), default=0),
        "incidents_per_fingerprint_min": min(per_fp.values(), default=0),
        "fingerprints_with_incident": len(per_fp),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_notification(n: int, timeout_s: float) -> dict[str, Any]:
    """(a): through the whole sandbox; needs `runbooks sandbox up`."""
    sandbox = SandboxSettings()
    receivers = sandbox.url(sandbox.receivers_port)
    SandboxState(sandbox.home).secrets()  # fail early if the sandbox was never brought up
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        with gateway(tmp, prefect_api_url=sandbox.prefect_api_url, delivery_interval_s="0.1") as (host, port, _):
            url = f"http://{host}:{port}"
            async with httpx.AsyncClient(timeout=30) as client:
                await client.delete(f"{receivers}/_received")
                sent: dict[str, float] = {}
                for i in range(n):
                    r = await client.post(
                        f"{url}/alerts/alertmanager",
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        json=alert("HighErrorRate", f"bench-{uuid.uuid4().hex[:8]}-{i}"),
                    )
                    sent[r.json()["incidents"][0]["incident_id"]] = time.perf_counter()
                    await asyncio.sleep(0.2)
                deadline = time.perf_counter() + timeout_s
                seen: set[str] = set()
                while len(seen) < n and time.perf_counter() < deadline:
                    for entry in (await client.get(f"{receivers}/_received", params={"system": "slack"})).json():
                        text = json.dumps(entry["body"])
                        for incident_id, at in sent.items():
                            if incident_id not in seen and incident_id in text and "blocks" in entry["body"]:
                                seen.add(incident_id)
                                times.append(time.perf_counter() - at)
                    await asyncio.sleep(0.25)
    return {
        "first_notification_p50_s": round(pct(times, 0.5), 2),
        "first_notification_p95_s": round(pct(times, 0.95), 2),
        "triaged": len(times),
        "triage_alerts": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--fingerprints", type=int, default=200)
    parser.add_argument("--triage", type=int, default=5, help="alerts for (a); 0 skips it")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the (b) load")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    result = ack_load(args.alerts, args.rate, args.fingerprints, args.connections)
    print(f"(b) {result}", flush=True)
    if args.triage:
        triage = asyncio.run(first_notification(args.triage, args.timeout))
        print(f"(a) {triage}", flush=True)
        result.update(triage)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
