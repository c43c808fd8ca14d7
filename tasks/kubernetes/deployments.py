"""Deployments: get, ``kubectl rollout history/status/undo/restart``, ``kubectl scale``, ``kubectl set image``, and
the runbook's ``kubectl patch`` of container resources.

Changes follow trigger → wait → fetch: the change tasks return at once; :func:`rollout_status` waits (timeout,
poll interval) and raises :class:`RolloutFailedError` or :class:`RolloutTimeoutError`.
"""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import datetime
from typing import Any, Literal

from kubernetes_asyncio.client import V1Deployment, V1ReplicaSet
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task, once_task, read_task
from tasks.kubernetes._api import Condition, Kube, hpa_for, kube, namespace_of, now, run_logger, selector_string
from tasks.kubernetes.inventory import pod_info
from tasks.kubernetes.quantity import parse_quantity

REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
POD_TEMPLATE_HASH = "pod-template-hash"
#: Annotations a rollback keeps from the Deployment instead of copying them from the ReplicaSet (as kubectl does).
ROLLBACK_SKIPPED_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)
#: Our own records on a Deployment (the mitigation claims of :mod:`tasks.kubernetes.claims`): a rollback keeps
#: the Deployment's, never copies a ReplicaSet's (the Deployment controller copies annotations onto ReplicaSets).
OWN_ANNOTATION_PREFIX = "runbooks.io/"


class RolloutError(KubernetesError):
    """A rollout did not complete; ``str()`` says which Deployment, why, and to undo it."""

    def __init__(self, message: str, *, deployment: str, namespace: str, hint: str) -> None:
        self.deployment = deployment
        self.namespace = namespace
        super().__init__(message, hint=hint, transient=False)


class RolloutFailedError(RolloutError):
    """The Deployment's Progressing condition is False with reason ProgressDeadlineExceeded."""


class RolloutTimeoutError(RolloutError):
    """The rollout was still in progress when our timeout expired."""


# ---------------------------------------------------------------------------------------------------- models
class ContainerSpec(BaseModel):
    name: str
    image: str
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class DeploymentInfo(BaseModel):
    name: str
    namespace: str
    replicas: int = Field(description="desired")
    updated: int = 0
    ready: int = 0
    available: int = 0
    unavailable: int = 0
    revision: int | None = Field(default=None, description=f"the {REVISION} annotation")
    change_cause: str | None = None
    images: list[str] = Field(default_factory=list)
    containers: list[ContainerSpec] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    generation: int | None = None
    observed_generation: int | None = None
    paused: bool = False
    selector: str = ""
    progress_deadline_s: int | None = None
    last_rollout_at: datetime | None = Field(default=None, description="creation time of the newest ReplicaSet")


class Revision(BaseModel):
    revision: int
    replicaset: str
    images: list[str]
    change_cause: str | None = None
    created_at: datetime | None = None
    replicas: int = 0
    current: bool = False


class RolloutHistory(BaseModel):
    deployment: str
    namespace: str
    current_revision: int | None
    revisions: list[Revision] = Field(description="oldest first")


class RolloutState(BaseModel):
    """Where a rollout stands, as ``kubectl rollout status`` judges it."""

    done: bool
    failed: bool = False
    message: str


class RolloutStatus(BaseModel):
    deployment: DeploymentInfo
    message: str
    waited_s: float


class UndoResult(BaseModel):
    deployment: str
    namespace: str
    outcome: Literal["rolled-back", "skipped"]
    from_revision: int | None
    to_revision: int
    replicaset: str
    images: list[str]
    change_cause: str | None = None
    message: str


class RestartResult(BaseModel):
    deployment: str
    namespace: str
    restarted_at: str


class ScaleResult(BaseModel):
    deployment: str
    namespace: str
    previous_replicas: int
    replicas: int
    changed: bool
    hpa: str | None = Field(default=None, description="an HPA that manages these replicas and may change them back")


class ImageChange(BaseModel):
    deployment: str
    namespace: str
    container: str
    previous_image: str
    image: str
    changed: bool


class ResourcesChange(BaseModel):
    deployment: str
    namespace: str
    container: str
    previous: dict[str, dict[str, str]]
    resources: dict[str, dict[str, str]]
    changed: bool


