"""Deletes: one pod (``kubectl delete pod``), old ReplicaSets, and ConfigMaps by name prefix (the weekly clean-up).

Every delete takes ``dry_run``: the API server then validates the delete (RBAC, preconditions, admission) with
``dryRun=All`` and deletes nothing, and the result says what would have been deleted. An object that is gone
already counts as deleted (a re-run is safe).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from kubernetes_asyncio.client import V1DeleteOptions, V1Preconditions
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task, read_task
from tasks.kubernetes._api import Kube, kube, namespace_of, params, run_logger
from tasks.kubernetes.deployments import revision_of
from tasks.kubernetes.releases import parse_last_known_good

Kind = Literal["Pod", "ReplicaSet", "ConfigMap"]
Outcome = Literal["deleted", "would-delete", "already-gone", "changed-kept"]


class Deletion(BaseModel):
    kind: Kind
    namespace: str
    name: str
    outcome: Outcome


class CleanupResult(BaseModel):
    namespace: str
    dry_run: bool
    kept: list[str] = Field(default_factory=list)
    deletions: list[Deletion] = Field(default_factory=list)

    @property
    def deleted(self) -> list[str]:
        """Names deleted (or that would be, in a dry run)."""
        return [d.name for d in self.deletions if d.outcome in ("deleted", "would-delete", "already-gone")]


class OldReplicaSet(BaseModel):
    name: str
    deployment: str
    revision: int
    replicas: int
    created_at: datetime | None = None
    resource_version: str | None = None


class ReplicaSetPlan(BaseModel):
    namespace: str
    keep: int
    kept: list[str] = Field(default_factory=list)
    old: list[OldReplicaSet] = Field(default_factory=list, description="to delete")
    protected: dict[str, str] = Field(
        default_factory=dict, description="kept whatever the history: name → why (current, previous, last known good)"
    )


class ConfigMapPlan(BaseModel):
    namespace: str
    prefix: str
    keep: int
    kept: list[str] = Field(default_factory=list, description="newest first")
    old: list[str] = Field(default_factory=list, description="to delete, newest first")
    mounted: dict[str, list[str]] = Field(
        default_factory=dict, description="old by age but kept: a Deployment's pods use it (name → Deployments)"
    )


# ---------------------------------------------------------------------------------------------- the choosing
def choose_old_replicasets(replicasets: list[dict[str, Any]], keep: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Per Deployment, keep the current ReplicaSet, any with replicas, any marked ``protected`` (the previous
    revision, the last known good one), and the ``keep`` newest other revisions (what ``revisionHistoryLimit``
    means; an item's ``keep`` overrides it); the rest are old. Items: name, deployment, revision, replicas,
    current, and optionally protected and keep."""
    by_deployment: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rs in replicasets:
        by_deployment[rs["deployment"]].append(rs)
    kept: list[str] = []
    old: list[dict[str, Any]] = []
    for items in by_deployment.values():
        history = 0
        limit = min([keep, *(int(r["keep"]) for r in items if r.get("keep") is not None)])
        for rs in sorted(items, key=lambda r: r["revision"], reverse=True):
            if rs["current"] or rs["replicas"] > 0:
                kept.append(rs["name"])
            elif rs.get("protected"):  # counts as history, but stays even beyond it
                history += 1
                kept.append(rs["name"])
            elif history < limit:
                history += 1
                kept.append(rs["name"])
            else:
                old.append(rs)
    return sorted(kept), sorted(old, key=lambda r: (r["deployment"], r["revision"]))


def protected_revisions(current: int | None, revisions: list[int], last_known_good: int | None) -> dict[int, str]:
    """The revisions a clean-up never deletes: the current one, the one before it (``rollout undo``'s target) and
    the *last known good* one (``rollback-release``'s)."""
    protected: dict[int, str] = {}
    if last_known_good is not None:
        protected[last_known_good] = "last known good"
    if current is not None:
        earlier = [r for r in revisions if r < current]
        if earlier:
            protected.setdefault(max(earlier), "previous revision")
        protected[current] = "current revision"
    return protected


