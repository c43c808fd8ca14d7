"""What high-memory finds, plans and applies: the seed's "High Memory Usage" steps 5 and 6.

- Delete the pod (``kubectl delete pod``): planned when its working set is at or over the policy's
  ``delete_pod_ratio`` of its limit, or its container was last OOMKilled; only for a pod a Deployment owns (its
  ReplicaSet starts a fresh one).
- Raise the container's memory limit (the seed's ``kubectl patch``, :func:`tasks.kubernetes.set_resources`): by the
  policy's ``step``, never past its ``cap`` unless approved (a step that would cross it stops at the cap; a
  container already at the cap asks, even in auto mode). Planned when the container was OOMKilled or the run asks.

Each is done once per incident, whichever worker runs it and however often: before acting, the run claims it on the
Deployment (:func:`tasks.kubernetes.claim_mitigation`, ``runbooks.io/mitigation.<incident>.<action>``, a
compare-and-set), as incident-triage's rollbacks do; a second run reports "already done by <run>".
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from tasks import kubernetes as k8s
from tasks.diagnostics.actions import ActionRecord
from tasks.kubernetes.quantity import memory_bytes
from tasks.memory.policy import MemoryPolicy

OOM_KILLED = "OOMKilled"
GI, MI = 2**30, 2**20


def quantity(n: int) -> str:
    """Bytes as the Kubernetes quantity a person would write: ``5Gi``, ``4608Mi``, else bytes."""
    if n % GI == 0:
        return f"{n // GI}Gi"
    if n % MI == 0:
        return f"{n // MI}Mi"
    return str(n)


def human(n: float | None) -> str:
    """Bytes for a report: ``3.62 GiB``, ``512 MiB``; ``n/a`` when unknown."""
    if n is None:
        return "n/a"
    return f"{n / GI:.2f} GiB" if n >= GI else f"{n / MI:.0f} MiB"


class MemoryTarget(BaseModel):
    """The pod the run looks at (the alert's, else the top one by memory) and its container's figures."""

    pod: str
    namespace: str
    container: str
    deployment: str | None = None
    owner: str | None = None
    working_set_bytes: int
    limit: str | None = Field(default=None, description="the container's memory limit as written, if any")
    restarts: int = 0
    last_termination_reason: str | None = None

    @property
    def limit_bytes(self) -> int | None:
        return memory_bytes(self.limit) if self.limit else None

    @property
    def ratio(self) -> float | None:
        limit = self.limit_bytes
        return self.working_set_bytes / limit if limit else None

    @property
    def oom_killed(self) -> bool:
        return self.last_termination_reason == OOM_KILLED


def target_of(description: k8s.PodDescription, usage: k8s.PodUsage, container: str | None = None) -> MemoryTarget:
    """The figures of ``container`` (the pod's only, or the one using the most memory when not named)."""
    if container is None and usage.containers:
        container = max(usage.containers, key=lambda c: c.memory_bytes).name
    state = description.container(container)
    used = next((c.memory_bytes for c in usage.containers if c.name == state.name), usage.memory_bytes)
    return MemoryTarget(
        pod=description.pod.name,
        namespace=description.pod.namespace,
        container=state.name,
        deployment=description.deployment,
        owner=description.owner,
        working_set_bytes=used,
        limit=state.limits.get("memory"),
        restarts=state.restarts,
        last_termination_reason=state.last_termination_reason,
    )


class LimitStep(BaseModel):
    current: int
    new: int
    beyond_cap: bool = Field(description="the new limit is over the cap: only with an approval")
    clamped: bool = Field(default=False, description="the step stopped at the cap")


def next_limit(current: int, step: int, cap: int) -> LimitStep:
    """One step up from ``current``: stopped at ``cap`` when the step would cross it; past the cap (``beyond_cap``)
    only when ``current`` is at or over it already."""
    if current >= cap:
        return LimitStep(current=current, new=current + step, beyond_cap=True)
    if current + step > cap:
        return LimitStep(current=current, new=cap, beyond_cap=False, clamped=True)
    return LimitStep(current=current, new=current + step, beyond_cap=False)


class Planned(BaseModel):
    record: ActionRecord
    kind: Literal["delete-pod", "raise-limit"]
    always_ask: bool = False
    limit: LimitStep | None = None


def plan(target: MemoryTarget, policy: MemoryPolicy, *, raise_limit: bool) -> list[Planned]:
    """The actions the figures justify, in the seed's order (delete, then raise), each with its reason; an action
    its preconditions refuse is planned as ``refused`` so the report says why it was not done."""
    planned: list[Planned] = []
    where = f"{target.namespace}/{target.pod}"
    ratio = target.ratio
    figures = (
        f"working set {human(target.working_set_bytes)} of {target.limit} ({ratio:.0%})"
        if ratio is not None
        else f"working set {human(target.working_set_bytes)}, no memory limit"
    )
    if target.oom_killed:
        figures += f"; last terminated {OOM_KILLED}, {target.restarts} restart(s)"
    if target.oom_killed or (ratio is not None and ratio >= policy.delete_pod_ratio):
        record = ActionRecord(
            action="delete-pod",
            target=where,
            reason=f"{figures} (delete at {policy.delete_pod_ratio:.0%} or after an {OOM_KILLED})",
            data={"pod": target.pod, "deployment": target.deployment, "working_set_bytes": target.working_set_bytes},
        )
        if target.deployment is None:
            record.decision = "refused"
            record.detail = f"owned by {target.owner or 'nothing'}: nothing would replace it"
        planned.append(Planned(record=record, kind="delete-pod"))
    if target.oom_killed or raise_limit:
        why = f"last terminated {OOM_KILLED}" if target.oom_killed else "asked for (raise_limit)"
        container = f"{target.namespace}/{target.deployment or target.pod} {target.container}"
        limit = target.limit_bytes
        if limit is None or target.deployment is None:
            record = ActionRecord(action="raise-limit", target=container, reason=why)
            record.decision = "refused"
            record.detail = "no memory limit to raise" if limit is None else "no Deployment template to patch"
            planned.append(Planned(record=record, kind="raise-limit"))
        else:
            step = next_limit(limit, policy.limit.step_bytes, policy.limit.cap_bytes)
            note = (
                f"over the cap {policy.limit.cap}: only with an approval"
                if step.beyond_cap
                else f"stopped at the cap {policy.limit.cap}"
                if step.clamped
                else f"step {policy.limit.step}, cap {policy.limit.cap}"
            )
            record = ActionRecord(
                action="raise-limit",
                target=container,
                reason=f"{why}; {figures}: limit {quantity(step.current)} -> {quantity(step.new)} ({note})",
                data={"from": quantity(step.current), "to": quantity(step.new), "cap": policy.limit.cap},
            )
            planned.append(Planned(record=record, kind="raise-limit", always_ask=step.beyond_cap, limit=step))
    return planned


class Applied(BaseModel):
    outcome: Literal["done", "no-op", "not-done"]
    detail: str
    data: dict[str, object] = Field(default_factory=dict)


async def _claimed(
    cluster: KubernetesCluster, deployment: str, namespace: str, incident: str, action: str, key: str, run: str
) -> k8s.MitigationClaim:
    return await k8s.claim_mitigation(cluster, deployment, f"{incident}.{action}", action, key, run, namespace)


async def delete_pod(
    cluster: KubernetesCluster, target: MemoryTarget, incident: str, run: str, *, timeout_s: float, poll_s: float = 2.0
) -> Applied:
    """Claim the incident's deletion, wait for the Deployment's turn (one pod deleted at a time: the replicas of a
    leaking release all alert together, and deleting them all at once is an outage), delete the pod, record the
    claim done, wait for its replacement to be ready (verify), then give the turn back."""
    assert target.deployment is not None
    dep, ns = target.deployment, target.namespace
    key = f"{incident}:delete-pod:{target.pod}"
    claim = await _claimed(cluster, dep, ns, incident, "delete-pod", key, run)
    if not claim.claimed:
        return Applied(outcome="no-op", detail=f"already done by run {claim.run} ({claim.done or claim.at})")
    deadline, waited_for = time.monotonic() + timeout_s, ""
    while not (turn := await k8s.claim_turn(cluster, dep, "delete-pod", run, hold_s=timeout_s, namespace=ns)).granted:
        waited_for = turn.run
        if time.monotonic() >= deadline:
            await k8s.release_mitigation_claim(cluster, dep, f"{incident}.delete-pod", run, ns)
            return Applied(
                outcome="not-done",
                detail=f"another pod of {dep} is being replaced (run {turn.run}) after {timeout_s:.0f}s: "
                "not deleting a second one at once; run again once it is ready",
            )
        await asyncio.sleep(poll_s)
    try:
        selector = (await k8s.get_deployment(cluster, dep, ns)).selector
        before = [p.name for p in await k8s.list_pods(cluster, ns, label_selector=selector)]
        deleted_at = time.time()
        try:
            deletion = await k8s.delete_pod(cluster, target.pod, ns)
        except Exception:
            await k8s.release_mitigation_claim(cluster, dep, f"{incident}.delete-pod", run, ns)
            raise
        done = f"pod {target.pod} {deletion.outcome}"
        await k8s.complete_mitigation_claim(cluster, dep, f"{incident}.delete-pod", run, done, ns)
        replaced = await k8s.wait_pod_replaced(cluster, target.pod, selector, before, ns, timeout_s=timeout_s)
        replaced_at = time.time()
    finally:
        await k8s.release_turn(cluster, dep, "delete-pod", run, ns)
    detail = (
        (f"after run {waited_for}'s deletion was replaced; " if waited_for else "")
        + f"pod {target.pod} {deletion.outcome}; "
        + (
            f"replaced by {', '.join(replaced.new)} in {replaced.waited_s}s"
            if replaced.replaced
            else f"no ready replacement within {replaced.waited_s}s"
        )
    )
    return Applied(
        outcome="done" if deletion.outcome == "deleted" else "no-op",
        detail=detail,
        data={
            "deleted": target.pod,
            "replacements": replaced.new,
            "replaced": replaced.replaced,
            "deleted_at": deleted_at,
            "replaced_at": replaced_at,
        },
    )


async def raise_limit(
    cluster: KubernetesCluster, target: MemoryTarget, step: LimitStep, incident: str, run: str, *, timeout_s: float
) -> Applied:
    """Claim, set the container's memory limit to ``step.new``, then follow the rollout it starts (verify: a rollout
    that fails or times out raises :class:`~tasks.kubernetes.RolloutError`, which says to undo)."""
    assert target.deployment is not None
    key = f"{incident}:raise-limit:{target.deployment}/{target.container}"
    claim = await _claimed(cluster, target.deployment, target.namespace, incident, "raise-limit", key, run)
    if not claim.claimed:
        return Applied(outcome="no-op", detail=f"already done by run {claim.run} ({claim.done or claim.at})")
    try:
        change = await k8s.set_resources(
            cluster,
            target.deployment,
            target.namespace,
            container=target.container,
            limits={"memory": quantity(step.new)},
        )
    except Exception:
        await k8s.release_mitigation_claim(cluster, target.deployment, f"{incident}.raise-limit", run, target.namespace)
        raise
    previous = change.previous["limits"].get("memory", "none")
    detail = f"memory limit of {target.container}: {previous} -> {quantity(step.new)}"
    await k8s.complete_mitigation_claim(
        cluster, target.deployment, f"{incident}.raise-limit", run, detail, target.namespace
    )
    if change.changed:
        status = await k8s.rollout_status(cluster, target.deployment, target.namespace, timeout_s=timeout_s, poll_s=1)
        detail += f"; {status.message} in {status.waited_s:.0f}s"
    return Applied(
        outcome="done" if change.changed else "no-op",
        detail=detail,
        data={"from": previous, "to": quantity(step.new), "deployment": target.deployment},
    )
