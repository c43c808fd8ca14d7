"""``kubectl get all/configmaps/secrets -n <ns> -o yaml``: a namespace's objects as YAML for the backup, and
``kubectl get <plural>.<group>`` for custom resources (cert-manager's Certificates), which ``all`` leaves out.

Secrets are exported only when asked (``include_secrets``), into a ``SecretStr`` field that never shows in a
repr, a log line or the Prefect UI; the backup flow encrypts it before it leaves the process. The result is
never persisted by Prefect (``persist_result=False``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field, SecretStr

from blocks.kubernetes import KubernetesCluster
from kernel.retry import read_task
from tasks.kubernetes._api import Kube, kube, namespace_of
from tasks.kubernetes.custom import CustomResourceType

ExportKind = Literal[
    "all",
    "pods",
    "services",
    "deployments",
    "replicasets",
    "statefulsets",
    "daemonsets",
    "jobs",
    "cronjobs",
    "horizontalpodautoscalers",
    "configmaps",
    "ingresses",
    "serviceaccounts",
    "persistentvolumeclaims",
]

#: plural → (API path prefix, apiVersion, kind)
KINDS: dict[str, tuple[str, str, str]] = {
    "pods": ("/api/v1", "v1", "Pod"),
    "services": ("/api/v1", "v1", "Service"),
    "configmaps": ("/api/v1", "v1", "ConfigMap"),
    "secrets": ("/api/v1", "v1", "Secret"),
    "serviceaccounts": ("/api/v1", "v1", "ServiceAccount"),
    "persistentvolumeclaims": ("/api/v1", "v1", "PersistentVolumeClaim"),
    "deployments": ("/apis/apps/v1", "apps/v1", "Deployment"),
    "replicasets": ("/apis/apps/v1", "apps/v1", "ReplicaSet"),
    "statefulsets": ("/apis/apps/v1", "apps/v1", "StatefulSet"),
    "daemonsets": ("/apis/apps/v1", "apps/v1", "DaemonSet"),
    "jobs": ("/apis/batch/v1", "batch/v1", "Job"),
    "cronjobs": ("/apis/batch/v1", "batch/v1", "CronJob"),
    "horizontalpodautoscalers": ("/apis/autoscaling/v1", "autoscaling/v1", "HorizontalPodAutoscaler"),
    "ingresses": ("/apis/networking.k8s.io/v1", "networking.k8s.io/v1", "Ingress"),
}
#: kubectl's "all" category (replicationcontrollers left out: legacy, and not in the runbooks' RBAC role)
ALL = (
    "pods",
    "services",
    "daemonsets",
    "deployments",
    "replicasets",
    "statefulsets",
    "horizontalpodautoscalers",
    "jobs",
    "cronjobs",
)
#: Recreated by the token controller; restoring them would break the service accounts.
SKIPPED_SECRET_TYPES = frozenset({"kubernetes.io/service-account-token"})
_STRIPPED_METADATA = ("managedFields", "resourceVersion", "uid", "selfLink")


class ResourceExport(BaseModel):
    namespace: str
    kinds: list[str]
    counts: dict[str, int] = Field(default_factory=dict, description="objects per kind (secrets included)")
    skipped: dict[str, str] = Field(default_factory=dict, description="kinds the server does not serve, and why")
    manifest: str = Field(description="YAML of a v1 List, as `kubectl get ... -o yaml` prints it")
    secrets_manifest: SecretStr | None = Field(default=None, description="YAML List of the Secrets, when asked")


def clean(item: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """An item of a List as a standalone object: apiVersion/kind set, server bookkeeping removed."""
    metadata = {k: v for k, v in (item.get("metadata") or {}).items() if k not in _STRIPPED_METADATA}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata,
        **{k: v for k, v in item.items() if k not in ("apiVersion", "kind", "metadata")},
    }


def as_list_yaml(items: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}, sort_keys=False)


#: reads, retried on transient failures; never persisted by Prefect (an export may hold Secrets)
exporting = read_task(persist_result=False)


async def _list(k: Kube, namespace: str, plural: str) -> list[dict[str, Any]]:
    prefix, api_version, kind = KINDS[plural]
    body = json.loads(await k.get_raw(f"{prefix}/namespaces/{namespace}/{plural}"))
    return [clean(item, api_version, kind) for item in body.get("items") or []]


@exporting
async def export_resources(
    cluster: KubernetesCluster,
    namespace: str | None = None,
    *,
    kinds: list[ExportKind] | None = None,
    include_secrets: bool = False,
) -> ResourceExport:
    """The objects of ``kinds`` (default: ``all``, kubectl's category, and ``configmaps``) as one YAML List,
    stripped of managedFields/resourceVersion/uid; with ``include_secrets``, the Secrets as a separate
    ``SecretStr`` (service-account tokens left out). A kind the server does not serve is listed in ``skipped``."""
    ns = namespace_of(cluster, namespace)
    wanted: list[str] = []
    for kind in kinds or ["all", "configmaps"]:
        wanted.extend(ALL if kind == "all" else [kind])
    wanted = list(dict.fromkeys(wanted))
    items: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    secrets_manifest = None
    async with kube(cluster, f"exporting {', '.join(wanted)} of namespace {ns}") as k:
        for plural in wanted:
            try:
                found = await _list(k, ns, plural)
            except ApiException as err:  # only "not served here" is skipped; everything else propagates
                if err.status != 404:
                    raise
                skipped[plural] = f"{KINDS[plural][0]} does not serve {plural} on this cluster"
                continue
            counts[plural] = len(found)
            items.extend(found)
        if include_secrets:
            secrets = [s for s in await _list(k, ns, "secrets") if s.get("type") not in SKIPPED_SECRET_TYPES]
            counts["secrets"] = len(secrets)
            secrets_manifest = SecretStr(as_list_yaml(secrets))
    return ResourceExport(
        namespace=ns,
        kinds=wanted + (["secrets"] if include_secrets else []),
        counts=counts,
        skipped=skipped,
        manifest=as_list_yaml(items),
        secrets_manifest=secrets_manifest,
    )


@exporting
async def export_custom_resources(
    cluster: KubernetesCluster, resources: list[CustomResourceType], namespace: str | None = None
) -> ResourceExport:
    """The namespace's objects of each custom resource type (``kubectl get certificates.cert-manager.io -o yaml``)
    as one YAML List. A type whose CRD is not installed is listed in ``skipped``; any other error propagates."""
    ns = namespace_of(cluster, namespace)
    items: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    async with kube(cluster, f"exporting {', '.join(map(str, resources))} of namespace {ns}") as k:
        for resource in resources:
            name = f"{resource.plural}.{resource.group}"
            api_version = f"{resource.group}/{resource.version}"
            try:
                body = json.loads(await k.get_raw(f"/apis/{api_version}/namespaces/{ns}/{resource.plural}"))
            except ApiException as err:
                if err.status != 404:
                    raise
                skipped[name] = f"no {api_version} {resource.plural} on this cluster (CRD not installed)"
                continue
            found = [
                clean(item, api_version, str(item.get("kind") or body.get("kind", "").removesuffix("List")))
                for item in body.get("items") or []
            ]
            counts[name] = len(found)
            items.extend(found)
    return ResourceExport(
        namespace=ns,
        kinds=[f"{r.plural}.{r.group}" for r in resources],
        counts=counts,
        skipped=skipped,
        manifest=as_list_yaml(items),
    )
