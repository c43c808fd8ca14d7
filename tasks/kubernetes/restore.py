"""Putting a namespace's exported objects back (``kubectl apply`` of a backup's YAML into another namespace), tearing
a recovery namespace down, and pointing a Service at pods of another namespace (the seed's ``kubectl patch service``
of a disaster recovery's step 7) and back.

What these tasks send is built by :mod:`tasks.dr.manifests` (rewritten for the target namespace, controller-owned
objects left out). Secrets arrive as a ``SecretStr`` holding their YAML List and are parsed here, in this process:
their values never reach a log line, a task result or a repr.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import yaml
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field, SecretStr

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task, read_task
from tasks.kubernetes._api import Kube, kube, list_metadata, run_logger
from tasks.kubernetes.export import KINDS

#: kind → (API path prefix, plural) of what a recovery restores (the export's kinds, and cert-manager Certificates)
RESTORABLE: dict[str, tuple[str, str]] = {
    **{kind: (prefix, plural) for plural, (prefix, _, kind) in KINDS.items()},
    "Certificate": ("/apis/cert-manager.io/v1", "certificates"),
}
#: annotation on a switched Service: its selector before the switch (JSON), and where it points now
ORIGINAL_SELECTOR = "runbooks.io/dr-original-selector"
SWITCHED_TO = "runbooks.io/dr-switched-to"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
#: who manages the EndpointSlice of a switched Service (the endpoint-slice controller leaves it alone)
MANAGED_BY = "runbooks.io-disaster-recovery"


class ApplyResult(BaseModel):
    """What one batch of objects did in the target namespace (names as ``Kind/name``)."""

    namespace: str
    created: list[str] = Field(default_factory=list)
    replaced: list[str] = Field(default_factory=list)
    skipped_existing: list[str] = Field(default_factory=list, description="existed and overwrite was off")
    not_served: list[str] = Field(default_factory=list, description="the cluster does not serve the kind (no CRD)")


class ServiceSwitch(BaseModel):
    service: str
    namespace: str
    target_namespace: str
    original_selector: dict[str, str]
    endpoints: list[str] = Field(default_factory=list, description="pod names (target namespace) now behind it")
    addresses: list[str] = Field(default_factory=list)


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    if kind not in RESTORABLE:
        raise KubernetesError(f"cannot restore objects of kind {kind}", hint="add it to RESTORABLE", transient=False)
    prefix, plural = RESTORABLE[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


async def _send(k: Kube, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
    """One raw request (the server validates; the client's models would drop fields they do not know). The body
    is never logged: Secrets go through here."""
    response = await k.api.call_api(
        path,
        method,
        body=body,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    async with response:
        data: bytes = await response.read()
        if response.status >= 300:
            err = ApiException(status=response.status, reason=response.reason)
            err.body = data
            raise err
    return json.loads(data) if data else None


async def _exists(k: Kube, path: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = await _send(k, "GET", path)
        return found
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def _apply(k: Kube, namespace: str, objects: list[dict[str, Any]], overwrite: bool) -> ApplyResult:
    result = ApplyResult(namespace=namespace)
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        label = f"{kind}/{name}"
        body = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        try:
            await _send(k, "POST", _path(kind, namespace), body)
            result.created.append(label)
            continue
        except ApiException as err:
            if err.status == 404 and kind == "Certificate":  # cert-manager not installed in the target cluster
                result.not_served.append(label)
                continue
            if err.status != 409:
                raise
        if not overwrite:
            result.skipped_existing.append(label)
            continue
        current = await _send(k, "GET", _path(kind, namespace, name))
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if kind == "Service":  # a Service keeps the address it was given
            body["spec"] = {**body.get("spec", {}), "clusterIP": current.get("spec", {}).get("clusterIP")}
        await _send(k, "PUT", _path(kind, namespace, name), body)
        result.replaced.append(label)
    return result


@read_task
async def list_restorable(cluster: KubernetesCluster, namespace: str, kinds: list[str]) -> dict[str, list[str]]:
    """Kind → names of the objects of ``kinds`` that exist in ``namespace`` (a kind the cluster does not serve, or
    a namespace that does not exist, lists nothing). Metadata only: a Secret's values are never fetched."""
    found: dict[str, list[str]] = {}
    async with kube(cluster, f"listing what exists in namespace {namespace}") as k:
        for kind in kinds:
            try:
                body = (
                    await _send(k, "GET", _path(kind, namespace) + "?limit=500", None, "application/json")
                    if kind != "Secret"
                    else await list_metadata(k, _path(kind, namespace))
                )
            except ApiException as err:
                if err.status == 404:
                    continue
                raise
            names = sorted(str(i["metadata"]["name"]) for i in body.get("items") or [])
            if names:
                found[kind] = names
    return found


@read_task
async def list_labelled_namespaces(cluster: KubernetesCluster, label: str, prefix: str) -> list[str]:
    """The namespaces labelled ``label`` (``key=value``) whose name starts with ``prefix``."""
    async with kube(cluster, f"listing namespaces labelled {label}") as k:
        body = await list_metadata(k, f"/api/v1/namespaces?labelSelector={label}")
    names = (str(i["metadata"]["name"]) for i in body.get("items") or [])
    return sorted(n for n in names if n.startswith(prefix))


@read_task
async def read_namespace_labels(cluster: KubernetesCluster, name: str) -> dict[str, str] | None:
    """The labels of namespace ``name``, or None when it does not exist."""
    async with kube(cluster, f"reading namespace {name}") as k:
        found = await _exists(k, f"/api/v1/namespaces/{name}")
    return None if found is None else dict(found["metadata"].get("labels") or {})


@idempotent_task(persist_result=False)
async def apply_objects(
    cluster: KubernetesCluster, namespace: str, objects: list[dict[str, Any]], *, overwrite: bool = False
) -> ApplyResult:
    """Create each object in ``namespace`` (in the order given); one that exists is left alone and listed, or,
    with ``overwrite``, replaced and listed. Safe to repeat: a second run finds them existing."""
    async with kube(cluster, f"restoring {len(objects)} object(s) into namespace {namespace}") as k:
        result = await _apply(k, namespace, objects, overwrite)
    run_logger().info(
        "namespace %s: %d created, %d replaced, %d existing left alone",
        namespace,
        len(result.created),
        len(result.replaced),
        len(result.skipped_existing),
    )
    return result


@idempotent_task(persist_result=False)
async def apply_secrets(
    cluster: KubernetesCluster, namespace: str, secrets_yaml: SecretStr, *, overwrite: bool = False
) -> ApplyResult:
    """Secrets (a YAML List in a ``SecretStr``, as a decrypted backup holds them, already rewritten for the
    namespace) created in ``namespace``; parsed here, in memory, never written anywhere in clear. Existing ones as
    :func:`apply_objects`."""
    items = [i for i in (yaml.safe_load(secrets_yaml.get_secret_value()) or {}).get("items") or []]
    async with kube(cluster, f"restoring {len(items)} Secret(s) into namespace {namespace}") as k:
        result = await _apply(k, namespace, items, overwrite)
    del items
    run_logger().info(
        "namespace %s: Secrets %d created, %d replaced, %d existing left alone",
        namespace,
        len(result.created),
        len(result.replaced),
        len(result.skipped_existing),
    )
    return result


@idempotent_task
async def delete_recovery_namespace(
    cluster: KubernetesCluster, name: str, label: str, *, timeout_s: float = 180, poll_s: float = 1.0
) -> bool:
    """``kubectl delete namespace <name> --wait``, only when it carries ``label=true`` (a recovery's own
    namespace, never another); True when there was one. Waits until it is gone."""
    key, _, value = label.partition("=")
    async with kube(cluster, f"deleting namespace {name}") as k:
        found = await _exists(k, f"/api/v1/namespaces/{name}")
        if found is None:
            return False
        labels = found["metadata"].get("labels") or {}
        if labels.get(key) != (value or "true"):
            raise KubernetesError(
                f"refusing to delete namespace {name}: it is not labelled {key}={value or 'true'}",
                hint="only a namespace a recovery or a drill created is torn down; delete this one by hand",
                transient=False,
            )
        try:
            await _send(k, "DELETE", f"/api/v1/namespaces/{name}")
        except ApiException as err:
            if err.status != 404:
                raise
        deadline = time.monotonic() + timeout_s
        while await _exists(k, f"/api/v1/namespaces/{name}") is not None:
            if time.monotonic() > deadline:
                raise KubernetesError(
                    f"namespace {name} still terminating after {timeout_s:g}s",
                    hint=f"kubectl get all -n {name}: a finalizer may hold it",
                    transient=True,
                )
            await asyncio.sleep(poll_s)
    run_logger().info("namespace %s deleted", name)
    return True


async def _ready_pods(k: Kube, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
    query = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    body = await _send(k, "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={query}")
    pods = []
    for pod in body.get("items") or []:
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            pods.append(pod)
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def _slice_name(service: str) -> str:
    return f"{service}-disaster-recovery"


async def _discovery_version(k: Kube) -> str:
    """The served version of discovery.k8s.io (v1 since Kubernetes 1.21, v1beta1 before)."""
    group = await _send(k, "GET", "/apis/discovery.k8s.io")
    return str(group["preferredVersion"]["version"])


async def _slices(k: Kube, base: str, service: str) -> list[dict[str, Any]]:
    body = await _send(k, "GET", f"{base}?labelSelector={SERVICE_NAME_LABEL}%3D{service}")
    return list(body.get("items") or [])


@idempotent_task
async def switch_service(
    cluster: KubernetesCluster, service: str, namespace: str, target_namespace: str
) -> ServiceSwitch:
    """Point Service ``namespace/service`` at the ready pods of ``target_namespace`` its selector matches: the
    selector is taken off (kept in the ``runbooks.io/dr-original-selector`` annotation), the endpoint-slice
    controller's slices of it are deleted, and one EndpointSlice of ours (``<service>-disaster-recovery``) lists
    those pods. (An EndpointSlice, not the legacy Endpoints: kube-proxy reads slices, and Endpoints refuse the
    sandbox's loopback pod addresses.) Repeating it refreshes the slice and keeps the first original selector."""
    async with kube(cluster, f"switching Service {namespace}/{service} to namespace {target_namespace}") as k:
        current = await _send(k, "GET", f"/api/v1/namespaces/{namespace}/services/{service}")
        annotations = current["metadata"].get("annotations") or {}
        if ORIGINAL_SELECTOR in annotations:
            original = json.loads(annotations[ORIGINAL_SELECTOR])
        else:
            original = dict(current["spec"].get("selector") or {})
        if not original:
            raise KubernetesError(
                f"Service {namespace}/{service} has no selector to switch", hint="switch it by hand", transient=False
            )
        pods = await _ready_pods(k, target_namespace, original)
        if not pods:
            raise KubernetesError(
                f"no ready pod in {target_namespace} matches {original}: Service {namespace}/{service} not switched",
                hint=f"kubectl get pods -n {target_namespace} -l " + ",".join(f"{a}={b}" for a, b in original.items()),
                transient=False,
            )
        patch = {
            "metadata": {
                "annotations": {ORIGINAL_SELECTOR: json.dumps(original, sort_keys=True), SWITCHED_TO: target_namespace}
            },
            "spec": {"selector": None},
        }
        await _send(
            k, "PATCH", f"/api/v1/namespaces/{namespace}/services/{service}", patch, "application/merge-patch+json"
        )
        ports = [
            {
                key: value
                for key, value in {
                    "name": p.get("name"),
                    "port": p.get("targetPort", p["port"]),
                    "protocol": p.get("protocol", "TCP"),
                }.items()
                if value is not None
            }
            for p in current["spec"].get("ports") or []
        ]
        version = await _discovery_version(k)
        base = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
        for stale in await _slices(k, base, service):
            if stale["metadata"]["name"] != _slice_name(service):
                await _send(k, "DELETE", f"{base}/{stale['metadata']['name']}")
        endpoint_slice: dict[str, Any] = {
            "apiVersion": f"discovery.k8s.io/{version}",
            "kind": "EndpointSlice",
            "metadata": {
                "name": _slice_name(service),
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY},
                "annotations": {SWITCHED_TO: target_namespace},
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": True},
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": target_namespace,
                        "name": p["metadata"]["name"],
                        "uid": p["metadata"]["uid"],
                    },
                }
                for p in pods
            ],
            "ports": ports,
        }
        path = f"{base}/{_slice_name(service)}"
        existing = await _exists(k, path)
        if existing is None:
            await _send(k, "POST", base, endpoint_slice)
        else:
            endpoint_slice["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await _send(k, "PUT", path, endpoint_slice)
    names = [p["metadata"]["name"] for p in pods]
    run_logger().warning(
        "Service %s/%s now sends traffic to %s in %s (its selector %s is kept in %s)",
        namespace,
        service,
        ", ".join(names),
        target_namespace,
        original,
        ORIGINAL_SELECTOR,
    )
    return ServiceSwitch(
        service=service,
        namespace=namespace,
        target_namespace=target_namespace,
        original_selector=original,
        endpoints=names,
        addresses=[p["status"]["podIP"] for p in pods],
    )


@idempotent_task
async def restore_service_selector(
    cluster: KubernetesCluster, service: str, namespace: str, selector: dict[str, str] | None = None
) -> dict[str, str]:
    """Undo :func:`switch_service`: the selector back (``selector``, else the one the annotation kept), the
    annotations and our EndpointSlice off; the endpoint-slice controller then lists the namespace's own pods again.
    Returns the selector."""
    async with kube(cluster, f"putting the selector of Service {namespace}/{service} back") as k:
        current = await _send(k, "GET", f"/api/v1/namespaces/{namespace}/services/{service}")
        annotations = current["metadata"].get("annotations") or {}
        wanted = selector or (json.loads(annotations[ORIGINAL_SELECTOR]) if ORIGINAL_SELECTOR in annotations else None)
        if not wanted:
            wanted = dict(current["spec"].get("selector") or {})
            if not wanted:
                raise KubernetesError(
                    f"Service {namespace}/{service}: no selector to put back (no {ORIGINAL_SELECTOR} annotation)",
                    hint="set its selector by hand (kubectl edit service)",
                    transient=False,
                )
            return wanted
        patch = {
            "metadata": {"annotations": {ORIGINAL_SELECTOR: None, SWITCHED_TO: None}},
            "spec": {"selector": wanted},
        }
        await _send(
            k, "PATCH", f"/api/v1/namespaces/{namespace}/services/{service}", patch, "application/merge-patch+json"
        )
        version = await _discovery_version(k)
        base = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
        if await _exists(k, f"{base}/{_slice_name(service)}") is not None:
            await _send(k, "DELETE", f"{base}/{_slice_name(service)}")
    run_logger().warning("Service %s/%s: selector %s put back", namespace, service, wanted)
    return dict(wanted)
