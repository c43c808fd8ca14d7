"""``kubectl top pods/nodes``: resource usage from metrics.k8s.io/v1beta1 (metrics-server, or the sandbox's node)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.retry import read_task
from tasks.kubernetes._api import kube, namespace_of, params
from tasks.kubernetes.quantity import cpu_millicores, memory_bytes

GROUP, VERSION = "metrics.k8s.io", "v1beta1"
_WHY = "(is metrics-server, APIService v1beta1.metrics.k8s.io, available?)"

SortBy = Literal["cpu", "memory"]


class ContainerUsage(BaseModel):
    name: str
    cpu_m: int = Field(description="millicores")
    memory_bytes: int


class PodUsage(BaseModel):
    name: str
    namespace: str
    cpu_m: int = Field(description="millicores, summed over containers")
    memory_bytes: int
    containers: list[ContainerUsage] = Field(default_factory=list)
    timestamp: datetime | None = None


class NodeUsage(BaseModel):
    name: str
    cpu_m: int
    memory_bytes: int
    cpu_percent: float | None = Field(default=None, description="of allocatable, as kubectl top nodes shows it")
    memory_percent: float | None = None
    timestamp: datetime | None = None


def pod_usage(item: dict[str, Any]) -> PodUsage:
    containers = [
        ContainerUsage(
            name=c["name"],
            cpu_m=cpu_millicores(c.get("usage", {}).get("cpu", "0")),
            memory_bytes=memory_bytes(c.get("usage", {}).get("memory", "0")),
        )
        for c in item.get("containers") or []
    ]
    return PodUsage(
        name=item["metadata"]["name"],
        namespace=item["metadata"].get("namespace", ""),
        cpu_m=sum(c.cpu_m for c in containers),
        memory_bytes=sum(c.memory_bytes for c in containers),
        containers=containers,
        timestamp=item.get("timestamp"),
    )


def _percent(used: int, total: int | None) -> float | None:
    return round(100 * used / total, 1) if total else None


def node_usage(item: dict[str, Any], allocatable: dict[str, str] | None) -> NodeUsage:
    usage = item.get("usage") or {}
    cpu, memory = cpu_millicores(usage.get("cpu", "0")), memory_bytes(usage.get("memory", "0"))
    allocatable = allocatable or {}
    return NodeUsage(
        name=item["metadata"]["name"],
        cpu_m=cpu,
        memory_bytes=memory,
        cpu_percent=_percent(cpu, cpu_millicores(allocatable["cpu"]) if "cpu" in allocatable else None),
        memory_percent=_percent(memory, memory_bytes(allocatable["memory"]) if "memory" in allocatable else None),
        timestamp=item.get("timestamp"),
    )


def _sorted(items: list[Any], sort_by: SortBy | None) -> list[Any]:
    if sort_by is None:
        return sorted(items, key=lambda u: u.name)
    key = "cpu_m" if sort_by == "cpu" else "memory_bytes"
    return sorted(items, key=lambda u: (-getattr(u, key), u.name))


@read_task
async def top_pods(
    cluster: KubernetesCluster,
    namespace: str | None = None,
    *,
    label_selector: str | None = None,
    sort_by: SortBy | None = None,
) -> list[PodUsage]:
    """``kubectl top pods -n <ns> [--sort-by=cpu|memory]`` (highest first when sorted, else by name)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading pod metrics in {ns} {_WHY}") as k:
        body = await k.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "pods", **params(label_selector=label_selector)
        )
    return _sorted([pod_usage(item) for item in body.get("items") or []], sort_by)


@read_task
async def top_nodes(cluster: KubernetesCluster, *, sort_by: SortBy | None = None) -> list[NodeUsage]:
    """``kubectl top nodes``: usage, and its share of each node's allocatable CPU and memory."""
    async with kube(cluster, f"reading node metrics {_WHY}") as k:
        body = await k.custom.list_cluster_custom_object(GROUP, VERSION, "nodes")
        nodes = await k.core.list_node()
    allocatable = {n.metadata.name: (n.status.allocatable if n.status else None) for n in nodes.items}
    items = [node_usage(item, allocatable.get(item["metadata"]["name"])) for item in body.get("items") or []]
    return _sorted(items, sort_by)
