"""The simulated node agent against a real control plane (etcd, kube-apiserver, controller-manager, scheduler)
brought up by the sandbox's own KubernetesComponent on private ports; everything goes through the API server
with kubernetes_asyncio (pods, logs, exec over WebSocket, metrics.k8s.io through the aggregator).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.stream import WsApiClient

from sandbox.config import SandboxSettings, SandboxState
from sandbox.k8s import seed
from sandbox.k8s.behaviour import (
    BEHAVIOUR_ANNOTATION,
    CRASH_PERIOD_S,
    READY_AFTER_ANNOTATION,
    RULES_CONFIGMAP,
    RULES_NAMESPACE,
    Behaviour,
    PodSim,
    Rules,
    resolve,
)
from sandbox.k8s.controlplane import NODE_NAME, KubernetesComponent
from sandbox.k8s.logs import LogQuery, render
from sandbox.k8s.platform_feed import PlatformFeed
from tests.conftest import free_port, loopback_cidr

NS = "node-test"
API_IMAGE = "ghcr.io/genspark/ai-multimodel-api:v2.3.0"
BROKEN_IMAGE = "ghcr.io/genspark/ai-multimodel-api:broken"
POD_CIDR = ipaddress.ip_network("127.65.0.0/16")
BASE_RULES = {"crashloop": ["worker"], "error_logs": ["api"], "failing_images": ["*:broken"]}
T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesComponent]:
    """A control plane and the node agent. The production objects are seeded and tested elsewhere; this module
    needs only the plumbing (RBAC, the metrics APIService), so the production seeding is skipped."""
    settings = SandboxSettings(
        home=tmp_path_factory.mktemp("k8s-node"),
        k8s_api_port=free_port(),
        k8s_etcd_port=free_port(span=12),
        k8s_kubelet_port=free_port(),
        k8s_metrics_port=free_port(),
        k8s_service_cidr=loopback_cidr(),
    )
    component = KubernetesComponent(settings, SandboxState(settings.home))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(seed, "seed_production", lambda *a, **k: None, raising=False)
        mp.setattr(seed, "wait_for_production", lambda *a, **k: None, raising=False)
        try:
            component.up()
            yield component
        finally:
            component.down()


@pytest.fixture(scope="module")
async def api(cluster: KubernetesComponent) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.admin_kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        await _ensure_metrics_route(client.CoreV1Api(api_client))
        yield api_client


async def _ensure_metrics_route(core: client.CoreV1Api) -> None:
    """The aggregator reports a ClusterIP APIService Available only when its Service has Endpoints, and the API
    server refuses loopback endpoint addresses; it dials the ClusterIP anyway, so a placeholder address does.
    (A no-op once the seeding creates them.)"""
    try:
        service = await core.read_namespaced_service("metrics-server", "kube-system")
    except ApiException:
        return
    if service.spec.type != "ClusterIP":
        return
    port = service.spec.ports[0]
    endpoints = {
        "metadata": {"name": "metrics-server", "namespace": "kube-system"},
        "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"name": port.name, "port": port.port}]}],
    }
    try:
        await core.create_namespaced_endpoints("kube-system", endpoints)
    except ApiException as err:
        if err.status != 409:
            raise


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except ApiException as err:
            last = err
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s:.0f}s (last error: {last})")


def _deployment(
    name: str, image: str, replicas: int, annotations: dict[str, str] | None = None, namespace: str = NS
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 15,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
                        }
                    ],
                },
            },
        },
    }


async def _pods(core: client.CoreV1Api, app: str, namespace: str = NS) -> list[Any]:
    return list((await core.list_namespaced_pod(namespace, label_selector=f"app={app}")).items)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


async def _available(apps: client.AppsV1Api, name: str) -> bool:
    d = await apps.read_namespaced_deployment(name, NS)
    s = d.status
    return bool(
        s.observed_generation == d.metadata.generation
        and s.updated_replicas == d.spec.replicas
        and s.available_replicas == d.spec.replicas
        and not s.unavailable_replicas
        and (s.replicas or 0) == d.spec.replicas
    )


async def _set_rules(core: client.CoreV1Api, rules: dict[str, Any]) -> None:
    body = {
        "metadata": {"name": RULES_CONFIGMAP, "namespace": RULES_NAMESPACE},
        "data": {"rules.json": json.dumps(rules)},
    }
    try:
        await core.replace_namespaced_config_map(RULES_CONFIGMAP, RULES_NAMESPACE, body)
    except ApiException as err:
        if err.status != 404:
            raise
        await core.create_namespaced_config_map(RULES_NAMESPACE, body)


@pytest.fixture(scope="module")
async def workload(api: client.ApiClient) -> AsyncIterator[client.ApiClient]:
    """Namespace ``node-test`` with Deployment ``api`` (2 replicas) Available; the behaviour rules name a crash
    looping app, an app that logs errors and a broken image tag."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    await _set_rules(core, BASE_RULES)
    await core.create_namespace({"metadata": {"name": NS}})
    await apps.create_namespaced_deployment(NS, _deployment("api", API_IMAGE, 2))
    await wait_for(lambda: _available(apps, "api"), 30, "Deployment api available")
    yield api


