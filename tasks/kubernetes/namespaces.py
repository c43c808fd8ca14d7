"""``kubectl create namespace`` and ``kubectl label namespace`` (the disaster-recovery namespace)."""

from __future__ import annotations

from kubernetes_asyncio.client import V1Namespace, V1ObjectMeta
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.retry import idempotent_task
from tasks.kubernetes._api import kube, run_logger


class NamespaceResult(BaseModel):
    name: str
    created: bool = Field(description="False when it existed already")
    phase: str | None = Field(default=None, description="Active, or Terminating")
    labels: dict[str, str] = Field(default_factory=dict)
    previous_labels: dict[str, str] = Field(default_factory=dict)


@idempotent_task
async def create_namespace(
    cluster: KubernetesCluster, name: str, labels: dict[str, str] | None = None
) -> NamespaceResult:
    """``kubectl create namespace <name>`` with ``labels``; one that exists already is fine (labels merged in)."""
    async with kube(cluster, f"creating namespace {name}") as k:
        try:
            ns = await k.core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name, labels=labels or None)))
            run_logger().info("namespace %s: created with labels %s", name, labels or {})
            return NamespaceResult(
                name=name, created=True, phase=ns.status.phase if ns.status else None, labels=labels or {}
            )
        except ApiException as err:
            if err.status != 409:
                raise
        existing = await k.core.read_namespace(name)
        previous = dict(existing.metadata.labels or {})
        if labels and any(previous.get(key) != value for key, value in labels.items()):
            existing = await k.core.patch_namespace(name, {"metadata": {"labels": labels}})
            run_logger().info("namespace %s: existed; labels %s merged in", name, labels)
    return NamespaceResult(
        name=name,
        created=False,
        phase=existing.status.phase if existing.status else None,
        labels=dict(existing.metadata.labels or {}),
        previous_labels=previous,
    )


@idempotent_task
async def label_namespace(cluster: KubernetesCluster, name: str, labels: dict[str, str | None]) -> NamespaceResult:
    """``kubectl label namespace <name> k=v --overwrite``; a ``None`` value removes the label (``k-``)."""
    async with kube(cluster, f"labelling namespace {name}") as k:
        existing = await k.core.read_namespace(name)
        previous = dict(existing.metadata.labels or {})
        wanted = {key: value for key, value in labels.items() if previous.get(key) != value}
        if wanted:
            existing = await k.core.patch_namespace(name, {"metadata": {"labels": wanted}})
            run_logger().info("namespace %s: labels %s", name, wanted)
    return NamespaceResult(
        name=name,
        created=False,
        phase=existing.status.phase if existing.status else None,
        labels=dict(existing.metadata.labels or {}),
        previous_labels=previous,
    )
