"""Secrets: ``kubectl get secret <tls secret>`` (its public certificate only), a Secret as a copy to keep
(``kubectl get secret -o yaml``, as a ``SecretStr``), ``kubectl delete secret`` and creating it again from a kept copy.

Secret values never reach a log, a result shown in the UI, or an error: the copy is a ``SecretStr`` and the TLS
read returns ``tls.crt`` (public) and never ``tls.key``.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, Literal

from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field, SecretStr

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task, once_task, read_task
from tasks.kubernetes._api import kube, namespace_of, run_logger

#: what a copy keeps of ``metadata`` (the rest is the server's: uid, resourceVersion, managedFields ...)
_KEPT_METADATA = ("name", "namespace", "labels", "annotations")


class TLSSecret(BaseModel):
    name: str
    namespace: str
    type: str
    resource_version: str
    created_at: datetime | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    certificate_pem: str = Field(description="tls.crt: the certificate and its chain (public)")
    has_key: bool = Field(description="whether tls.key is there (its value is never read out)")


class SecretCopy(BaseModel):
    name: str
    namespace: str
    resource_version: str
    manifest: SecretStr = Field(description="the Secret as JSON, ready to create again")


class SecretDeletion(BaseModel):
    name: str
    namespace: str
    outcome: Literal["deleted", "already-gone"]


class SecretRestore(BaseModel):
    name: str
    namespace: str
    outcome: Literal["created"] = "created"
    resource_version: str


def _decoded(data: dict[str, str] | None, key: str) -> str | None:
    value = (data or {}).get(key)
    return None if value is None else base64.b64decode(value).decode(errors="replace")


@read_task
async def read_tls_secret(cluster: KubernetesCluster, name: str, namespace: str | None = None) -> TLSSecret | None:
    """``kubectl get secret <name>`` of a TLS Secret: its certificate (``tls.crt``); None when it does not exist."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading Secret {ns}/{name}") as k:
        try:
            secret = await k.core.read_namespaced_secret(name, ns)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
    certificate = _decoded(secret.data, "tls.crt")
    if certificate is None:
        raise KubernetesError(
            f"Secret {ns}/{name} has no tls.crt (type {secret.type})",
            hint="name the Secret of the Ingress's TLS (spec.tls[].secretName)",
            transient=False,
        )
    meta = secret.metadata
    return TLSSecret(
        name=name,
        namespace=ns,
        type=secret.type or "",
        resource_version=meta.resource_version,
        created_at=meta.creation_timestamp,
        annotations=meta.annotations or {},
        certificate_pem=certificate,
        has_key="tls.key" in (secret.data or {}),
    )


@read_task(persist_result=False)
async def copy_secret(cluster: KubernetesCluster, name: str, namespace: str | None = None) -> SecretCopy:
    """The Secret as it is (type, data, labels, annotations) as JSON in a ``SecretStr``, to keep and to create
    again; a missing Secret is a :class:`KubernetesError` (there is nothing to keep)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading Secret {ns}/{name}") as k:
        raw = json.loads(await k.get_raw(f"/api/v1/namespaces/{ns}/secrets/{name}"))
    meta = raw.get("metadata") or {}
    kept: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": raw.get("type", "Opaque"),
        "metadata": {k: meta[k] for k in _KEPT_METADATA if meta.get(k)},
        "data": raw.get("data") or {},
    }
    return SecretCopy(
        name=name,
        namespace=ns,
        resource_version=str(meta.get("resourceVersion", "")),
        manifest=SecretStr(json.dumps(kept)),
    )


@idempotent_task
async def delete_secret(cluster: KubernetesCluster, name: str, namespace: str | None = None) -> SecretDeletion:
    """``kubectl delete secret <name>``; one already gone counts as deleted (a re-run is safe)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"deleting Secret {ns}/{name}") as k:
        try:
            await k.core.delete_namespaced_secret(name, ns)
        except ApiException as err:
            if err.status == 404:
                return SecretDeletion(name=name, namespace=ns, outcome="already-gone")
            raise
    run_logger().info("Secret %s/%s deleted", ns, name)
    return SecretDeletion(name=name, namespace=ns, outcome="deleted")


@once_task(persist_result=False)
async def restore_secret(cluster: KubernetesCluster, manifest: SecretStr) -> SecretRestore:
    """Create the Secret of a :class:`SecretCopy` again; one that exists meanwhile is a :class:`KubernetesError`
    (409: it is left as it is)."""
    body = json.loads(manifest.get_secret_value())
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    async with kube(cluster, f"restoring Secret {ns}/{name}") as k:
        created = await k.core.create_namespaced_secret(ns, body)
    run_logger().info("Secret %s/%s created again from the kept copy", ns, name)
    return SecretRestore(name=name, namespace=ns, resource_version=created.metadata.resource_version)
