"""Triage benchmark (run on demand: ``python -m benchmarks.triage``; never part of the tests).

(a) N alerts through the gateway into the running sandbox (``runbooks sandbox up`` first): time from sending the
    alert to the first Slack message carrying diagnostics, p50/p95 (the path: gateway → Prefect event → deployment
    trigger → worker → incident-triage → enrichers → Slack receiver).
(b) 10,000 alerts at 500/s with many duplicates against the gateway alone: ack latency p99 and incidents per
    fingerprint (must be exactly 1).

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from runbooks import processes
from runbooks.gateway.app import GatewaySettings, create_app
from sandbox.config import SandboxSettings, SandboxState
from tests.servers import serve

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


async def ack_load(total: int, rate: float, fingerprints: int) -> dict[str, Any]:
    """(b): the gateway alone, in its own process (``runbooks gateway serve``), Prefect unreachable on purpose:
    events stay queued, and acks must not wait on Prefect."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "RUNBOOKS_GATEWAY_TOKEN": TOKEN,
            "RUNBOOKS_GATEWAY_DB_PATH": f"{tmp}/gw.sqlite3",
            "RUNBOOKS_GATEWAY_PREFECT_API_URL": "http://127.0.0.1:9/api",
            "RUNBOOKS_GATEWAY_DELIVERY_INTERVAL_S": "5",
        }
        pid = processes.spawn_daemon(
            [sys.executable, "-m", "runbooks.cli", "gateway", "serve", "--port", str(port)],
            log_path=Path(tmp) / "gateway.log",
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        latencies: list[float] = []
        errors = 0
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    async with httpx.AsyncClient() as probe:
                        (await probe.get(f"{url}/healthz")).raise_for_status()
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
            async with httpx.AsyncClient(
                base_url=url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                limits=httpx.Limits(max_connections=64),
                timeout=30,
            ) as client:
                in_flight = asyncio.Semaphore(64)  # httpx's pool degrades with thousands of waiting requests

                async def send(i: int, scheduled: float) -> None:
                    nonlocal errors
                    async with in_flight:
                        try:
                            r = await client.post(
                                "/alerts/alertmanager", json=alert("BenchLoad", f"fp-{i % fingerprints}")
                            )
                            errors += r.status_code != 202
                        except httpx.TransportError:
                            errors += 1
                    # from the time it was due, not from when it got a connection: queueing counts
                    latencies.append((time.perf_counter() - scheduled) * 1000)

                begin = time.perf_counter()
                tasks = []
                for i in range(total):
                    scheduled = begin + i / rate
                    delay = scheduled - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(send(i, scheduled)))
                await asyncio.gather(*tasks)
                elapsed = time.perf_counter() - begin
                incidents = (await client.get("/incidents")).json()
        finally:
            processes.stop_group(pid)
    per_fp: dict[str, int] = {}
    for incident in incidents:
        per_fp[incident["fingerprint"]] = per_fp.get(incident["fingerprint"], 0) + 1
    return {
        "alerts_sent": total,
        "ack_errors": errors,
        "send_rate_per_s": round(total / elapsed, 1),
        "ack_p50_ms": round(pct(latencies, 0.5), 2),
        "ack_p99_ms": round(pct(latencies, 0.99), 2),
        "fingerprints": fingerprints,
        "incidents_per_fingerprint_max": max(per_fp.values()),
        "incidents_per_fingerprint_min": min(per_fp.values()),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_notification(n: int, timeout_s: float) -> dict[str, Any]:
    """(a): through the whole sandbox; needs `runbooks sandbox up`."""
    sandbox = SandboxSettings()
    receivers = sandbox.url(sandbox.receivers_port)
    with tempfile.TemporaryDirectory() as tmp:
        settings = GatewaySettings(
            token=SecretStr(TOKEN),
            db_path=Path(tmp) / "gw.sqlite3",
            prefect_api_url=sandbox.prefect_api_url,
            delivery_interval_s=0.1,
        )
        SandboxState(sandbox.home).secrets()  # fail early if the sandbox was never brought up
        times: list[float] = []
        with serve(create_app(settings)) as url:
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--fingerprints", type=int, default=200)
    parser.add_argument("--triage", type=int, default=5, help="alerts for (a); 0 skips it")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    result = await ack_load(args.alerts, args.rate, args.fingerprints)
    print(f"(b) {result}", flush=True)
    if args.triage:
        triage = await first_notification(args.triage, args.timeout)
        print(f"(a) {triage}", flush=True)
        result.update(triage)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
