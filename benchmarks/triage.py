"""Triage benchmark (run on demand: ``python -m benchmarks.triage``; never part of the tests).

(a) N alerts through the gateway into the running sandbox (``runbooks sandbox up`` first): time from sending the
    alert to the first Slack message carrying diagnostics, p50/p95 (the path: gateway → Prefect event → deployment
    trigger → worker → incident-triage → enrichers → Slack receiver).
(b) 10,000 alerts at 500/s with many duplicates against the gateway alone: ack latency p99 and incidents per
    fingerprint (must be exactly 1). The gateway runs as ``runbooks gateway serve`` in its own process and the load
    comes from ``benchmarks.loadgen`` in another (open loop, pre-serialised keep-alive requests, latency from the
    time each request was due); both report their CPU time per alert, so a client bottleneck would show.

(c) Faults injected into the running sandbox (``runbooks sandbox up`` with its Prometheus, Alertmanager and gateway),
    no alert sent by hand: one model down at a time, ``--faults`` rounds. For each incident, the time from the fault
    to each hop: the rule pending and firing in Prometheus, Alertmanager's POST at the gateway, the event delivered
    to Prefect, the flow run created and started, the first Slack message with diagnostics. p50/p95 of each, and of
    Alertmanager's POST to the first Slack message (goal: p95 < 5 s). The rule's ``for:`` (30 s for ModelDown) and
    the scrape/evaluation interval (5 s) make up most of the rest.

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


def _iso(text: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp() if text else None


def _gateway_times(db: Path, incident_id: str) -> tuple[float | None, float | None]:
    """(opened_at, delivered_at of its opened event) from the sandbox gateway's SQLite file, read-only."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        opened = conn.execute("SELECT opened_at FROM incidents WHERE incident_id = ?", (incident_id,)).fetchone()
        delivered = conn.execute(
            "SELECT min(delivered_at) FROM outbox WHERE event LIKE ? AND event LIKE '%incident.opened%'",
            (f"%{incident_id}%",),
        ).fetchone()
    return (opened[0] if opened else None), (delivered[0] if delivered else None)