# ------------------------------------------------------------------------------------- pure (no cluster)
def _pod(app: str, image: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta = {"name": f"{app}-1", "namespace": NS, "uid": f"uid-{app}", "labels": {"app": app}}
    container = {"name": app, "image": image, "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}
    return {"metadata": {**meta, "annotations": annotations or {}}, "spec": {"containers": [container]}}


def test_rules_and_annotations_resolve_per_container() -> None:
    rules = Rules.from_configmap({"rules.json": json.dumps({**BASE_RULES, "slow_ready_seconds": {"api": 20}})})
    assert resolve(_pod("api", BROKEN_IMAGE), {"image": BROKEN_IMAGE}, rules).reason == "image"
    healthy = resolve(_pod("api", API_IMAGE), {"image": API_IMAGE}, rules)
    assert (healthy.crash, healthy.error_logs, healthy.ready_after_s) == (False, True, 20.0)
    flagged = _pod("web", API_IMAGE, {BEHAVIOUR_ANNOTATION: "crashloop, error-logs", READY_AFTER_ANNOTATION: "9"})
    assert resolve(flagged, {"image": API_IMAGE}, rules) == Behaviour(True, "crashloop", 9.0, True)
    with pytest.raises(ValueError):
        Rules.from_configmap({"rules.json": '{"crashloops": ["typo"]}'})


def test_crash_loop_history_and_logs_are_deterministic() -> None:
    t0 = 1_700_000_000.0
    sim = PodSim.create(_pod("api", API_IMAGE), "127.65.0.9", Rules(), t0)
    (c,) = sim.containers.values()
    assert c.instance(t0 + 60, back=1) is None and c.ready(t0)
    c.apply(
        resolve(_pod("api", API_IMAGE, {BEHAVIOUR_ANNOTATION: "crashloop"}), {"image": API_IMAGE}, Rules()), t0 + 60
    )
    assert c.restart_count(t0 + 60) == 1 and c.restart_count(t0 + 60 + 3 * CRASH_PERIOD_S) == 4
    status = c.status(sim.name, NS, sim.uid, t0 + 70)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff" and not status["ready"]
    healthy_run = c.instance(t0 + 61, back=1)
    assert healthy_run is not None and healthy_run.finished == t0 + 60
    full = render(c, "api", healthy_run, t0 + 61, LogQuery())
    assert full == render(c, "api", healthy_run, t0 + 61, LogQuery())  # same bytes every time
    lines = full.decode().splitlines()
    assert lines[0].startswith("INFO starting api") and len(lines) > 30
    assert render(c, "api", healthy_run, t0 + 61, LogQuery(tail_lines=4)).decode().splitlines() == lines[-4:]
    assert len(render(c, "api", healthy_run, t0 + 61, LogQuery(limit_bytes=10))) == 10
    recent = render(c, "api", healthy_run, t0 + 61, LogQuery(since=t0 + 50, timestamps=True)).decode().splitlines()
    assert 0 < len(recent) < len(lines) and all(line[:19] >= "2023-11-14T22:14:10" for line in recent)
    crashed = c.instance(t0 + 70)
    assert crashed is not None and crashed.crashed
    assert render(c, "api", crashed, t0 + 70, LogQuery()).decode().splitlines()[-1].startswith("FATAL")


def test_the_api_pods_log_the_platform_doubles_security_record_once_across_the_pods() -> None:
    t0 = 1_700_000_000.0

    def stamp(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()

    feed = PlatformFeed("http://127.0.0.1:9", fetched=t0)
    feed.events = [
        {"type": "unauthorized", "source_ip": "203.0.113.50", "at": stamp(t0 + s), "detail": "invalid API key"}
        for s in range(1, 31)
    ] + [{"type": "blocked", "source_ip": "203.0.113.50", "at": stamp(t0 + 31), "detail": "Multiple attempts"}]
    feed.anomalies = [
        {"kind": "api_key_traffic_spike", "detected_at": stamp(t0), "api_key_id": "key-1", "user_id": "user-008"}
    ]
    peers = ["api-a", "api-b", "api-c"]
    shares = [feed.lines(pod, peers, t0, t0 + 60) for pod in peers]
    assert all(shares) and all(s == sorted(s, key=lambda e: -e[0]) for s in shares)  # newest first
    lines = [text for share in shares for _, text in share]
    assert sum("UNAUTHORIZED" in line and "ip=203.0.113.50" in line for line in lines) == 30  # each once
    assert sum(line.startswith("WARN BLOCKED ip=203.0.113.50") for line in lines) == 1
    threats = [line for line in lines if "THREAT api_key=key-1 user=user-008 ip=198.51.100." in line]
    flagged = [line for line in lines if "content filter flagged prompt" in line]
    assert 5 <= len(threats) <= 30 and flagged and all("category=" in line for line in flagged)
    assert feed.lines("api-gone", peers, t0, t0 + 60) == []

    sim = PodSim.create(_pod("api", API_IMAGE), "127.65.0.9", Rules(), t0)
    (c,) = sim.containers.values()
    run = c.instance(t0 + 61)
    assert run is not None
    body = render(c, "api", run, t0 + 61, LogQuery(timestamps=True), shares[0]).decode().splitlines()
    assert body == sorted(body) and sum("WARN" in line and "ip=" in line for line in body) == len(shares[0])


# --------------------------------------------------------------------------------------------------- node
async def test_node_registered_ready_with_lease(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    node = await wait_for(lambda: core.read_node(NODE_NAME), 20, "node registered")
    labels = node.metadata.labels
    assert labels["kubernetes.io/hostname"] == NODE_NAME and labels["node-role.kubernetes.io/worker"] == ""
    assert (labels["kubernetes.io/os"], labels["kubernetes.io/arch"]) == ("linux", "amd64")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses == {"InternalIP": "127.0.0.1", "Hostname": NODE_NAME}
    assert node.status.capacity == {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    info = node.status.node_info
    assert (info.kubelet_version, info.container_runtime_version) == ("v1.20.2", "sandbox://1.0")
    conditions = {c.type: (c.status, c.reason) for c in node.status.conditions}
    assert conditions["Ready"] == ("True", "KubeletReady")
    assert {conditions[k][0] for k in ("MemoryPressure", "DiskPressure", "PIDPressure")} == {"False"}
    lease = await wait_for(
        lambda: client.CoordinationV1Api(api).read_namespaced_lease(NODE_NAME, "kube-node-lease"), 20, "lease"
    )
    assert lease.spec.holder_identity == NODE_NAME


# --------------------------------------------------------------------------------------------------- pods
async def test_deployment_pods_run_and_are_ready(workload: client.ApiClient) -> None:
    pods = await _pods(client.CoreV1Api(workload), "api")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Running" and _ready(pod)
        assert pod.status.host_ip == "127.0.0.1" and ipaddress.ip_address(pod.status.pod_ip) in POD_CIDR
        assert {c.type for c in pod.status.conditions} == {"PodScheduled", "Initialized", "ContainersReady", "Ready"}
        (status,) = pod.status.container_statuses
        assert status.ready and status.started and status.restart_count == 0
        assert status.container_id.startswith("sandbox://") and status.state.running.started_at
    assert len({p.status.pod_ip for p in pods}) == 2


async def test_logs_through_the_apiserver(workload: client.ApiClient) -> None:
    core = client.CoreV1Api(workload)
    pod = (await _pods(core, "api"))[0].metadata.name

    async def requests_logged() -> str | None:  # a fresh container has logged its start-up lines only
        tail = await core.read_namespaced_pod_log(pod, NS, tail_lines=5)
        return tail if "starting" not in tail and len(tail.splitlines()) == 5 else None

    tail = await wait_for(requests_logged, 30, "five request lines")
    lines = tail.splitlines()
    assert len(lines) == 5 and all(line.split()[0] in ("INFO", "WARN", "ERROR") for line in lines)
    assert "model=" in tail
    stamped = await core.read_namespaced_pod_log(pod, NS, tail_lines=3, timestamps=True)
    assert [line.split(" ", 1)[1] for line in stamped.splitlines()] == lines[-3:]
    everything = await core.read_namespaced_pod_log(pod, NS)
    assert everything.startswith("INFO starting api version=v2.3.0") and everything.endswith(tail)
    assert len(await core.read_namespaced_pod_log(pod, NS, since_seconds=1)) < len(everything)
    assert len(await core.read_namespaced_pod_log(pod, NS, limit_bytes=50)) == 50

    async def errors() -> bool:  # the rules say "api" logs errors
        return "ERROR " in await core.read_namespaced_pod_log(pod, NS, since_seconds=60)

    await wait_for(errors, 30, "ERROR lines in the api's log")
    with pytest.raises(ApiException) as err:
        await core.read_namespaced_pod_log(pod, NS, previous=True)
    assert err.value.status == 400 and "previous terminated container" in err.value.body


async def test_exec_through_the_apiserver(workload: client.ApiClient, cluster: KubernetesComponent) -> None:
    pod = (await _pods(client.CoreV1Api(workload), "api"))[0].metadata.name
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.admin_kubeconfig), client_configuration=configuration)
    async with WsApiClient(configuration) as ws:
        core = client.CoreV1Api(api_client=ws)
        out = await core.connect_get_namespaced_pod_exec(
            pod, NS, command=["echo", "hi"], stdout=True, stderr=True, stdin=False, tty=False
        )
        assert out == "hi\n"
        async with await core.connect_get_namespaced_pod_exec(
            pod, NS, command=["sh", "-c", "echo oops >&2; exit 3"], stdout=True, stderr=True, _preload_content=False
        ) as conn:
            frames = [bytes(msg.data) async for msg in conn]
        assert b"\x02oops\n" in frames
        assert WsApiClient.parse_error_data(frames[-1][1:]) == 3


async def test_metrics_through_the_aggregator(workload: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(workload)

    async def pod_metrics() -> dict[str, Any] | None:
        found = await custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", NS, "pods")
        found["items"] = [i for i in found["items"] if i["metadata"]["name"].startswith("api-")]  # other tests' apps
        return found if len(found["items"]) >= 2 else None

    metrics = await wait_for(pod_metrics, 60, "metrics.k8s.io through the API server")
    assert metrics["kind"] == "PodMetricsList"
    for item in metrics["items"]:
        assert item["kind"] == "PodMetrics" and item["window"] == "30s" and item["metadata"]["namespace"] == NS
        (container,) = item["containers"]
        cpu, memory = container["usage"]["cpu"], container["usage"]["memory"]
        assert cpu.endswith("n") and 20e6 < int(cpu[:-1]) < 200e6  # 10-100% of the 200m request
        assert memory.endswith("Ki") and 64 * 1024 < int(memory[:-2]) < 256 * 1024
    node = await custom.get_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes", NODE_NAME)
    assert node["kind"] == "NodeMetrics" and node["usage"]["cpu"].endswith("n")
    one = metrics["items"][0]["metadata"]["name"]
    single = await custom.get_namespaced_custom_object("metrics.k8s.io", "v1beta1", NS, "pods", one)
    assert single["metadata"]["name"] == one


async def test_usage_rules_and_stats_summary(workload: client.ApiClient) -> None:
    """On a Deployment of its own (``burner``), so the grown memory never shows in another test's metrics."""
    core, custom = client.CoreV1Api(workload), client.CustomObjectsApi(workload)
    apps = client.AppsV1Api(workload)
    await _set_rules(
        core, {**BASE_RULES, "cpu_millicores": {"burner": 900}, "memory_growth_mib_per_min": {"burner": 600}}
    )
    await apps.create_namespaced_deployment(NS, _deployment("burner", API_IMAGE, 2))
    await wait_for(lambda: _available(apps, "burner"), 30, "Deployment burner available")

    async def usage() -> dict[str, tuple[float, float]]:
        items = (await custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", NS, "pods"))["items"]
        cpu_mem = [
            (i["metadata"]["name"], i["containers"][0]["usage"])
            for i in items
            if i["metadata"]["name"].startswith("burner-")
        ]
        return {name: (int(u["cpu"][:-1]) / 1e6, int(u["memory"][:-2]) / 1024) for name, u in cpu_mem}

    async def burning() -> dict[str, tuple[float, float]] | None:
        found = await usage()
        return found if len(found) == 2 and all(850 < cpu < 950 for cpu, _ in found.values()) else None

    before = await wait_for(burning, 20, "cpu_millicores applied")

    async def grown() -> bool:  # MiB: 600 MiB/min is 10 MiB/s, so about 2 s
        after = await usage()
        return all(after[name][1] - before[name][1] >= 20 for name in before)

    await wait_for(grown, 15, "memory_growth_mib_per_min applied (+20 MiB in every pod)")
    await _set_rules(core, BASE_RULES)

    response = await core.connect_get_node_proxy_with_path(NODE_NAME, "stats/summary", _preload_content=False)
    summary = json.loads(await response.read())
    assert summary["node"]["nodeName"] == NODE_NAME and summary["node"]["cpu"]["usageNanoCores"] > 0
    ours = [p for p in summary["pods"] if p["podRef"]["namespace"] == NS]
    assert ours and all(p["containers"][0]["memory"]["workingSetBytes"] > 0 for p in ours)
    await apps.delete_namespaced_deployment("burner", NS)


async def test_kubelet_api_requires_a_cluster_client_certificate(cluster: KubernetesComponent) -> None:
    pki = cluster.pki
    url = f"https://127.0.0.1:{cluster.settings.k8s_kubelet_port}/healthz"
    anonymous = ssl.create_default_context(cafile=str(pki.dir / "ca.crt"))
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(url, ssl=anonymous) as response:
            await response.read()
    trusted = ssl.create_default_context(cafile=str(pki.dir / "ca.crt"))
    paths = pki.path("apiserver-kubelet-client")
    trusted.load_cert_chain(str(paths.cert), str(paths.key))
    async with aiohttp.ClientSession() as http, http.get(url, ssl=trusted) as response:
        assert (response.status, await response.text()) == (200, "ok")


async def _resource_metrics(cluster: KubernetesComponent, path: str = "resource") -> dict[str, list[Any]]:
    """The kubelet's ``/metrics/<path>`` (``resource``, ``cadvisor``), fetched with Prometheus's client certificate
    and parsed by prometheus_client's own text parser (samples by metric family name)."""
    from prometheus_client.parser import text_string_to_metric_families

    pki = cluster.pki
    tls = ssl.create_default_context(cafile=str(pki.dir / "ca.crt"))
    tls.load_cert_chain(str(pki.path("prometheus").cert), str(pki.path("prometheus").key))
    url = f"https://127.0.0.1:{cluster.settings.k8s_kubelet_port}/metrics/{path}"
    async with aiohttp.ClientSession() as http, http.get(url, ssl=tls) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def test_kubelet_resource_metrics_in_prometheus_format(
    workload: client.ApiClient, cluster: KubernetesComponent
) -> None:
    """Per container: CPU as a counter that only grows, the working set; the node's totals; as the 1.20 kubelet."""
    core = client.CoreV1Api(workload)
    pods = {p.metadata.name for p in await _pods(core, "api")}
    first = await _resource_metrics(cluster)
    ours = {s.labels["pod"]: s for s in first["container_memory_working_set_bytes"] if s.labels["namespace"] == NS}
    assert pods <= set(ours) and all(ours[p].value > 0 and ours[p].labels["container"] == "api" for p in pods)
    cpu = {s.labels["pod"]: s.value for s in first["container_cpu_usage_seconds"] if s.name.endswith("_total")}
    assert first["node_memory_working_set_bytes"][0].value > 0 and first["scrape_error"][0].value == 0

    async def cpu_grew() -> bool:
        later = await _resource_metrics(cluster)
        now = {s.labels["pod"]: s.value for s in later["container_cpu_usage_seconds"] if s.name.endswith("_total")}
        return all(now[p] > cpu[p] for p in pods)

    await wait_for(cpu_grew, 10, "container CPU seconds growing between scrapes")


async def test_kubelet_cadvisor_serves_the_memory_limits(
    workload: client.ApiClient, cluster: KubernetesComponent
) -> None:
    """``/metrics/cadvisor``'s ``container_spec_memory_limit_bytes`` (what HighMemoryUsage divides by): a container's
    limit in bytes, 0 for a container without one (cAdvisor's "none"), as the pods' specs say."""
    core, apps = client.CoreV1Api(workload), client.AppsV1Api(workload)
    limited = _deployment("capped", API_IMAGE, 1)
    limited["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {"memory": "768Mi"}
    await apps.create_namespaced_deployment(NS, limited)
    try:
        await wait_for(lambda: _available(apps, "capped"), 30, "Deployment capped available")
        pods = {p.metadata.name: p.metadata.labels["app"] for p in (await core.list_namespaced_pod(NS)).items}
        limits = {
            s.labels["pod"]: s.value
            for s in (await _resource_metrics(cluster, "cadvisor"))["container_spec_memory_limit_bytes"]
            if s.labels["namespace"] == NS
        }
        assert {pods.get(p) for p in limits if limits[p] == 768 * 2**20} == {"capped"}
        assert {pods.get(p) for p in limits if limits[p] == 0} >= {"api"}  # requests only: no limit
    finally:
        await apps.delete_namespaced_deployment("capped", NS)


async def test_prometheus_scrapes_the_kubelet(
    workload: client.ApiClient, cluster: KubernetesComponent, tmp_path: Path
) -> None:
    """The sandbox's Prometheus configuration, run by Debian's prometheus: the kubelet job is up over the
    kubelet's client-certificate TLS and the API pods' working set is queryable by pod."""
    import shutil

    import httpx

    from sandbox.components import PrometheusComponent

    if shutil.which("prometheus") is None:
        pytest.fail("not installed: prometheus (apt-get install prometheus; ./dev does it)")
    settings = cluster.settings.model_copy(update={"prometheus_port": free_port(), "alertmanager_port": free_port()})
    component = PrometheusComponent(settings, SandboxState(settings.home))
    jobs = [j["job_name"] for j in component.config()["scrape_configs"]]
    assert "kubelet" in jobs
    component.up()
    try:
        core = client.CoreV1Api(workload)
        pods = {p.metadata.name for p in await _pods(core, "api")}

        async def kubelet_up() -> Any:
            active = httpx.get(f"{component.address}/api/v1/targets").json()["data"]["activeTargets"]
            return [t for t in active if t["labels"]["job"] == "kubelet" and t["health"] == "up"]

        await wait_for(kubelet_up, 30, "the kubelet target up in Prometheus")

        async def working_set() -> set[str]:
            query = f'container_memory_working_set_bytes{{namespace="{NS}",container="api"}} > 0'
            result = httpx.get(f"{component.address}/api/v1/query", params={"query": query}).json()["data"]["result"]
            found = {r["metric"]["pod"] for r in result}
            return found if pods <= found else set()

        await wait_for(working_set, 30, "the API pods' working set queryable in Prometheus")
    finally:
        component.down()


async def test_crashloop_rule(workload: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(workload), client.AppsV1Api(workload)
    await apps.create_namespaced_deployment(NS, _deployment("worker", "ghcr.io/genspark/worker:v1", 1))

    async def restarted() -> Any:
        pods = await _pods(core, "worker")
        statuses = pods[0].status.container_statuses if pods else None
        return pods[0] if statuses and statuses[0].restart_count >= 1 else None

    pod = await wait_for(restarted, 30, "a restart of the crash-looping worker")
    (status,) = pod.status.container_statuses
    assert pod.status.phase == "Running" and not _ready(pod) and not status.ready
    assert status.state.waiting.reason == "CrashLoopBackOff"
    assert (status.last_state.terminated.exit_code, status.last_state.terminated.reason) == (1, "Error")
    previous = await core.read_namespaced_pod_log(pod.metadata.name, NS, previous=True)
    assert previous.splitlines()[-1].startswith("FATAL")
    events = await core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod.metadata.name}")
    assert "BackOff" in {e.reason for e in events.items}
    await apps.delete_namespaced_deployment("worker", NS)


async def test_failing_image_stalls_the_rollout(workload: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(workload), client.AppsV1Api(workload)
    old = {p.metadata.name for p in await _pods(core, "api")}
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "api", "image": BROKEN_IMAGE}]}}}}
    await apps.patch_namespaced_deployment("api", NS, patch)

    async def stalled() -> bool:
        d = await apps.read_namespaced_deployment("api", NS)
        return any(c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" for c in d.status.conditions)

    await wait_for(stalled, 60, "ProgressDeadlineExceeded")
    pods = await _pods(core, "api")
    assert all(_ready(p) for p in pods if p.metadata.name in old) and old <= {p.metadata.name for p in pods}
    (new,) = [p for p in pods if p.metadata.name not in old]
    assert new.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
    patch["spec"]["template"]["spec"]["containers"][0]["image"] = API_IMAGE  # roll back
    await apps.patch_namespaced_deployment("api", NS, patch)
    await wait_for(lambda: _available(apps, "api"), 30, "rollback")


async def test_deleted_pod_is_replaced(workload: client.ApiClient) -> None:
    core = client.CoreV1Api(workload)
    victim = (await _pods(core, "api"))[0]
    await core.delete_namespaced_pod(victim.metadata.name, NS)  # default 30 s grace: the node finishes it

    async def replaced() -> bool:
        pods = await _pods(core, "api")
        names = {p.metadata.name for p in pods}
        return victim.metadata.name not in names and len(pods) == 2 and all(_ready(p) for p in pods)

    await wait_for(replaced, 20, "the pod gone and replaced")


async def test_slow_ready(workload: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(workload), client.AppsV1Api(workload)
    annotations = {READY_AFTER_ANNOTATION: "6"}
    await apps.create_namespaced_deployment(NS, _deployment("slow", API_IMAGE, 1, annotations))

    async def running() -> Any:
        pods = await _pods(core, "slow")
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    pod = await wait_for(running, 20, "slow pod running")
    assert not _ready(pod)
    pod = await wait_for(lambda: _ready_pod(core, pod), 20, "slow pod ready")
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    started = pod.status.container_statuses[0].state.running.started_at
    assert (ready.last_transition_time - started).total_seconds() >= 5


async def _ready_pod(core: client.CoreV1Api, pod: Any) -> Any:
    fresh = await core.read_namespaced_pod(pod.metadata.name, NS)
    return fresh if _ready(fresh) else None


async def test_annotation_crashloop_and_namespace_deletion(api: client.ApiClient) -> None:
    """In a namespace of its own: deleting it takes nothing from the other tests."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    namespace = f"{NS}-deleted"
    await _set_rules(core, BASE_RULES)
    await core.create_namespace({"metadata": {"name": namespace}})
    await apps.create_namespaced_deployment(namespace, _deployment("api", API_IMAGE, 1, namespace=namespace))

    async def running() -> Any:
        pods = await _pods(core, "api", namespace)
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    pod = await wait_for(running, 30, f"a running pod in {namespace}")
    await core.patch_namespaced_pod(
        pod.metadata.name, namespace, {"metadata": {"annotations": {BEHAVIOUR_ANNOTATION: "crashloop"}}}
    )

    async def crashing() -> bool:
        fresh = await core.read_namespaced_pod(pod.metadata.name, namespace)
        return fresh.status.container_statuses[0].state.waiting is not None

    await wait_for(crashing, 10, "the annotated pod crash looping")
    await core.delete_namespace(namespace)

    async def gone() -> bool:
        return not (await core.list_namespaced_pod(namespace)).items

    await wait_for(gone, 30, "every pod of the deleted namespace gone")


async def test_node_stays_ready(api: client.ApiClient) -> None:
    """Past the controller's 40 s node-monitor grace period the node is still Ready and untainted, its heartbeat
    and lease renewed all along. Polled: a NotReady or tainted node fails at once, and the test waits only for
    what the other tests have not already spent of the grace period (usually nothing)."""
    core, coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)

    def node_taints(node: Any) -> list[Any]:
        return [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]

    async def settled() -> Any:  # a node starts out tainted not-ready until the controller first sees it Ready
        node = await core.read_node(NODE_NAME)
        ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
        return node if ready is not None and ready.status == "True" and not node_taints(node) else None

    node = await wait_for(settled, 30, "node registered, Ready and untainted")
    created = node.metadata.creation_timestamp.timestamp()
    renewals: set[float] = set()
    while True:
        node = await core.read_node(NODE_NAME)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True", f"the node went {ready.status}: {ready.reason} {ready.message}"
        assert time.time() - ready.last_heartbeat_time.timestamp() < 25
        assert not node_taints(node), node.spec.taints
        lease = await coordination.read_namespaced_lease(NODE_NAME, "kube-node-lease")
        assert time.time() - lease.spec.renew_time.timestamp() < 25
        renewals.add(lease.spec.renew_time.timestamp())
        if time.time() - created > 50 and len(renewals) >= 2:  # grace period (40 s) passed, lease kept renewed
            return
        await asyncio.sleep(0.5)


def test_agent_log_is_clean(cluster: KubernetesComponent) -> None:
    """The agent logs to the component's log file and reports no failures."""
    log = Path(cluster.settings.home) / "logs" / "k8s-node.log"
    deadline = time.monotonic() + 20
    while "registered node" not in (text := log.read_text()):  # the agent may still be starting
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.2)
    assert "Traceback" not in text