# ---------------------------------------------------------------------------------------------- pure helpers
def revision_of(obj: V1Deployment | V1ReplicaSet) -> int | None:
    value = (obj.metadata.annotations or {}).get(REVISION)
    return int(value) if value and value.isdigit() else None


def _containers(template: Any) -> list[ContainerSpec]:
    spec = template.spec if template else None
    return [
        ContainerSpec(
            name=c.name,
            image=c.image,
            requests=dict((c.resources.requests if c.resources else None) or {}),
            limits=dict((c.resources.limits if c.resources else None) or {}),
        )
        for c in (spec.containers if spec else None) or []
    ]


def deployment_info(dep: V1Deployment, replicasets: list[V1ReplicaSet]) -> DeploymentInfo:
    spec, status = dep.spec, dep.status
    containers = _containers(spec.template)
    created = [rs.metadata.creation_timestamp for rs in replicasets if rs.metadata.creation_timestamp]
    return DeploymentInfo(
        name=dep.metadata.name,
        namespace=dep.metadata.namespace,
        replicas=spec.replicas if spec.replicas is not None else 1,
        updated=(status.updated_replicas if status else None) or 0,
        ready=(status.ready_replicas if status else None) or 0,
        available=(status.available_replicas if status else None) or 0,
        unavailable=(status.unavailable_replicas if status else None) or 0,
        revision=revision_of(dep),
        change_cause=(dep.metadata.annotations or {}).get(CHANGE_CAUSE),
        images=[c.image for c in containers],
        containers=containers,
        conditions=[Condition.of(c) for c in (status.conditions if status else None) or []],
        generation=dep.metadata.generation,
        observed_generation=status.observed_generation if status else None,
        paused=bool(spec.paused),
        selector=selector_string(spec.selector),
        progress_deadline_s=spec.progress_deadline_seconds,
        last_rollout_at=max(created) if created else None,
    )


def rollout_state(dep: V1Deployment) -> RolloutState:
    """kubectl's ``DeploymentStatusViewer``: observed? deadline exceeded? updated, old pending, available?"""
    spec, status = dep.spec, dep.status
    generation, observed = dep.metadata.generation or 0, (status.observed_generation if status else None) or 0
    if generation > observed:
        return RolloutState(done=False, message="waiting for the Deployment's spec update to be observed")
    progressing = next((c for c in (status.conditions or []) if c.type == "Progressing"), None)
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        return RolloutState(done=False, failed=True, message=progressing.message or "progress deadline exceeded")
    desired = spec.replicas if spec.replicas is not None else 1
    updated, total = status.updated_replicas or 0, status.replicas or 0
    available = status.available_replicas or 0
    if updated < desired:
        return RolloutState(done=False, message=f"{updated} out of {desired} new replicas have been updated")
    if total > updated:
        return RolloutState(done=False, message=f"{total - updated} old replicas are pending termination")
    if available < updated:
        return RolloutState(done=False, message=f"{available} of {updated} updated replicas are available")
    return RolloutState(done=True, message="successfully rolled out")


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop(POD_TEMPLATE_HASH, None)
    return template


