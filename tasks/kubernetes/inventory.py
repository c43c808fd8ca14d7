"""What ``kubectl get`` shows: pods (wide), nodes, events, services, ingresses, HPAs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import (
    CoreV1Event,
    V1HorizontalPodAutoscaler,
    V1Ingress,
    V1Node,
    V1Pod,
    V1Service,
)
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.retry import read_task
from tasks.kubernetes._api import Condition, age_s, kube, namespace_of, params, pod_is_ready


# ------------------------------------------------------------------------------------------------------ pods
class PodInfo(BaseModel):
    """One line of ``kubectl get pods -o wide``, plus the images and why a container is not running."""

    name: str
    namespace: str
    phase: str
    status: str = Field(description="kubectl's STATUS column: CrashLoopBackOff, Terminating, Running, ...")
    ready: str = Field(description="ready containers / containers, e.g. 1/1")
    is_ready: bool
    restarts: int
    node: str | None = None
    pod_ip: str | None = None
    age_s: int | None = None
    created_at: datetime | None = None
    images: list[str] = Field(default_factory=list)
    reason: str | None = Field(default=None, description="waiting/terminated reason of a container, if any")
    last_termination_reason: str | None = Field(default=None, description="e.g. OOMKilled, Error")
    labels: dict[str, str] = Field(default_factory=dict)


def pod_info(pod: V1Pod) -> PodInfo:
    meta, spec, status = pod.metadata, pod.spec, pod.status
    statuses = (status.container_statuses if status else None) or []
    reason = None
    last_reason = None
    for cs in statuses:
        state = cs.state
        if state and state.waiting and state.waiting.reason:
            reason = reason or state.waiting.reason
        elif state and state.terminated and state.terminated.reason:
            reason = reason or state.terminated.reason
        if cs.last_state and cs.last_state.terminated and cs.last_state.terminated.reason:
            last_reason = last_reason or cs.last_state.terminated.reason
    phase = (status.phase if status else None) or "Unknown"
    shown = "Terminating" if meta.deletion_timestamp else (reason or (status.reason if status else None) or phase)
    containers = (spec.containers if spec else None) or []
    return PodInfo(
        name=meta.name,
        namespace=meta.namespace,
        phase=phase,
        status=shown,
        ready=f"{sum(1 for cs in statuses if cs.ready)}/{len(containers)}",
        is_ready=pod_is_ready(pod),
        restarts=sum(cs.restart_count or 0 for cs in statuses),
        node=spec.node_name if spec else None,
        pod_ip=status.pod_ip if status else None,
        age_s=age_s(meta.creation_timestamp),
        created_at=meta.creation_timestamp,
        images=[c.image for c in containers],
        reason=reason,
        last_termination_reason=last_reason,
        labels=meta.labels or {},
    )


@read_task
async def list_pods(
    cluster: KubernetesCluster, namespace: str | None = None, label_selector: str | None = None
) -> list[PodInfo]:
    """``kubectl get pods -n <ns> -o wide [-l <selector>]``, sorted by name."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing pods in {ns}") as k:
        pods = await k.core.list_namespaced_pod(ns, **params(label_selector=label_selector))
    return sorted((pod_info(p) for p in pods.items), key=lambda p: p.name)


# ----------------------------------------------------------------------------------------------------- nodes
_HEALTHY = {"Ready": "True"}  # every other condition (MemoryPressure, DiskPressure, PIDPressure, ...) is healthy False


class NodeInfo(BaseModel):
    """``kubectl get nodes -o wide`` and the Conditions of ``kubectl describe nodes``."""

    name: str
    ready: bool
    roles: list[str] = Field(default_factory=list)
    unschedulable: bool = False
    conditions: list[Condition] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="conditions not in their healthy state")
    addresses: dict[str, str] = Field(default_factory=dict, description="InternalIP, Hostname, ...")
    capacity: dict[str, str] = Field(default_factory=dict)
    allocatable: dict[str, str] = Field(default_factory=dict)
    kubelet_version: str | None = None
    os_image: str | None = None
    container_runtime: str | None = None
    age_s: int | None = None