def configmaps_in_use(template_spec: Any) -> set[str]:
    """The ConfigMaps a pod template uses: volumes (and projected volumes), ``envFrom`` and ``env.valueFrom``."""
    names: set[str] = set()
    if template_spec is None:
        return names
    for volume in template_spec.volumes or []:
        if volume.config_map is not None and volume.config_map.name:
            names.add(volume.config_map.name)
        if volume.projected is not None:
            names |= {s.config_map.name for s in volume.projected.sources or [] if s.config_map is not None}
    for container in [*(template_spec.containers or []), *(template_spec.init_containers or [])]:
        names |= {e.config_map_ref.name for e in container.env_from or [] if e.config_map_ref is not None}
        for env in container.env or []:
            ref = env.value_from.config_map_key_ref if env.value_from is not None else None
            if ref is not None and ref.name:
                names.add(ref.name)
    return names


def choose_old_by_prefix(configmaps: Sequence[tuple[str, datetime | None]], keep: int) -> tuple[list[str], list[str]]:
    """Newest first by creation time, then by name; the first ``keep`` stay, the rest go."""
    ordered = sorted(configmaps, key=lambda c: (c[1].timestamp() if c[1] else float("-inf"), c[0]), reverse=True)
    names = [name for name, _ in ordered]
    return names[:keep], names[keep:]


async def _old_replicasets(k: Kube, ns: str, keep: int, deployment: str | None) -> ReplicaSetPlan:
    deployments = (await k.apps.list_namespaced_deployment(ns)).items
    if deployment is not None:
        deployments = [d for d in deployments if d.metadata.name == deployment]
        if not deployments:
            raise KubernetesError(f"Deployment {ns}/{deployment} not found", hint="check its name", transient=False)
    owners = {d.metadata.uid: d for d in deployments}
    items: list[dict[str, Any]] = []
    for rs in (await k.apps.list_namespaced_replica_set(ns)).items:
        owner = next(
            (owners[o.uid] for o in rs.metadata.owner_references or [] if o.controller and o.uid in owners), None
        )
        revision = revision_of(rs)
        if owner is None or revision is None:
            continue  # not a Deployment's (or not one we were asked about): not ours to judge
        items.append(
            {
                "name": rs.metadata.name,
                "deployment": owner.metadata.name,
                "revision": revision,
                "replicas": max(rs.spec.replicas or 0, (rs.status.replicas if rs.status else None) or 0),
                "current": revision == revision_of(owner),
                "keep": owner.spec.revision_history_limit,
                "created_at": rs.metadata.creation_timestamp,
                "resource_version": rs.metadata.resource_version,
            }
        )
    protected: dict[str, str] = {}
    for dep in deployments:
        mine = [item for item in items if item["deployment"] == dep.metadata.name]
        good = parse_last_known_good(dep.metadata.annotations)
        guard = protected_revisions(
            revision_of(dep), [item["revision"] for item in mine], good.revision if good is not None else None
        )
        for item in mine:
            if item["revision"] in guard:
                item["protected"] = guard[item["revision"]]
                protected[item["name"]] = guard[item["revision"]]
    kept, old = choose_old_replicasets(items, keep)
    return ReplicaSetPlan(
        namespace=ns,
        keep=keep,
        kept=kept,
        old=[OldReplicaSet.model_validate(rs) for rs in old],
        protected=protected,
    )


async def _configmaps_by_prefix(k: Kube, ns: str, prefix: str, keep: int) -> ConfigMapPlan:
    if not prefix:
        raise KubernetesError("an empty prefix would select every ConfigMap", hint="pass a prefix", transient=False)
    found = (await k.core.list_namespaced_config_map(ns)).items
    matching = [(c.metadata.name, c.metadata.creation_timestamp) for c in found if c.metadata.name.startswith(prefix)]
    kept, old = choose_old_by_prefix(matching, keep)
    users: dict[str, list[str]] = defaultdict(list)
    for dep in (await k.apps.list_namespaced_deployment(ns)).items:
        for name in configmaps_in_use(dep.spec.template.spec if dep.spec and dep.spec.template else None):
            users[name].append(dep.metadata.name)
    mounted = {name: sorted(users[name]) for name in old if name in users}
    return ConfigMapPlan(
        namespace=ns,
        prefix=prefix,
        keep=keep,
        kept=kept + [name for name in old if name in mounted],
        old=[name for name in old if name not in mounted],
        mounted=mounted,
    )