def rollback_patch(deployment: dict[str, Any], replicaset: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The JSON patch ``kubectl rollout undo`` sends, or None when the Deployment already runs that template.

    Both arguments are API-shaped dicts. The patch puts the ReplicaSet's pod template (minus the
    ``pod-template-hash`` label) into the Deployment, and its annotations (change-cause among them) except the
    Deployment's own bookkeeping ones (:data:`ROLLBACK_SKIPPED_ANNOTATIONS`) and our records
    (:data:`OWN_ANNOTATION_PREFIX`: a mitigation's claim must survive the rollback it guards), which stay as they are.
    """
    template = _without_hash(replicaset["spec"]["template"])
    if template == _without_hash(deployment["spec"]["template"]):
        return None
    current = deployment["metadata"].get("annotations") or {}
    annotations = {
        k: v for k, v in current.items() if k in ROLLBACK_SKIPPED_ANNOTATIONS or k.startswith(OWN_ANNOTATION_PREFIX)
    }
    annotations |= {
        k: v
        for k, v in (replicaset["metadata"].get("annotations") or {}).items()
        if k not in ROLLBACK_SKIPPED_ANNOTATIONS and not k.startswith(OWN_ANNOTATION_PREFIX)
    }
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]


def previous_revision(revisions: list[int]) -> int | None:
    """kubectl's "previous": the second highest revision (the highest is the current one)."""
    ordered = sorted(set(revisions))
    return ordered[-2] if len(ordered) >= 2 else None


# ----------------------------------------------------------------------------------------------- API helpers
async def owned_replicasets(k: Kube, dep: V1Deployment) -> list[V1ReplicaSet]:
    """The ReplicaSets this Deployment controls (selected by its selector, owned by its uid)."""
    found = await k.apps.list_namespaced_replica_set(
        dep.metadata.namespace, label_selector=selector_string(dep.spec.selector)
    )
    return [
        rs
        for rs in found.items
        if any(o.uid == dep.metadata.uid and o.controller for o in rs.metadata.owner_references or [])
    ]


def _revisions(dep: V1Deployment, replicasets: list[V1ReplicaSet]) -> list[Revision]:
    current = revision_of(dep)
    revisions = [
        Revision(
            revision=rev,
            replicaset=rs.metadata.name,
            images=[c.image for c in _containers(rs.spec.template)],
            change_cause=(rs.metadata.annotations or {}).get(CHANGE_CAUSE),
            created_at=rs.metadata.creation_timestamp,
            replicas=(rs.status.replicas if rs.status else None) or 0,
            current=rev == current,
        )
        for rs in replicasets
        if (rev := revision_of(rs)) is not None
    ]
    return sorted(revisions, key=lambda r: r.revision)


def _container(dep: V1Deployment, container: str | None) -> Any:
    containers = dep.spec.template.spec.containers
    names = [c.name for c in containers]
    if container is None and len(containers) == 1:
        return containers[0]
    for c in containers:
        if c.name == container:
            return c
    raise KubernetesError(
        f"Deployment {dep.metadata.namespace}/{dep.metadata.name} has no container {container!r}",
        hint=f"name one of: {', '.join(names)}",
        transient=False,
    )


# ------------------------------------------------------------------------------------------------ read tasks
@read_task
async def get_deployment(cluster: KubernetesCluster, name: str, namespace: str | None = None) -> DeploymentInfo:
    """``kubectl get deployment <name>``: replicas, current revision, images, conditions, last rollout time."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
        return deployment_info(dep, await owned_replicasets(k, dep))


@read_task
async def rollout_history(cluster: KubernetesCluster, name: str, namespace: str | None = None) -> RolloutHistory:
    """``kubectl rollout history deployment/<name>``: revision → ReplicaSet, images, change-cause, created."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading the rollout history of Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
        revisions = _revisions(dep, await owned_replicasets(k, dep))
    return RolloutHistory(deployment=name, namespace=ns, current_revision=revision_of(dep), revisions=revisions)


async def _pod_problems(k: Kube, dep: V1Deployment) -> str:
    pods = await k.core.list_namespaced_pod(dep.metadata.namespace, label_selector=selector_string(dep.spec.selector))
    bad = [pod_info(p) for p in pods.items]
    lines = [f"{p.name} {p.status} ({', '.join(p.images)})" for p in bad if not p.is_ready]
    return "; ".join(lines[:5]) or "no pod is failing"


@read_task(retries=1, retry_delay_seconds=5)
async def rollout_status(
    cluster: KubernetesCluster,
    name: str,
    namespace: str | None = None,
    *,
    timeout_s: float = 300,
    poll_s: float = 2.0,
) -> RolloutStatus:
    """``kubectl rollout status deployment/<name> --timeout=<timeout_s>s``: wait until the rollout is complete.

    Raises :class:`RolloutFailedError` as soon as the Deployment reports ProgressDeadlineExceeded, and
    :class:`RolloutTimeoutError` when ``timeout_s`` passes first; both say to undo.
    """
    ns = namespace_of(cluster, namespace)
    started = time.monotonic()
    undo = f"undo it (rollout_undo; kubectl rollout undo deployment/{name} -n {ns})"
    async with kube(cluster, f"watching the rollout of Deployment {ns}/{name}") as k:
        while True:
            dep = await k.apps.read_namespaced_deployment(name, ns)
            state = rollout_state(dep)
            waited = time.monotonic() - started
            if state.failed:
                raise RolloutFailedError(
                    f"Deployment {ns}/{name} exceeded its progress deadline (ProgressDeadlineExceeded: "
                    f"{state.message}); pods: {await _pod_problems(k, dep)}",
                    deployment=name,
                    namespace=ns,
                    hint=f"the new pods do not become ready: {undo}, then read their logs and events",
                )
            if state.done:
                info = deployment_info(dep, await owned_replicasets(k, dep))
                return RolloutStatus(deployment=info, message=state.message, waited_s=round(waited, 1))
            if waited >= timeout_s:
                raise RolloutTimeoutError(
                    f"Deployment {ns}/{name} did not finish rolling out within {timeout_s:g}s: {state.message}; "
                    f"pods: {await _pod_problems(k, dep)}",
                    deployment=name,
                    namespace=ns,
                    hint=f"it may still be progressing: wait longer, or {undo}",
                )
            await asyncio.sleep(max(0.0, min(poll_s, timeout_s - waited)))


# ---------------------------------------------------------------------------------------------- change tasks
@once_task  # no retries: never retry a rollback blindly (a second undo goes back again)
async def rollout_undo(
    cluster: KubernetesCluster, name: str, namespace: str | None = None, *, to_revision: int | None = None
) -> UndoResult:
    """``kubectl rollout undo deployment/<name> [--to-revision=N]``: put revision N's pod template back.

    Without ``to_revision``, the previous revision. The current one is a no-op reported as ``skipped``.
    """
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"undoing the rollout of Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
        if dep.spec.paused:
            raise KubernetesError(
                f"Deployment {ns}/{name} is paused: cannot undo it",
                hint=f"resume it first (kubectl rollout resume deployment/{name} -n {ns})",
                transient=False,
            )
        replicasets = {rev: rs for rs in await owned_replicasets(k, dep) if (rev := revision_of(rs)) is not None}
        target = to_revision or previous_revision(list(replicasets))
        if target is None or target not in replicasets:
            known = ", ".join(map(str, sorted(replicasets))) or "none"
            raise KubernetesError(
                f"Deployment {ns}/{name}: "
                + (f"revision {to_revision} is not in its history" if to_revision else "no previous revision"),
                hint=f"revisions kept: {known}; see rollout_history",
                transient=False,
            )
        rs = replicasets[target]
        patch = rollback_patch(k.api.sanitize_for_serialization(dep), k.api.sanitize_for_serialization(rs))
        if patch is not None:
            await k.apps.patch_namespaced_deployment(name, ns, patch)
    images = [c.image for c in _containers(rs.spec.template)]
    if patch is None:
        run_logger().info("Deployment %s/%s already runs revision %s: undo skipped", ns, name, target)
    else:
        run_logger().info("Deployment %s/%s: undone to revision %s (%s)", ns, name, target, ", ".join(images))
    return UndoResult(
        deployment=name,
        namespace=ns,
        outcome="skipped" if patch is None else "rolled-back",
        from_revision=revision_of(dep),
        to_revision=target,
        replicaset=rs.metadata.name,
        images=images,
        change_cause=(rs.metadata.annotations or {}).get(CHANGE_CAUSE),
        message=(
            f"skipped: the Deployment already runs the template of revision {target}"
            if patch is None
            else f"rolled back to revision {target} ({', '.join(images)}): wait with rollout_status"
        ),
    )


@once_task
async def rollout_restart(cluster: KubernetesCluster, name: str, namespace: str | None = None) -> RestartResult:
    """``kubectl rollout restart deployment/<name>``: a new restartedAt annotation on the pod template."""
    ns = namespace_of(cluster, namespace)
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    async with kube(cluster, f"restarting Deployment {ns}/{name}") as k:
        await k.apps.patch_namespaced_deployment(name, ns, patch)
    run_logger().info("Deployment %s/%s: restarted at %s", ns, name, stamp)
    return RestartResult(deployment=name, namespace=ns, restarted_at=stamp)


@idempotent_task
async def scale_deployment(
    cluster: KubernetesCluster, name: str, replicas: int, namespace: str | None = None
) -> ScaleResult:
    """``kubectl scale deployment <name> --replicas=N``; the same count is a no-op (``changed`` False)."""
    if replicas < 0:
        raise KubernetesError(f"cannot scale to {replicas} replicas", hint="use 0 or more", transient=False)
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"scaling Deployment {ns}/{name} to {replicas}") as k:
        scale = await k.apps.read_namespaced_deployment_scale(name, ns)
        previous = scale.spec.replicas or 0
        if previous != replicas:
            await k.apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": replicas}})
        found = await hpa_for(k, ns, name)
    hpa = (
        f"{found.metadata.name} (min {found.spec.min_replicas or 1}, max {found.spec.max_replicas})" if found else None
    )
    if previous != replicas:
        run_logger().info("Deployment %s/%s: replicas %s -> %s", ns, name, previous, replicas)
        if hpa:
            run_logger().warning("Deployment %s/%s is scaled by HPA %s: it may change them back", ns, name, hpa)
    return ScaleResult(
        deployment=name,
        namespace=ns,
        previous_replicas=previous,
        replicas=replicas,
        changed=previous != replicas,
        hpa=hpa,
    )


