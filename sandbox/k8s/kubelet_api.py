"""The kubelet's HTTPS API as the API server uses it: ``/healthz``, ``/pods``, ``/containerLogs``, ``/stats/summary``
and ``/exec`` over WebSocket (channel protocols v4/v5; the command runs on this machine, which the pod "is"), and
``/metrics/resource`` as Prometheus scrapes it (the kubelet's resource metrics, Prometheus text format).
Clients must present a certificate signed by the cluster CA (the API server's kubelet-client certificate,
Prometheus's own client certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sandbox.k8s.behaviour import ContainerSim, PodSim, PodStore, parse_quantity, parse_time, rfc3339
from sandbox.k8s.logs import LogQuery, follow_lines, render
from sandbox.k8s.platform_feed import API_APPS, PlatformFeed

log = logging.getLogger("sandbox.node.kubelet")
EXEC_TIMEOUT_S = 30.0
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
STORE: web.AppKey[PodStore] = web.AppKey("store", PodStore)
PROCS: web.AppKey[set[asyncio.subprocess.Process]] = web.AppKey("procs")
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
CADVISOR: web.AppKey[CollectorRegistry] = web.AppKey("cadvisor", CollectorRegistry)
FEED: web.AppKey[PlatformFeed | None] = web.AppKey("feed")


def _lookup(request: web.Request) -> tuple[PodSim, ContainerSim]:
    store = request.app[STORE]
    ns, name, container = (request.match_info[k] for k in ("ns", "pod", "container"))
    pod = store.find(ns, name)
    if pod is None:
        raise web.HTTPNotFound(text=f'pod "{name}" does not exist\n')
    c = pod.containers.get(container)
    if c is None:
        raise web.HTTPNotFound(text=f'container "{container}" not found in pod "{name}"\n')
    return pod, c


def _flag(request: web.Request, *names: str) -> bool:
    return any(request.query.get(n, "").lower() in ("1", "true") for n in names)


def _int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"invalid {name}: {value!r}\n") from None


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def pods(request: web.Request) -> web.Response:
    items = [p.pod for p in request.app[STORE].running()]
    return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})


async def _platform_lines(request: web.Request, pod: PodSim, start: float, end: float) -> list[tuple[float, str]]:
    """What the platform double recorded that this pod of its API logged in [start, end] (none for other apps)."""
    feed = request.app[FEED]
    if feed is None or pod.app not in API_APPS:
        return []
    await feed.refresh()
    peers = [p.name for p in request.app[STORE].running() if p.namespace == pod.namespace and p.app == pod.app]
    return feed.lines(pod.name, peers, start, end)


async def container_logs(request: web.Request) -> web.StreamResponse:
    pod, c = _lookup(request)
    now = time.time()
    previous = _flag(request, "previous")
    run = c.instance(now, back=1 if previous else 0)
    if run is None:
        raise web.HTTPBadRequest(text=f'previous terminated container "{c.name}" in pod "{pod.name}" not found\n')
    since_seconds = _int(request, "sinceSeconds")
    since = now - since_seconds if since_seconds is not None else None
    with contextlib.suppress(ValueError):
        since = parse_time(request.query.get("sinceTime")) or since
    query = LogQuery(
        since=since,
        tail_lines=_int(request, "tailLines"),
        timestamps=_flag(request, "timestamps"),
        limit_bytes=_int(request, "limitBytes"),
    )
    extra = await _platform_lines(request, pod, run.started, run.finished if run.finished is not None else now)
    body = await asyncio.to_thread(render, c, pod.app, run, now, query, extra)  # a long log takes a while
    if not _flag(request, "follow") or run.finished is not None:
        return web.Response(body=body, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    await response.write(body)
    after = now
    with contextlib.suppress(ConnectionError):  # the client went away
        while True:  # until the container stops running
            await asyncio.sleep(1.0)
            now = time.time()
            current = c.instance(now)
            if pod.deleting or current is None or current.index != run.index or current.finished is not None:
                break
            extra = await _platform_lines(request, pod, after, now)
            await response.write(follow_lines(c, pod.app, run, after, now, query.timestamps, extra))
            after = now
        await response.write_eof()
    return response


def _usage(cpu: float, memory: float, now: float, since: float) -> dict[str, Any]:
    return {
        "cpu": {
            "time": rfc3339(now),
            "usageNanoCores": int(cpu),
            "usageCoreNanoSeconds": int(cpu * max(1.0, now - since)),
        },
        "memory": {
            "time": rfc3339(now),
            "usageBytes": int(memory * 1.15),
            "workingSetBytes": int(memory),
            "rssBytes": int(memory * 0.9),
            "pageFaults": 0,
            "majorPageFaults": 0,
        },
    }


async def stats_summary(request: web.Request) -> web.Response:
    store = request.app[STORE]
    now = time.time()
    node_cpu, node_memory = store.node_usage(now)
    capacity = 32 * 2**30
    node = {
        "nodeName": store.node_name,
        "systemContainers": [],
        "startTime": rfc3339(store.booted),
        **_usage(node_cpu, node_memory, now, store.booted),
        "fs": {
            "time": rfc3339(now),
            "capacityBytes": 100 * 2**30,
            "availableBytes": 70 * 2**30,
            "usedBytes": 30 * 2**30,
        },
    }
    node["memory"]["availableBytes"] = int(capacity - node_memory)
    out_pods = []
    for pod in store.running():
        containers = []
        pod_cpu = pod_memory = 0.0
        for c in pod.containers.values():
            cpu, memory = c.usage(now)
            pod_cpu, pod_memory = pod_cpu + cpu, pod_memory + memory
            containers.append({"name": c.name, "startTime": rfc3339(c.since), **_usage(cpu, memory, now, c.since)})
        out_pods.append(
            {
                "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "startTime": rfc3339(pod.started),
                "containers": containers,
                **_usage(pod_cpu, pod_memory, now, pod.started),
            }
        )
    return web.json_response({"node": node, "pods": out_pods})


class ResourceMetrics(Collector):
    """The kubelet's ``/metrics/resource`` (Kubernetes 1.20 names and labels), built with prometheus_client's
    collector API rather than by hand. CPU counters integrate the simulated usage between scrapes, so they only
    ever grow (Prometheus reads a drop as a counter reset); a container that restarted starts again from zero."""

    def __init__(self, store: PodStore) -> None:
        self.store = store
        self._cpu_s: dict[tuple[str, float], tuple[float, float]] = {}  # (key, since) -> (seconds, at)

    def _cpu_seconds(self, key: str, since: float, nanocores: float, now: float) -> float:
        seconds, at = self._cpu_s.get((key, since), (0.0, since))
        seconds += nanocores / 1e9 * max(0.0, now - at)
        self._cpu_s[(key, since)] = (seconds, now)
        return seconds

    def collect(self) -> list[Metric]:
        now = time.time()
        node_cpu = CounterMetricFamily(
            "node_cpu_usage_seconds", "Cumulative cpu time consumed by the node in core-seconds"
        )
        node_mem = GaugeMetricFamily("node_memory_working_set_bytes", "Current working set of the node in bytes")
        labels = ["container", "namespace", "pod"]
        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds",
            "Cumulative cpu time consumed by the container in core-seconds",
            labels=labels,
        )
        mem = GaugeMetricFamily(
            "container_memory_working_set_bytes", "Current working set of the container in bytes", labels=labels
        )
        start = GaugeMetricFamily(
            "container_start_time_seconds", "Start time of the container since unix epoch in seconds", labels=labels
        )
        seen: set[tuple[str, float]] = set()
        for pod in self.store.running():
            for c in pod.containers.values():
                c_cpu, c_mem = c.usage(now)
                values = [c.name, pod.namespace, pod.name]
                seen.add((c.key, c.since))
                cpu.add_metric(values, self._cpu_seconds(c.key, c.since, c_cpu, now))
                mem.add_metric(values, c_mem)
                start.add_metric(values, c.since)
        for gone in set(self._cpu_s) - seen - {("node", self.store.booted)}:
            del self._cpu_s[gone]
        n_cpu, n_mem = self.store.node_usage(now)
        node_cpu.add_metric([], self._cpu_seconds("node", self.store.booted, n_cpu, now))
        node_mem.add_metric([], n_mem)
        scrape_error = GaugeMetricFamily("scrape_error", "1 if there was an error while getting container metrics")
        scrape_error.add_metric([], 0)
        return [node_cpu, node_mem, cpu, mem, start, scrape_error]


class CadvisorSpecMetrics(Collector):
    """Of the kubelet's ``/metrics/cadvisor``, the container specs' memory limits (what a cluster's alert on the
    working set divides by: kube-state-metrics is not there). Labels as cAdvisor's, minus its ``id``/``image``/
    ``name``: ``container``, ``namespace``, ``pod``. A container without a limit reports 0, as cAdvisor does."""

    def __init__(self, store: PodStore) -> None:
        self.store = store

    def collect(self) -> list[Metric]:
        limit = GaugeMetricFamily(
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            labels=["container", "namespace", "pod"],
        )
        for pod in self.store.running():
            specs = {c.get("name"): c for c in (pod.pod.get("spec") or {}).get("containers") or []}
            for c in pod.containers.values():
                limits = ((specs.get(c.name) or {}).get("resources") or {}).get("limits") or {}
                limit.add_metric([c.name, pod.namespace, pod.name], parse_quantity(limits.get("memory")) or 0.0)
        return [limit]


async def metrics_resource(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def metrics_cadvisor(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[CADVISOR]), headers={"Content-Type": CONTENT_TYPE_LATEST})


# --------------------------------------------------------------------------------------------------- exec
def _status(protocol: str, code: int, message: str) -> bytes:
    if protocol.startswith(("v4.", "v5.")):
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        if code:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        return b"\x03" + json.dumps(status).encode()
    return b"\x03" + (message.encode() if code else b"")


async def _pump(stream: asyncio.StreamReader | None, ws: web.WebSocketResponse, channel: int, wanted: bool) -> None:
    while stream is not None and (chunk := await stream.read(32768)):
        if wanted and not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(bytes([channel]) + chunk)


async def _feed(ws: web.WebSocketResponse, proc: asyncio.subprocess.Process) -> None:
    """Client frames: channel 0 is stdin; v5's channel 255 [0] closes it; a client close ends everything."""
    async for msg in ws:
        if msg.type != WSMsgType.BINARY or not msg.data:
            continue
        channel, data = msg.data[0], msg.data[1:]
        if channel == 0 and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(data)
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
        elif channel == 255 and data[:1] == b"\x00" and proc.stdin is not None:
            proc.stdin.close()


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def exec_command(request: web.Request) -> web.StreamResponse:
    pod, c = _lookup(request)
    command = request.query.getall("command", [])
    if not command:
        raise web.HTTPBadRequest(text="you must specify at least 1 command\n")
    if c.behaviour.crash:
        raise web.HTTPBadRequest(text=f'container not found ("{c.name}")\n')
    if "websocket" not in request.headers.get("Upgrade", "").lower():
        raise web.HTTPBadRequest(text="the sandbox node serves exec over WebSocket (v4/v5.channel.k8s.io) only\n")
    ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    protocol = ws.ws_protocol or ""
    stdin = _flag(request, "input", "stdin")
    log.info("exec %s/%s[%s]: %s", pod.namespace, pod.name, c.name, command)
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as err:
        code = 127 if isinstance(err, FileNotFoundError) else 126
        message = f'exec: "{command[0]}": {"executable file not found in $PATH" if code == 127 else err.strerror}'
        await ws.send_bytes(_status(protocol, code, message))
        await ws.close()
        return ws
    procs = request.app[PROCS]
    procs.add(proc)
    pumps = asyncio.gather(
        _pump(proc.stdout, ws, 1, _flag(request, "output", "stdout")),
        _pump(proc.stderr, ws, 2, _flag(request, "error", "stderr")),
    )
    feeder = asyncio.create_task(_feed(ws, proc))
    message = ""
    try:
        await asyncio.wait_for(asyncio.shield(pumps), EXEC_TIMEOUT_S)
        code = await asyncio.wait_for(proc.wait(), 5.0)
    except TimeoutError:
        _kill(proc)
        code, message = 137, f"command timed out after {EXEC_TIMEOUT_S:.0f}s"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pumps, 2.0)
    finally:
        procs.discard(proc)
        _kill(proc)
        feeder.cancel()
    code = 128 - code if code < 0 else code  # killed by a signal
    if code and not message:
        message = f"command terminated with non-zero exit code: error executing command {command}, exit code {code}"
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_bytes(_status(protocol, code, message))
        await ws.close()
    return ws


async def _cleanup(app: web.Application) -> None:
    procs: set[asyncio.subprocess.Process] = app[PROCS]
    for proc in procs:
        _kill(proc)


def create_app(store: PodStore, platform_url: str | None = None) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app[FEED] = PlatformFeed(platform_url) if platform_url else None
    app[PROCS] = set()
    app[REGISTRY] = CollectorRegistry(auto_describe=False)
    app[REGISTRY].register(ResourceMetrics(store))
    app[CADVISOR] = CollectorRegistry(auto_describe=False)
    app[CADVISOR].register(CadvisorSpecMetrics(store))
    app.on_cleanup.append(_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/pods", pods)
    app.router.add_get("/stats/summary", stats_summary)
    app.router.add_get("/metrics/resource", metrics_resource)
    app.router.add_get("/metrics/cadvisor", metrics_cadvisor)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    for path in ("/exec/{ns}/{pod}/{container}", "/exec/{ns}/{pod}/{uid}/{container}"):
        app.router.add_route("GET", path, exec_command)
        app.router.add_route("POST", path, exec_command)
    return app