# ------------------------------------------------------------------------------------------------ the delete
async def _delete(
    k: Kube, kind: Kind, ns: str, name: str, *, dry_run: bool, resource_version: str | None = None
) -> Deletion:
    """One delete; 404 is "already gone", a failed resourceVersion precondition (409) is "changed-kept"."""
    delete: Callable[..., Awaitable[Any]] = {
        "Pod": k.core.delete_namespaced_pod,
        "ReplicaSet": k.apps.delete_namespaced_replica_set,
        "ConfigMap": k.core.delete_namespaced_config_map,
    }[kind]
    preconditions = V1Preconditions(resource_version=resource_version) if resource_version else None
    outcome: Outcome = "would-delete" if dry_run else "deleted"
    try:
        # with a body, the API server reads the options from it only: dryRun must be in the body
        body = V1DeleteOptions(preconditions=preconditions, dry_run=["All"] if dry_run else None)
        await delete(name, ns, body=body, **params(dry_run="All" if dry_run else None))
    except ApiException as err:
        if err.status == 404:
            outcome = "already-gone"
        elif err.status == 409 and resource_version:
            outcome = "changed-kept"
        else:
            raise
    run_logger().info("%s %s/%s: %s", kind, ns, name, outcome)
    return Deletion(kind=kind, namespace=ns, name=name, outcome=outcome)


@idempotent_task
async def delete_pod(
    cluster: KubernetesCluster, name: str, namespace: str | None = None, *, dry_run: bool = False
) -> Deletion:
    """``kubectl delete pod <name>``; a pod that is gone already is reported as ``already-gone``."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"deleting pod {ns}/{name}") as k:
        return await _delete(k, "Pod", ns, name, dry_run=dry_run)


@read_task
async def list_old_replicasets(
    cluster: KubernetesCluster, namespace: str | None = None, *, keep: int = 5, deployment: str | None = None
) -> ReplicaSetPlan:
    """The ReplicaSets :func:`delete_old_replicasets` would delete: per Deployment (or only ``deployment``'s),
    all but the current one, the one before it, the last known good one, those with replicas, and the ``keep``
    newest other revisions (fewer when the Deployment's ``revisionHistoryLimit`` is lower)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing ReplicaSets in {ns}") as k:
        return await _old_replicasets(k, ns, keep, deployment)


@idempotent_task
async def delete_old_replicasets(
    cluster: KubernetesCluster,
    namespace: str | None = None,
    *,
    keep: int = 5,
    deployment: str | None = None,
    dry_run: bool = False,
) -> CleanupResult:
    """Delete what :func:`list_old_replicasets` lists; one that changed since (scaled up by an undo) is kept."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"deleting old ReplicaSets in {ns}") as k:
        plan = await _old_replicasets(k, ns, keep, deployment)
        deletions = [
            await _delete(k, "ReplicaSet", ns, rs.name, dry_run=dry_run, resource_version=rs.resource_version)
            for rs in plan.old
        ]
    return CleanupResult(namespace=ns, dry_run=dry_run, kept=plan.kept, deletions=deletions)


@read_task
async def list_configmaps_by_prefix(
    cluster: KubernetesCluster, prefix: str, namespace: str | None = None, *, keep: int = 3
) -> ConfigMapPlan:
    """The ConfigMaps named ``<prefix>...``: the ``keep`` newest (creation time, then name) and the rest, less
    those a Deployment's pod template still uses (kept, listed in ``mounted``)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"listing ConfigMaps in {ns}") as k:
        return await _configmaps_by_prefix(k, ns, prefix, keep)


@idempotent_task
async def delete_configmaps_by_prefix(
    cluster: KubernetesCluster, prefix: str, namespace: str | None = None, *, keep: int = 3, dry_run: bool = False
) -> CleanupResult:
    """``kubectl get configmaps | grep <prefix> | head -n -<keep> | xargs kubectl delete configmap``."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"deleting ConfigMaps {prefix}* in {ns}") as k:
        plan = await _configmaps_by_prefix(k, ns, prefix, keep)
        deletions = [await _delete(k, "ConfigMap", ns, name, dry_run=dry_run) for name in plan.old]
    return CleanupResult(namespace=ns, dry_run=dry_run, kept=plan.kept, deletions=deletions)
