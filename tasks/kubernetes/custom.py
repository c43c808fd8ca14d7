"""Custom resources: ``kubectl get certificate <name>`` and ``kubectl annotate certificate <name> k=v``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task, read_task
from tasks.kubernetes._api import Condition, kube, namespace_of, run_logger


class CustomResourceType(BaseModel):
    """Which custom resource: API group, version and plural name."""

    model_config = ConfigDict(frozen=True)

    group: str
    version: str
    plural: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}/{self.version}"


CERTIFICATE = CustomResourceType(group="cert-manager.io", version="v1", plural="certificates")


class CustomResource(BaseModel):
    api_version: str
    kind: str
    name: str
    namespace: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)
    ready: bool | None = Field(default=None, description="its Ready condition, if it has one")


class AnnotationChange(BaseModel):
    name: str
    namespace: str
    previous: dict[str, str]
    annotations: dict[str, str]
    changed: bool


def custom_resource(obj: dict[str, Any]) -> CustomResource:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    conditions = [Condition.of(c) for c in status.get("conditions") or []]
    ready = next((c.status == "True" for c in conditions if c.type == "Ready"), None)
    return CustomResource(
        api_version=obj.get("apiVersion", ""),
        kind=obj.get("kind", ""),
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
        spec=obj.get("spec") or {},
        status=status,
        conditions=conditions,
        ready=ready,
    )


@read_task
async def get_custom_resource(
    cluster: KubernetesCluster, resource: CustomResourceType, name: str, namespace: str | None = None
) -> CustomResource:
    """``kubectl get <plural>.<group> <name>`` (e.g. ``resource=CERTIFICATE``): spec, status, conditions."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading {resource} {ns}/{name}") as k:
        obj = await k.custom.get_namespaced_custom_object(resource.group, resource.version, ns, resource.plural, name)
    return custom_resource(obj)


@idempotent_task
async def annotate_custom_resource(
    cluster: KubernetesCluster,
    resource: CustomResourceType,
    name: str,
    annotations: dict[str, str | None],
    namespace: str | None = None,
    *,
    overwrite: bool = False,
) -> AnnotationChange:
    """``kubectl annotate <plural>.<group> <name> k=v [--overwrite]``; ``None`` removes (``k-``).

    As with kubectl, changing an existing different value needs ``overwrite``; setting the same value is a no-op.
    """
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"annotating {resource} {ns}/{name}") as k:
        obj = await k.custom.get_namespaced_custom_object(resource.group, resource.version, ns, resource.plural, name)
        previous = dict((obj.get("metadata") or {}).get("annotations") or {})
        wanted = {key: value for key, value in annotations.items() if previous.get(key) != value}
        clashes = [key for key, value in wanted.items() if value is not None and key in previous]
        if clashes and not overwrite:
            raise KubernetesError(
                f"{resource} {ns}/{name}: "
                + ", ".join(f"{key!r} already has a value ({previous[key]})" for key in clashes),
                hint="pass overwrite=True to replace it",
                transient=False,
            )
        if wanted:
            # a merge patch (custom resources take no strategic merge) guarded by the version we read
            patch = {"metadata": {"annotations": wanted, "resourceVersion": obj["metadata"]["resourceVersion"]}}
            merge: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
            obj = await k.custom.patch_namespaced_custom_object(
                resource.group, resource.version, ns, resource.plural, name, patch, **merge
            )
            run_logger().info("%s %s/%s: annotations %s", resource, ns, name, wanted)
    return AnnotationChange(
        name=name,
        namespace=ns,
        previous=previous,
        annotations=dict((obj.get("metadata") or {}).get("annotations") or {}),
        changed=bool(wanted),
    )