@idempotent_task
async def set_image(
    cluster: KubernetesCluster,
    name: str,
    image: str,
    namespace: str | None = None,
    *,
    container: str | None = None,
    change_cause: str | None = None,
) -> ImageChange:
    """``kubectl set image deployment/<name> <container>=<image>``, recording the change-cause annotation.

    ``container`` may be left out when the pod has one. The same image is a no-op (``changed`` False).
    """
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"setting the image of Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
        target = _container(dep, container)
        previous = target.image
        if previous != image:
            cause = change_cause or f"set image {target.name}={image}"
            patch = {
                "metadata": {"annotations": {CHANGE_CAUSE: cause}},
                "spec": {"template": {"spec": {"containers": [{"name": target.name, "image": image}]}}},
            }
            await k.apps.patch_namespaced_deployment(name, ns, patch)
    run_logger().info("Deployment %s/%s: container %s image %s -> %s", ns, name, target.name, previous, image)
    return ImageChange(
        deployment=name,
        namespace=ns,
        container=target.name,
        previous_image=previous,
        image=image,
        changed=previous != image,
    )


def _same_quantities(a: dict[str, str], b: dict[str, str]) -> bool:
    return a.keys() == b.keys() and all(parse_quantity(a[key]) == parse_quantity(b[key]) for key in a)


