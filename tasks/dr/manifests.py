"""A backup's Kubernetes objects (``kubectl get all/configmaps/certificates -o yaml`` Lists, and the decrypted Secrets)
rewritten for the recovery namespace, in Velero's restore order.

Left out, as Velero leaves them out: what controllers own and recreate (pods, ReplicaSets, Endpoints, events, any
object with an owner), and what every namespace gets on its own (the ``default`` ServiceAccount, the
``kube-root-ca.crt`` ConfigMap, service-account tokens). What is kept loses the server's bookkeeping (status, uid,
resourceVersion, the Service's cluster IP and node ports, the Deployment's revision) and gains
``runbooks.io/restored-from`` naming the backup.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

#: Velero's order (CRDs and namespaces first, then Secrets, ConfigMaps, ServiceAccounts, ..., workloads)
RESTORE_ORDER: tuple[str, ...] = (
    "Secret",
    "ConfigMap",
    "ServiceAccount",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "CronJob",
    "Job",
    "Ingress",
    "HorizontalPodAutoscaler",
    "Certificate",
)
#: owned and recreated by controllers: never restored
CONTROLLER_OWNED_KINDS = frozenset({"Pod", "ReplicaSet", "Endpoints", "EndpointSlice", "Event"})
#: made by the cluster in every namespace
NAMESPACE_DEFAULTS = frozenset({("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")})
SKIPPED_SECRET_TYPES = frozenset({"kubernetes.io/service-account-token"})
RESTORED_FROM = "runbooks.io/restored-from"
_DROPPED_METADATA = (
    "namespace",
    "uid",
    "resourceVersion",
    "selfLink",
    "creationTimestamp",
    "generation",
    "managedFields",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_DROPPED_ANNOTATIONS = frozenset(
    {
        "deployment.kubernetes.io/revision",
        "kubectl.kubernetes.io/last-applied-configuration",
        "runbooks.io/dr-original-selector",
        "runbooks.io/dr-switched-to",
    }
)


class LeftOut(BaseModel):
    kind: str
    name: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"


class RestoreSet(BaseModel):
    """The objects to restore in order (``Kind/name`` labels; Secrets by name only), and what was left out."""

    objects: list[dict[str, Any]]
    secret_names: list[str]
    left_out: list[LeftOut]

    def labels(self) -> list[str]:
        return [f"Secret/{n}" for n in self.secret_names] + [
            f"{o['kind']}/{o['metadata']['name']}" for o in self.objects
        ]


def _why_left_out(obj: dict[str, Any]) -> str | None:
    kind, meta = obj.get("kind", ""), obj.get("metadata") or {}
    if kind in CONTROLLER_OWNED_KINDS:
        return "owned by a controller, recreated by it"
    if meta.get("ownerReferences"):
        owner = meta["ownerReferences"][0]
        return f"owned by {owner.get('kind')}/{owner.get('name')}, recreated by it"
    if (kind, meta.get("name")) in NAMESPACE_DEFAULTS:
        return "every namespace gets its own"
    if kind == "Secret" and obj.get("type") in SKIPPED_SECRET_TYPES:
        return "a service-account token, recreated by the token controller"
    return None


def rewrite(obj: dict[str, Any], backup: str) -> dict[str, Any]:
    """The object as it is created in another namespace (the namespace itself is set when it is sent)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _DROPPED_METADATA}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _DROPPED_ANNOTATIONS}
    meta["annotations"] = {**annotations, RESTORED_FROM: backup}
    out = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    out["metadata"] = meta
    kind = obj.get("kind")
    if kind == "Service":
        spec = {k: v for k, v in (out.get("spec") or {}).items() if k not in ("clusterIP", "clusterIPs")}
        spec.pop("healthCheckNodePort", None)
        spec["ports"] = [{k: v for k, v in p.items() if k != "nodePort"} for p in spec.get("ports") or []]
        if not spec.get("selector"):  # a switched Service: its selector is in the annotation the switch kept
            original = (obj.get("metadata") or {}).get("annotations", {}).get("runbooks.io/dr-original-selector")
            if original:
                import json

                spec["selector"] = json.loads(original)
        out["spec"] = spec
    return out


def order_key(obj: dict[str, Any]) -> tuple[int, str]:
    kind = obj.get("kind", "")
    rank = RESTORE_ORDER.index(kind) if kind in RESTORE_ORDER else len(RESTORE_ORDER)
    return rank, str((obj.get("metadata") or {}).get("name"))


def restore_set(lists: list[dict[str, Any]], backup: str, secret_names: list[str] | None = None) -> RestoreSet:
    """The objects of the exported ``lists`` (each a v1 List), rewritten and in Velero's order, the Secrets'
    names (from their metadata, listed by the caller) beside them."""
    objects: list[dict[str, Any]] = []
    left_out: list[LeftOut] = []
    seen: set[tuple[str, str]] = set()
    for listing in lists:
        for item in listing.get("items") or []:
            kind, name = item.get("kind", ""), str((item.get("metadata") or {}).get("name"))
            if (kind, name) in seen:
                continue
            seen.add((kind, name))
            reason = _why_left_out(item)
            if reason is None and kind not in RESTORE_ORDER:
                reason = "not a kind a recovery restores"
            if reason is not None:
                left_out.append(LeftOut(kind=kind, name=name, reason=reason))
                continue
            objects.append(rewrite(item, backup))
    objects.sort(key=order_key)
    return RestoreSet(objects=objects, secret_names=sorted(secret_names or []), left_out=left_out)


def rewrite_secrets(listing: dict[str, Any], backup: str = "") -> list[dict[str, Any]]:
    """The Secrets of a decrypted List that a recovery restores, rewritten (service-account tokens left out)."""
    items = []
    for item in listing.get("items") or []:
        if _why_left_out({**item, "kind": "Secret"}) is None:
            items.append(rewrite({**item, "kind": "Secret", "apiVersion": "v1"}, backup or "backup"))
    return items


def secrets_for(clear: SecretStr, backup: str) -> SecretStr:
    """The decrypted Secrets' List, rewritten for the recovery namespace, as YAML in a ``SecretStr`` again (in
    memory only: what :func:`tasks.kubernetes.restore.apply_secrets` takes)."""
    items = rewrite_secrets(yaml.safe_load(clear.get_secret_value()) or {}, backup)
    return SecretStr(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False))


def secret_names(listing: dict[str, Any]) -> list[str]:
    return sorted(
        str(i["metadata"]["name"]) for i in listing.get("items") or [] if _why_left_out({**i, "kind": "Secret"}) is None
    )