def node_info(node: V1Node) -> NodeInfo:
    status, info = node.status, node.status.node_info if node.status else None
    conditions = [Condition.of(c) for c in (status.conditions if status else None) or []]
    labels = node.metadata.labels or {}
    return NodeInfo(
        name=node.metadata.name,
        ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
        roles=sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")),
        unschedulable=bool(node.spec and node.spec.unschedulable),
        conditions=conditions,
        problems=[f"{c.type}={c.status}" for c in conditions if c.status != _HEALTHY.get(c.type, "False")],
        addresses={a.type: a.address for a in (status.addresses if status else None) or []},
        capacity=dict((status.capacity if status else None) or {}),
        allocatable=dict((status.allocatable if status else None) or {}),
        kubelet_version=info.kubelet_version if info else None,
        os_image=info.os_image if info else None,
        container_runtime=info.container_runtime_version if info else None,
        age_s=age_s(node.metadata.creation_timestamp),
    )


@read_task
async def list_nodes(cluster: KubernetesCluster, label_selector: str | None = None) -> list[NodeInfo]:
    """``kubectl get nodes -o wide`` with each node's conditions, capacity and allocatable."""
    async with kube(cluster, "listing nodes") as k:
        nodes = await k.core.list_node(**params(label_selector=label_selector))
    return sorted((node_info(n) for n in nodes.items), key=lambda n: n.name)


# ---------------------------------------------------------------------------------------------------- events
class EventInfo(BaseModel):
    type: str
    reason: str | None = None
    message: str | None = None
    object: str = Field(description="Kind/name of the object it is about")
    count: int = 1
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    source: str | None = None


def event_info(e: CoreV1Event) -> EventInfo:
    last = e.last_timestamp or e.event_time or e.first_timestamp or e.metadata.creation_timestamp
    source = (e.source.component if e.source else None) or e.reporting_component
    return EventInfo(
        type=e.type or "Normal",
        reason=e.reason,
        message=e.message,
        object=f"{e.involved_object.kind}/{e.involved_object.name}",
        count=e.count or 1,
        first_seen=e.first_timestamp or e.event_time or last,
        last_seen=last,
        source=source or None,
    )


@read_task
async def list_events(
    cluster: KubernetesCluster,
    namespace: str | None = None,
    *,
    warnings_only: bool = False,
    last: int | None = None,
    involved_object: str | None = None,
) -> list[EventInfo]:
    """``kubectl get events --sort-by=... | tail -<last>``: oldest first, by last/event/first timestamp.

    ``warnings_only`` keeps type=Warning; ``involved_object`` keeps the events of the object of that name.
    """
    ns = namespace_of(cluster, namespace)
    fields = ["type=Warning"] if warnings_only else []
    if involved_object:
        fields.append(f"involvedObject.name={involved_object}")
    async with kube(cluster, f"listing events in {ns}") as k:
        events = await k.core.list_namespaced_event(ns, **params(field_selector=",".join(fields) or None))
    infos = sorted((event_info(e) for e in events.items), key=lambda e: e.last_seen.timestamp() if e.last_seen else 0.0)
    return infos if last is None else infos[max(0, len(infos) - last) :]


# -------------------------------------------------------------------------------------------------- services
class ServiceInfo(BaseModel):
    name: str
    type: str
    cluster_ip: str | None = None
    external_ips: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list, description="as kubectl shows them: 8000/TCP, 80:30080/TCP")
    selector: dict[str, str] = Field(default_factory=dict)
    age_s: int | None = None


def service_info(s: V1Service) -> ServiceInfo:
    spec = s.spec
    ingress = (s.status.load_balancer.ingress if s.status and s.status.load_balancer else None) or []
    return ServiceInfo(
        name=s.metadata.name,
        type=spec.type or "ClusterIP",
        cluster_ip=spec.cluster_ip,
        external_ips=[*(spec.external_ips or []), *(i.ip or i.hostname for i in ingress)],
        ports=[
            f"{p.port}{':' + str(p.node_port) if p.node_port else ''}/{p.protocol or 'TCP'}" for p in spec.ports or []
        ],
        selector=spec.selector or {},
        age_s=age_s(s.metadata.creation_timestamp),
    )