@idempotent_task
async def set_resources(
    cluster: KubernetesCluster,
    name: str,
    namespace: str | None = None,
    *,
    container: str | None = None,
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
) -> ResourcesChange:
    """The runbook's ``kubectl patch deployment`` of a container's requests/limits (merged key by key, as a
    strategic merge patch does); values the container already has are a no-op (``changed`` False)."""
    wanted = {"requests": requests or {}, "limits": limits or {}}
    for kind, values in wanted.items():
        for key, value in values.items():
            try:
                parse_quantity(value)
            except ValueError as err:
                raise KubernetesError(f"{kind}.{key}: {err}", transient=False) from err
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"patching the resources of Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
        target = _container(dep, container)
        res = target.resources
        previous = {
            "requests": dict((res.requests if res else None) or {}),
            "limits": dict((res.limits if res else None) or {}),
        }
        merged = {kind: previous[kind] | wanted[kind] for kind in previous}
        changed = not all(_same_quantities(previous[kind], merged[kind]) for kind in merged)
        if changed:
            body = {kind: values for kind, values in wanted.items() if values}
            patch = {"spec": {"template": {"spec": {"containers": [{"name": target.name, "resources": body}]}}}}
            await k.apps.patch_namespaced_deployment(name, ns, patch)
    run_logger().info("Deployment %s/%s: container %s resources %s -> %s", ns, name, target.name, previous, merged)
    return ResourcesChange(
        deployment=name, namespace=ns, container=target.name, previous=previous, resources=merged, changed=changed
    )
