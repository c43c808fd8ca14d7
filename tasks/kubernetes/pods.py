"""``kubectl describe pod``: one pod's containers (requests, limits, restarts, the last termination and why: an
``OOMKilled`` shows here), the workload that owns it, and its events; and waiting for a deleted pod's replacement.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from kubernetes_asyncio.client import V1Pod
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import read_task
from tasks.kubernetes._api import kube, namespace_of, pod_is_ready
from tasks.kubernetes.inventory import EventInfo, PodInfo, event_info, pod_info


class ContainerState(BaseModel):
    """One container as ``kubectl describe pod`` shows it."""

    name: str
    image: str
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)
    restarts: int = 0
    state: str = Field(default="", description="Running, Waiting (reason) or Terminated (reason)")
    last_termination_reason: str | None = Field(default=None, description="e.g. OOMKilled, Error")
    last_termination_exit_code: int | None = None
    last_terminated_at: datetime | None = None


class PodDescription(BaseModel):
    pod: PodInfo
    containers: list[ContainerState]
    owner: str | None = Field(default=None, description="Kind/name of the controller: ReplicaSet/x, StatefulSet/y")
    deployment: str | None = Field(default=None, description="the Deployment owning the ReplicaSet, if any")
    events: list[EventInfo] = Field(default_factory=list, description="oldest first")

    def container(self, name: str | None = None) -> ContainerState:
        """The container named ``name``, or the pod's only (or first) container."""
        for c in self.containers:
            if c.name == name:
                return c
        if name is not None:
            raise KubernetesError(
                f"pod {self.pod.namespace}/{self.pod.name} has no container {name!r}",
                hint=f"name one of: {', '.join(c.name for c in self.containers)}",
                transient=False,
            )
        return self.containers[0]


def container_states(pod: V1Pod) -> list[ContainerState]:
    statuses = {cs.name: cs for cs in (pod.status.container_statuses if pod.status else None) or []}
    found = []
    for c in (pod.spec.containers if pod.spec else None) or []:
        cs = statuses.get(c.name)
        state, last = "", None
        if cs is not None and cs.state is not None:
            if cs.state.running:
                state = "Running"
            elif cs.state.waiting:
                state = f"Waiting ({cs.state.waiting.reason or ''})"
            elif cs.state.terminated:
                state = f"Terminated ({cs.state.terminated.reason or ''})"
        if cs is not None and cs.last_state is not None:
            last = cs.last_state.terminated
        found.append(
            ContainerState(
                name=c.name,
                image=c.image,
                requests=dict((c.resources.requests if c.resources else None) or {}),
                limits=dict((c.resources.limits if c.resources else None) or {}),
                restarts=(cs.restart_count or 0) if cs is not None else 0,
                state=state,
                last_termination_reason=last.reason if last else None,
                last_termination_exit_code=last.exit_code if last else None,
                last_terminated_at=last.finished_at if last else None,
            )
        )
    return found


@read_task
async def describe_pod(
    cluster: KubernetesCluster, name: str, namespace: str | None = None, *, events: int = 20
) -> PodDescription:
    """``kubectl describe pod <name>``: containers with limits, restarts and last termination reason, the owning
    workload (a ReplicaSet's Deployment), and the pod's last ``events`` events."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"describing pod {ns}/{name}") as k:
        pod = await k.core.read_namespaced_pod(name, ns)
        controller = next((o for o in pod.metadata.owner_references or [] if o.controller), None)
        deployment = None
        if controller is not None and controller.kind == "ReplicaSet":
            try:
                rs = await k.apps.read_namespaced_replica_set(controller.name, ns)
            except ApiException as err:
                if err.status != 404:
                    raise
            else:
                owner = next((o for o in rs.metadata.owner_references or [] if o.controller), None)
                deployment = owner.name if owner is not None and owner.kind == "Deployment" else None
        found = await k.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    infos = sorted((event_info(e) for e in found.items), key=lambda e: e.last_seen.timestamp() if e.last_seen else 0.0)
    return PodDescription(
        pod=pod_info(pod),
        containers=container_states(pod),
        owner=f"{controller.kind}/{controller.name}" if controller is not None else None,
        deployment=deployment,
        events=infos[max(0, len(infos) - events) :],
    )


class PodReplacement(BaseModel):
    old: str
    gone: bool = Field(description="the old pod no longer exists (or is terminating)")
    new: list[str] = Field(default_factory=list, description="ready pods of the selector that were not there before")
    waited_s: float

    @property
    def replaced(self) -> bool:
        return self.gone and bool(self.new)


@read_task(retries=0)
async def wait_pod_replaced(
    cluster: KubernetesCluster,
    name: str,
    label_selector: str,
    before: list[str],
    namespace: str | None = None,
    *,
    timeout_s: float = 120.0,
    poll_s: float = 1.0,
) -> PodReplacement:
    """Poll until pod ``name`` is gone or terminating and a ready pod of ``label_selector`` not among ``before``
    (the pods there before the deletion) runs: its replacement. When ``timeout_s`` passes first the answer says
    how far it got (``replaced`` False); it never raises for that."""
    ns = namespace_of(cluster, namespace)
    started, known = time.monotonic(), set(before)
    async with kube(cluster, f"waiting for pod {ns}/{name} to be replaced") as k:
        while True:
            pods = (await k.core.list_namespaced_pod(ns, label_selector=label_selector)).items
            old = next((p for p in pods if p.metadata.name == name), None)
            gone = old is None or old.metadata.deletion_timestamp is not None
            new = sorted(
                p.metadata.name
                for p in pods
                if p.metadata.name not in known and p.metadata.deletion_timestamp is None and pod_is_ready(p)
            )
            waited = round(time.monotonic() - started, 1)
            if (gone and new) or waited >= timeout_s:
                return PodReplacement(old=name, gone=gone, new=new, waited_s=waited)
            await asyncio.sleep(poll_s)
