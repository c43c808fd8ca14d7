"""The simulated node agent: registers Node ``--name``, keeps its status and Lease fresh, "runs" the pods bound to
it (statuses, pod IPs, crash loops, slow readiness, final deletes, events), serves the kubelet API and
metrics.k8s.io. Steered by the image tags (the release catalogue, :mod:`sandbox.releases`), the ConfigMap
``kube-system/sandbox-node-behaviour`` and pod annotations (see :mod:`sandbox.k8s.behaviour`).

    python -m sandbox.k8s.node --kubeconfig K --name N --address A --port P --cert C --key K --ca CA \\
        --metrics-address M --metrics-port MP --metrics-cert MC --metrics-key MK --front-proxy-ca FCA \\
        [--platform-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import platform
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from sandbox.k8s import kubelet_api, metrics_api
from sandbox.k8s.behaviour import RULES_CONFIGMAP, RULES_NAMESPACE, PodSim, PodStore, Rules, rfc3339

log = logging.getLogger("sandbox.node")
POD_CIDR = ipaddress.ip_network("127.65.0.0/16")
HEARTBEAT_S = 10.0
LEASE_DURATION_S = 40
SYNC_S = 1.0
WATCH_S = 240
CALL_TIMEOUT = 15
WATCH_TIMEOUT = (10, WATCH_S + 60)
MERGE_PATCH = "application/merge-patch+json"
KUBELET_VERSION = "v1.20.2"


def _read(path: str, default: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return default


def _micro(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def forever(name: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` again and again; an error is logged and retried with backoff, never fatal."""
    backoff = 1.0
    while True:
        try:
            await step()
            backoff = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as err:  # transient API or network errors must not kill the node
            reason = err.reason if isinstance(err, ApiException) else err
            log.warning("%s failed (%s: %s); retrying in %.0fs", name, type(err).__name__, reason, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


class NodeAgent:
    def __init__(self, args: argparse.Namespace, api: client.ApiClient) -> None:
        self.args = args
        self.api = api
        # Any: the client's stubs insist on model objects and lack _content_type; plain JSON dicts work at runtime
        self.core: Any = client.CoreV1Api(api)
        self.leases: Any = client.CoordinationV1Api(api)
        self.store = PodStore(args.name, args.address, time.time())
        self.wake = asyncio.Event()
        self._next_ip = 1
        self._events: dict[str, tuple[str, int]] = {}  # "<uid>/<container>/<reason>" -> (event name, count)
        self._deletes: dict[str, float] = {}  # uid -> when the final delete was sent

    # ------------------------------------------------------------------------------------- node and lease
    def _conditions(self, now: float) -> list[dict[str, Any]]:
        rows = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]
        return [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": rfc3339(now),
                "lastTransitionTime": rfc3339(self.store.booted),
            }
            for kind, status, reason, message in rows
        ]

    def _node(self, now: float) -> dict[str, Any]:
        name, resources = self.args.name, {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "node-role.kubernetes.io/worker": "",
        }
        machine = _read("/etc/machine-id", hashlib.md5(name.encode()).hexdigest())
        os_image = "Linux"
        with contextlib.suppress(OSError):
            os_image = platform.freedesktop_os_release().get("PRETTY_NAME", os_image)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": self._conditions(now),
                "addresses": [
                    {"type": "InternalIP", "address": self.args.address},
                    {"type": "Hostname", "address": name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.args.port}},
                "nodeInfo": {
                    "machineID": machine,
                    "systemUUID": machine,
                    "bootID": _read("/proc/sys/kernel/random/boot_id", machine),
                    "kernelVersion": platform.release(),
                    "osImage": os_image,
                    "containerRuntimeVersion": "sandbox://1.0",
                    "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": KUBELET_VERSION,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }

    async def register(self) -> None:
        node = self._node(time.time())
        try:
            await self.core.create_node(node, _request_timeout=CALL_TIMEOUT)
            log.info("registered node %s", self.args.name)
        except ApiException as err:
            if err.status != 409:
                raise
            patch = {"metadata": {"labels": node["metadata"]["labels"]}}
            await self.core.patch_node(self.args.name, patch, _request_timeout=CALL_TIMEOUT)
            await self.core.patch_node_status(
                self.args.name, {"status": node["status"]}, _content_type=MERGE_PATCH, _request_timeout=CALL_TIMEOUT
            )
            log.info("node %s already registered: status refreshed", self.args.name)

    async def heartbeats(self) -> None:
        await self.register()
        while True:
            now = time.time()
            await self._renew_lease(now)
            await self.core.patch_node_status(
                self.args.name, {"status": {"conditions": self._conditions(now)}}, _request_timeout=CALL_TIMEOUT
            )
            await asyncio.sleep(HEARTBEAT_S)

    async def _renew_lease(self, now: float) -> None:
        spec = {"holderIdentity": self.args.name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": _micro(now)}
        try:
            await self.leases.patch_namespaced_lease(
                self.args.name,
                "kube-node-lease",
                {"spec": spec},
                _content_type=MERGE_PATCH,
                _request_timeout=CALL_TIMEOUT,
            )
        except ApiException as err:
            if err.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.args.name}
            node = await self.core.read_node(self.args.name, _request_timeout=CALL_TIMEOUT)
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.args.name, "ownerReferences": [{**owner, "uid": node.metadata.uid}]},
                "spec": spec,
            }
            await self.leases.create_namespaced_lease("kube-node-lease", lease, _request_timeout=CALL_TIMEOUT)

    # ----------------------------------------------------------------------------------------- watches
    async def _list_watch(
        self, method: Any, on_list: Callable[[list[Any]], None], on_event: Callable[[str, Any], None], **kwargs: Any
    ) -> None:
        """List, then watch from the list's version; returns when the watch expires (the caller lists again)."""
        listed = await method(_request_timeout=CALL_TIMEOUT, **kwargs)
        on_list([self.api.sanitize_for_serialization(item) for item in listed.items])
        version = listed.metadata.resource_version
        try:
            async with watch.Watch(return_type="object") as w:
                stream = w.stream(
                    method, resource_version=version, timeout_seconds=WATCH_S, _request_timeout=WATCH_TIMEOUT, **kwargs
                )
                async for event in stream:
                    on_event(event["type"], event["raw_object"])
        except ApiException as err:
            if err.status != 410:  # 410 Gone: the version is too old, list again
                raise

    async def watch_pods(self) -> None:
        """The pods bound to this node."""

        def listed(pods: list[dict[str, Any]]) -> None:
            for uid in set(self.store.pods) - {p["metadata"]["uid"] for p in pods}:
                self._forget(uid)
            for pod in pods:
                self._observe(pod)

        def changed(kind: str, pod: dict[str, Any]) -> None:
            if kind == "DELETED":
                self._forget(pod["metadata"]["uid"])
            elif kind in ("ADDED", "MODIFIED"):
                self._observe(pod)

        selector = f"spec.nodeName={self.args.name}"
        await self._list_watch(self.core.list_pod_for_all_namespaces, listed, changed, field_selector=selector)

    async def watch_rules(self) -> None:
        """The behaviour ConfigMap; absent means every pod is healthy."""

        def changed(kind: str, cm: dict[str, Any]) -> None:
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._apply_rules(None if kind == "DELETED" else cm.get("data"))

        await self._list_watch(
            self.core.list_namespaced_config_map,
            lambda items: self._apply_rules(items[0].get("data") if items else None),
            changed,
            namespace=RULES_NAMESPACE,
            field_selector=f"metadata.name={RULES_CONFIGMAP}",
        )

    def _apply_rules(self, data: dict[str, str] | None) -> None:
        try:
            rules = Rules.from_configmap(data)
        except (ValueError, ValidationError) as err:
            log.error("ignoring %s/%s: invalid rules (%s)", RULES_NAMESPACE, RULES_CONFIGMAP, err)
            rules = Rules()
        if rules == self.store.rules:
            return
        log.info("behaviour rules: %s", rules.model_dump(exclude_defaults=True) or "all healthy")
        self.store.rules = rules
        now = time.time()
        for sim in self.store.pods.values():
            sim.update(sim.pod, rules, now)
        self.wake.set()

    def _observe(self, pod: dict[str, Any]) -> None:
        uid, now = pod["metadata"]["uid"], time.time()
        sim = self.store.pods.get(uid)
        if sim is not None:
            sim.update(pod, self.store.rules, now)
        elif (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            sim = self.store.pods[uid] = PodSim.create(pod, self._allocate_ip(pod), self.store.rules, now)
            sim.update(pod, self.store.rules, now)
            log.info("pod %s/%s: started on %s", sim.namespace, sim.name, sim.ip)
        self.wake.set()

    def _forget(self, uid: str) -> None:
        sim = self.store.pods.pop(uid, None)
        self._deletes.pop(uid, None)
        self._events = {k: v for k, v in self._events.items() if not k.startswith(uid)}
        if sim is not None:
            log.info("pod %s/%s: gone", sim.namespace, sim.name)

    def _allocate_ip(self, pod: dict[str, Any]) -> str:
        if (pod.get("spec") or {}).get("hostNetwork"):
            return str(self.args.address)
        used = {p.ip for p in self.store.pods.values()}
        current = (pod.get("status") or {}).get("podIP")
        if current and ipaddress.ip_address(current) in POD_CIDR and current not in used:
            return str(current)
        for _ in range(POD_CIDR.num_addresses):
            self._next_ip = self._next_ip % (POD_CIDR.num_addresses - 2) + 1
            candidate = str(POD_CIDR[self._next_ip])
            if candidate not in used:
                return candidate
        raise RuntimeError(f"no free pod IP left in {POD_CIDR}")

    # ---------------------------------------------------------------------------------------- pod sync
    async def sync(self) -> None:
        """Push every pod's simulated status when it changed; finish deletions. Wakes on events and every SYNC_S."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), SYNC_S)
        self.wake.clear()
        now = time.time()
        for sim in list(self.store.pods.values()):
            try:
                await (self._finish_delete(sim, now) if sim.deleting else self._push_status(sim, now))
            except ApiException as err:
                if err.status == 404:
                    self._forget(sim.uid)
                else:
                    log.warning("pod %s/%s: sync failed (%s %s)", sim.namespace, sim.name, err.status, err.reason)

    async def _push_status(self, sim: PodSim, now: float) -> None:
        status = sim.status(self.args.address, now)
        if status == sim.last_sent:
            return
        await self.core.patch_namespaced_pod_status(
            sim.name, sim.namespace, {"status": status}, _content_type=MERGE_PATCH, _request_timeout=CALL_TIMEOUT
        )
        sim.last_sent = status
        for c in sim.containers.values():
            if c.behaviour.crash:
                await self._event(sim, c.name, "BackOff", "Back-off restarting failed container", c.restart_count(now))
            else:
                await self._event(sim, c.name, "Pulled", f'Container image "{c.image}" already present on machine')
                await self._event(sim, c.name, "Created", f"Created container {c.name}")
                await self._event(sim, c.name, "Started", f"Started container {c.name}")
                if not c.ready(now):
                    message = "Readiness probe failed: HTTP probe failed with statuscode: 503"
                    await self._event(sim, c.name, "Unhealthy", message)

    async def _finish_delete(self, sim: PodSim, now: float) -> None:
        if now - self._deletes.get(sim.uid, 0.0) < 5.0:
            return
        for c in sim.containers.values():
            await self._event(sim, c.name, "Killing", f"Stopping container {c.name}")
        self._deletes[sim.uid] = now
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": sim.uid}}
        await self.core.delete_namespaced_pod(
            sim.name, sim.namespace, grace_period_seconds=0, body=body, _request_timeout=CALL_TIMEOUT
        )
        log.info("pod %s/%s: containers stopped, pod deleted", sim.namespace, sim.name)

    async def _event(self, sim: PodSim, container: str, reason: str, message: str, count: int = 1) -> None:
        """Record a kubelet event once (or bump its count); failures only cost the event."""
        key = f"{sim.uid}/{container}/{reason}"
        name, sent = self._events.get(key, ("", 0))
        if sent >= count:
            return
        stamp = rfc3339(time.time())
        self._events[key] = (name or f"{sim.name}.{hashlib.sha1(key.encode()).hexdigest()[:16]}", count)
        try:
            if name:
                patch = {"count": count, "lastTimestamp": stamp, "message": message}
                await self.core.patch_namespaced_event(name, sim.namespace, patch, _request_timeout=CALL_TIMEOUT)
                return
            warning = reason in ("BackOff", "Unhealthy")
            event = {
                "metadata": {"name": self._events[key][0], "namespace": sim.namespace},
                "involvedObject": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "namespace": sim.namespace,
                    "name": sim.name,
                    "uid": sim.uid,
                    "fieldPath": f"spec.containers{{{container}}}",
                },
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
                "source": {"component": "kubelet", "host": self.args.name},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": count,
            }
            await self.core.create_namespaced_event(sim.namespace, event, _request_timeout=CALL_TIMEOUT)
        except ApiException as err:
            log.debug("event %s for %s/%s not recorded: %s", reason, sim.namespace, sim.name, err.reason)


def _tls(cert: str, key: str, ca: str, verify: ssl.VerifyMode) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = verify
    return ctx


async def run(args: argparse.Namespace) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    agent = NodeAgent(args, api)
    runners = [
        web.AppRunner(kubelet_api.create_app(agent.store, args.platform_url), access_log=None, shutdown_timeout=2.0),
        web.AppRunner(metrics_api.create_app(agent.store), access_log=None, shutdown_timeout=2.0),
    ]
    sites = [
        (args.address, args.port, _tls(args.cert, args.key, args.ca, ssl.CERT_REQUIRED)),
        (
            args.metrics_address,
            args.metrics_port,
            _tls(args.metrics_cert, args.metrics_key, args.front_proxy_ca, ssl.CERT_OPTIONAL),
        ),
    ]
    for runner, (host, port, tls) in zip(runners, sites, strict=True):
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        log.info("serving https://%s:%s", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(forever("node heartbeat", agent.heartbeats)),
        asyncio.create_task(forever("pod watch", agent.watch_pods)),
        asyncio.create_task(forever("behaviour watch", agent.watch_rules)),
        asyncio.create_task(forever("pod sync", agent.sync)),
    ]
    await stop.wait()
    log.info("stopping")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for runner in runners:
        await runner.cleanup()
    await api.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.k8s.node", description=__doc__.splitlines()[0])
    for flag in ("kubeconfig", "name", "address", "cert", "key", "ca", "metrics-address", "metrics-cert"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("--metrics-key", required=True)
    parser.add_argument("--front-proxy-ca", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--platform-url", help="the platform double, whose security record the API pods log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
