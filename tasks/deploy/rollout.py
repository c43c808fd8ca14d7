"""A release of several Deployments as one unit: recorded, rolled out, followed (failing fast), and rolled back.

The seed rolls out one Deployment and watches it with ``kubectl rollout status --timeout=600s``, so a crash-looping
release is noticed after up to ten minutes, and its rollback is ``kubectl rollout undo`` typed per Deployment.
Here :func:`follow_rollout` fails as soon as a new pod crash-loops, and :func:`roll_back_release` puts every
Deployment of the release back on its recorded images together, found by their images in the rollout history (a
rollback renumbers revisions, so a recorded revision number alone can point nowhere).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.retry import once_task, read_task
from tasks import kubernetes as k8s
from tasks.deploy.policy import RolloutRules
from tasks.kubernetes._api import kube, namespace_of, run_logger, selector_string
from tasks.kubernetes.deployments import (
    POD_TEMPLATE_HASH,
    RolloutFailedError,
    owned_replicasets,
    revision_of,
    rollout_state,
)
from tasks.kubernetes.inventory import pod_info
from tasks.reporting import update_progress


class DeployedVersion(BaseModel):
    """What one Deployment runs: its revision and its containers' images."""

    deployment: str
    revision: int | None
    images: list[str]


class Release(BaseModel):
    """What the Deployments of a release run, together."""

    namespace: str
    versions: list[DeployedVersion]
    captured_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def images(self, deployment: str) -> list[str]:
        return next(v.images for v in self.versions if v.deployment == deployment)

    def describe(self) -> str:
        return "; ".join(f"{v.deployment} r{v.revision} {', '.join(v.images)}" for v in self.versions)