async def fault_to_slack(rounds: int, timeout_s: float) -> dict[str, Any]:
    """(c): faults into the running sandbox, timed hop by hop (see the module docstring)."""
    from sandbox.platform_api.models import MODEL_NAMES

    sandbox = SandboxSettings()
    secrets = SandboxState(sandbox.home).secrets()
    platform = sandbox.url(sandbox.platform_port)
    prometheus = sandbox.url(sandbox.prometheus_port)
    gateway_url = sandbox.url(sandbox.gateway_port)
    receivers = sandbox.url(sandbox.receivers_port)
    admin = {"Authorization": f"Bearer {secrets['platform_admin_token']}"}
    gateway_auth = {"Authorization": f"Bearer {secrets['gateway_token']}"}
    db = sandbox.home / "gateway" / "gateway.sqlite3"
    hops: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            hops.setdefault(name, []).append(value)

    async with httpx.AsyncClient(timeout=10) as client:
        (await client.get(f"{prometheus}/-/ready")).raise_for_status()
        (await client.get(f"{gateway_url}/healthz")).raise_for_status()
        await client.delete(f"{receivers}/_received")
        for i in range(rounds):
            model = MODEL_NAMES[i % len(MODEL_NAMES)]
            (
                await client.put(f"{platform}/_sandbox/faults", headers=admin, json={"models_down": [model]})
            ).raise_for_status()
            t0 = time.time()
            pending = firing = slack_at = None
            incident_id: str | None = None
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and slack_at is None:
                alerts = (await client.get(f"{prometheus}/api/v1/alerts")).json()["data"]["alerts"]
                for a in alerts:
                    if a["labels"].get("alertname") == "ModelDown" and a["labels"].get("model") == model:
                        pending = pending or time.time()
                        if a["state"] == "firing":
                            firing = firing or time.time()
                if incident_id is None:
                    for incident in (await client.get(f"{gateway_url}/incidents", headers=gateway_auth)).json():
                        if (
                            incident["name"] == "ModelDown"
                            and incident["status"] == "open"
                            and incident["opened_at"] >= t0
                        ):
                            incident_id = incident["incident_id"]
                if incident_id is not None:
                    for entry in (await client.get(f"{receivers}/_received", params={"system": "slack"})).json():
                        if incident_id in json.dumps(entry["body"]) and "blocks" in entry["body"]:
                            slack_at = entry["at"]
                            break
                await asyncio.sleep(0.2)
            if incident_id is None or slack_at is None:
                raise RuntimeError(f"round {i} ({model} down): no Slack message within {timeout_s}s")
            posted, delivered = _gateway_times(db, incident_id)
            runs = (
                await client.post(
                    f"{sandbox.prefect_api_url}/flow_runs/filter",
                    json={
                        "flows": {"name": {"any_": ["incident-triage"]}},
                        "limit": 20,
                        "sort": "EXPECTED_START_TIME_DESC",
                    },
                )
            ).json()
            run = next((r for r in runs if r["parameters"].get("incident_id") == incident_id), {})
            created, started = _iso(run.get("created")), _iso(run.get("start_time"))
            add("fault_to_pending_s", (pending - t0) if pending else None)
            add("fault_to_firing_s", (firing - t0) if firing else None)
            add("firing_to_gateway_post_s", (posted - firing) if posted and firing else None)
            add("post_to_prefect_event_s", (delivered - posted) if delivered and posted else None)
            add("event_to_flow_run_s", (created - delivered) if created and delivered else None)
            add("flow_run_to_start_s", (started - created) if started and created else None)
            add("start_to_first_slack_s", (slack_at - started) if started else None)
            add("post_to_first_slack_s", (slack_at - posted) if posted else None)
            add("fault_to_first_slack_s", slack_at - t0)
            print(f"(c) round {i}: {model} down, incident {incident_id}: {slack_at - t0:.1f} s to Slack", flush=True)
            # clear, and wait for the incident to resolve, so the next round starts from a quiet platform
            (await client.delete(f"{platform}/_sandbox/faults", headers=admin)).raise_for_status()
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                open_ids = {
                    x["incident_id"]
                    for x in (await client.get(f"{gateway_url}/incidents", headers=gateway_auth)).json()
                    if x["status"] == "open"
                }
                if incident_id not in open_ids:
                    break
                await asyncio.sleep(0.5)
    figures: dict[str, Any] = {"fault_incidents": rounds}
    for name, values in hops.items():  # "fault_to_firing_s" -> "fault_to_firing_p50_s", "..._p95_s"
        figures[f"{name.removesuffix('_s')}_p50_s"] = round(pct(values, 0.5), 2)
        figures[f"{name.removesuffix('_s')}_p95_s"] = round(pct(values, 0.95), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--fingerprints", type=int, default=200)
    parser.add_argument("--triage", type=int, default=5, help="alerts for (a); 0 skips it")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the (b) load")
    parser.add_argument("--faults", type=int, default=5, help="fault rounds for (c); 0 skips it")
    parser.add_argument("--only", choices=["a", "b", "c"], help="run one part only")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    result: dict[str, Any] = {}
    if args.only in (None, "b"):
        result = ack_load(args.alerts, args.rate, args.fingerprints, args.connections)
        print(f"(b) {result}", flush=True)
    if args.triage and args.only in (None, "a"):
        triage = asyncio.run(first_notification(args.triage, args.timeout))
        print(f"(a) {triage}", flush=True)
        result.update(triage)
    if args.faults and args.only in (None, "c"):
        faults = asyncio.run(fault_to_slack(args.faults, args.timeout))
        print(f"(c) {faults}", flush=True)
        result.update(faults)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