@read_task
async def list_services(
    cluster: KubernetesCluster, namespace: str | None = None, label_selector: str | None = None
) -> list[ServiceInfo]:
    """``kubectl get services -n <ns>``."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing Services in {ns}") as k:
        services = await k.core.list_namespaced_service(ns, **params(label_selector=label_selector))
    return sorted((service_info(s) for s in services.items), key=lambda s: s.name)


# ------------------------------------------------------------------------------------------------- ingresses
class IngressTLS(BaseModel):
    hosts: list[str]
    secret_name: str | None = None


class IngressBackend(BaseModel):
    host: str | None = None
    path: str | None = None
    service: str | None = None
    port: str | None = None


class IngressInfo(BaseModel):
    name: str
    class_name: str | None = None
    hosts: list[str] = Field(default_factory=list)
    tls: list[IngressTLS] = Field(default_factory=list)
    backends: list[IngressBackend] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)
    annotations: dict[str, str] = Field(default_factory=dict)
    age_s: int | None = None


def _backend(host: str | None, path: str | None, backend: Any) -> IngressBackend:
    service = backend.service if backend else None
    port = service.port if service else None
    return IngressBackend(
        host=host,
        path=path,
        service=service.name if service else None,
        port=None if port is None else str(port.number or port.name),
    )


def ingress_info(i: V1Ingress) -> IngressInfo:
    spec = i.spec
    backends = [_backend(None, None, spec.default_backend)] if spec.default_backend else []
    for rule in spec.rules or []:
        for path in (rule.http.paths if rule.http else None) or []:
            backends.append(_backend(rule.host, path.path, path.backend))
    lb = (i.status.load_balancer.ingress if i.status and i.status.load_balancer else None) or []
    return IngressInfo(
        name=i.metadata.name,
        class_name=spec.ingress_class_name,
        hosts=[r.host for r in spec.rules or [] if r.host],
        tls=[IngressTLS(hosts=t.hosts or [], secret_name=t.secret_name) for t in spec.tls or []],
        backends=backends,
        addresses=[a.ip or a.hostname for a in lb],
        annotations=i.metadata.annotations or {},
        age_s=age_s(i.metadata.creation_timestamp),
    )


@read_task
async def list_ingresses(
    cluster: KubernetesCluster, namespace: str | None = None, label_selector: str | None = None
) -> list[IngressInfo]:
    """``kubectl get ingress -n <ns>``: hosts, TLS secrets, backends (networking.k8s.io/v1)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing Ingresses in {ns}") as k:
        ingresses = await k.networking.list_namespaced_ingress(ns, **params(label_selector=label_selector))
    return sorted((ingress_info(i) for i in ingresses.items), key=lambda i: i.name)


# ------------------------------------------------------------------------------------------------------ HPAs
class HPAInfo(BaseModel):
    """``kubectl get hpa``: autoscaling/v1, CPU only."""

    name: str
    target: str = Field(description="Kind/name it scales")
    min_replicas: int
    max_replicas: int
    current_replicas: int | None = None
    desired_replicas: int | None = None
    target_cpu_percent: int | None = None
    current_cpu_percent: int | None = None
    last_scale_time: datetime | None = None
    age_s: int | None = None


def hpa_info(h: V1HorizontalPodAutoscaler) -> HPAInfo:
    spec, status = h.spec, h.status
    return HPAInfo(
        name=h.metadata.name,
        target=f"{spec.scale_target_ref.kind}/{spec.scale_target_ref.name}",
        min_replicas=spec.min_replicas or 1,
        max_replicas=spec.max_replicas,
        current_replicas=status.current_replicas if status else None,
        desired_replicas=status.desired_replicas if status else None,
        target_cpu_percent=spec.target_cpu_utilization_percentage,
        current_cpu_percent=status.current_cpu_utilization_percentage if status else None,
        last_scale_time=status.last_scale_time if status else None,
        age_s=age_s(h.metadata.creation_timestamp),
    )


@read_task
async def list_hpas(cluster: KubernetesCluster, namespace: str | None = None) -> list[HPAInfo]:
    """``kubectl get hpa -n <ns>``."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing HorizontalPodAutoscalers in {ns}") as k:
        hpas = await k.autoscaling.list_namespaced_horizontal_pod_autoscaler(ns)
    return sorted((hpa_info(h) for h in hpas.items), key=lambda h: h.name)


# ----------------------------------------------------------------------------------------------- images
@read_task
async def list_deployment_images(cluster: KubernetesCluster, namespace: str | None = None) -> dict[str, list[str]]:
    """Every Deployment of the namespace and the images its pod template runs (init containers included)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing Deployments in {ns}") as k:
        deployments = await k.apps.list_namespaced_deployment(ns)
    images: dict[str, list[str]] = {}
    for dep in sorted(deployments.items, key=lambda d: d.metadata.name):
        spec = dep.spec.template.spec
        containers = [*(spec.init_containers or []), *(spec.containers or [])]
        images[dep.metadata.name] = list(dict.fromkeys(c.image for c in containers if c.image))
    return images