def image_with_tag(image: str, tag: str) -> str:
    """``ghcr.io/org/app:v1`` with tag ``v2`` → ``ghcr.io/org/app:v2`` (a digest or a bare name gets the tag)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    repository = name.rsplit(":", 1)[0] if ":" in last else name
    return f"{repository}:{tag}"


@read_task
async def capture_release(cluster: KubernetesCluster, deployments: list[str], namespace: str | None = None) -> Release:
    """``kubectl rollout history`` of each Deployment, kept as the release to come back to."""
    infos = await asyncio.gather(*(k8s.get_deployment.fn(cluster, name, namespace) for name in deployments))
    return Release(
        namespace=namespace_of(cluster, namespace),
        versions=[DeployedVersion(deployment=i.name, revision=i.revision, images=i.images) for i in infos],
    )


class PodProblem(BaseModel):
    deployment: str
    pod: str
    status: str
    restarts: int
    images: list[str]


class RolloutOutcome(BaseModel):
    outcome: Literal["complete", "failed", "timeout"]
    waited_s: float
    message: str
    problems: list[PodProblem] = Field(default_factory=list)
    release: Release | None = None  # what runs when it completed


async def _new_pod_problems(
    cluster: KubernetesCluster, namespace: str, name: str, rules: RolloutRules
) -> tuple[bool, str, list[PodProblem]]:
    """(done, kubectl's message, failing pods of the Deployment's newest ReplicaSet)."""
    async with kube(cluster, f"following the rollout of Deployment {namespace}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, namespace)
        state = rollout_state(dep)
        if state.failed:
            raise RolloutFailedError(
                f"Deployment {namespace}/{name} exceeded its progress deadline: {state.message}",
                deployment=name,
                namespace=namespace,
                hint="the new pods do not become ready: the release is rolled back",
            )
        replicasets = await owned_replicasets(k, dep)
        current = max(replicasets, key=lambda rs: revision_of(rs) or 0, default=None)
        pods = await k.core.list_namespaced_pod(namespace, label_selector=selector_string(dep.spec.selector))
    if current is None:
        return state.done, state.message, []
    template_hash = (current.metadata.labels or {}).get(POD_TEMPLATE_HASH)
    problems = []
    for pod in pods.items:
        if (pod.metadata.labels or {}).get(POD_TEMPLATE_HASH) != template_hash or pod.metadata.deletion_timestamp:
            continue
        info = pod_info(pod)
        failing = info.reason in rules.failing_reasons or info.last_termination_reason in rules.failing_reasons
        if failing or info.restarts >= rules.max_new_pod_restarts:
            problems.append(
                PodProblem(
                    deployment=name,
                    pod=info.name,
                    status=info.reason or info.status,
                    restarts=info.restarts,
                    images=info.images,
                )
            )
    return state.done, state.message, problems


@read_task(retries=1, retry_delay_seconds=2)
async def follow_rollout(
    cluster: KubernetesCluster,
    deployments: list[str],
    rules: RolloutRules,
    namespace: str | None = None,
    *,
    progress: UUID | None = None,
) -> RolloutOutcome:
    """``kubectl rollout status`` of every Deployment at once, failing as soon as a pod of a new ReplicaSet
    crash-loops or restarts (``rules``), not after the progress deadline; ``progress`` is a progress artifact."""
    ns = namespace_of(cluster, namespace)
    started = time.monotonic()
    logger = run_logger()
    last: dict[str, str] = {}
    while True:
        waited = round(time.monotonic() - started, 1)
        try:
            states = await asyncio.gather(*(_new_pod_problems(cluster, ns, name, rules) for name in deployments))
        except RolloutFailedError as err:
            return RolloutOutcome(outcome="failed", waited_s=waited, message=str(err))
        problems = [p for _, _, found in states for p in found]
        for name, (_, message, _) in zip(deployments, states, strict=True):
            if last.get(name) != message:
                logger.info("Deployment %s/%s: %s", ns, name, message)
                last[name] = message
        if problems:
            first = problems[0]
            return RolloutOutcome(
                outcome="failed",
                waited_s=waited,
                message=f"new pod {first.pod} of {first.deployment} is {first.status} "
                f"({first.restarts} restart(s), {', '.join(first.images)})",
                problems=problems,
            )
        done = sum(1 for d, _, _ in states if d)
        if progress is not None:
            await update_progress(progress, 100.0 * done / len(deployments), f"{done}/{len(deployments)} rolled out")
        if done == len(deployments):
            release = await capture_release.fn(cluster, deployments, ns)
            return RolloutOutcome(
                outcome="complete", waited_s=waited, message="every Deployment rolled out", release=release
            )
        if waited >= rules.timeout_s:
            pending = ", ".join(f"{n}: {m}" for n, (d, m, _) in zip(deployments, states, strict=True) if not d)
            return RolloutOutcome(
                outcome="timeout", waited_s=waited, message=f"not rolled out in {rules.timeout_s:g}s: {pending}"
            )
        await asyncio.sleep(rules.poll_s)


class RollbackStep(BaseModel):
    deployment: str
    outcome: Literal["rolled-back", "skipped", "set-image"]
    to_revision: int | None
    images: list[str]
    detail: str


async def _revision_with(cluster: KubernetesCluster, name: str, namespace: str, images: list[str]) -> int | None:
    history = await k8s.rollout_history.fn(cluster, name, namespace)
    matching = [r.revision for r in history.revisions if r.images == images]
    return max(matching) if matching else None


@once_task  # never retried: a second undo would go back again
async def roll_back_deployment(
    cluster: KubernetesCluster, name: str, images: list[str], namespace: str | None = None
) -> RollbackStep:
    """``kubectl rollout undo --to-revision=<the revision that ran images>``; when that revision was pruned from
    the history, ``kubectl set image`` back to ``images``. A Deployment already on ``images`` is skipped."""
    ns = namespace_of(cluster, namespace)
    current = await k8s.get_deployment.fn(cluster, name, ns)
    if current.images == images:
        return RollbackStep(
            deployment=name, outcome="skipped", to_revision=current.revision, images=images, detail="already runs it"
        )
    revision = await _revision_with(cluster, name, ns, images)
    if revision is not None:
        undone = await k8s.rollout_undo.fn(cluster, name, ns, to_revision=revision)
        return RollbackStep(
            deployment=name, outcome="rolled-back", to_revision=revision, images=undone.images, detail=undone.message
        )
    for container, image in zip(current.containers, images, strict=False):
        await k8s.set_image.fn(cluster, name, image, ns, container=container.name, change_cause=f"roll back to {image}")
    return RollbackStep(
        deployment=name,
        outcome="set-image",
        to_revision=None,
        images=images,
        detail="no revision with these images is left in the history: set the images back",
    )


async def roll_back_release(
    cluster: KubernetesCluster, release: Release, rules: RolloutRules
) -> tuple[list[RollbackStep], RolloutOutcome]:
    """Every Deployment of ``release`` back on its images, together, then followed until rolled out."""
    steps = await asyncio.gather(
        *(roll_back_deployment(cluster, v.deployment, v.images, release.namespace) for v in release.versions)
    )
    names = [v.deployment for v in release.versions]
    # the old pods were healthy: a restart count carried by none of them, so the same fail-fast rules apply
    outcome = await follow_rollout(cluster, names, rules, release.namespace)
    return list(steps), outcome


__all__ = [
    "DeployedVersion",
    "PodProblem",
    "Release",
    "RollbackStep",
    "RolloutOutcome",
    "capture_release",
    "follow_rollout",
    "image_with_tag",
    "roll_back_deployment",
    "roll_back_release",
]
