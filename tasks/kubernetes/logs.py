"""``kubectl logs``: of a pod, or of a Deployment (one pod, as kubectl picks it, or all of them), and a grep."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from kubernetes_asyncio.client import V1Pod
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import read_task
from tasks.kubernetes._api import Kube, deployment_pods, kube, namespace_of, pick_pod

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


def grep_lines(lines: Iterable[str], pattern: str, *, ignore_case: bool = False) -> list[str]:
    """``grep -E <pattern>``: the lines matching the regular expression (e.g. ``ERROR|WARN``)."""
    regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    return [line for line in lines if regex.search(line)]


class PodLogs(BaseModel):
    pod: str
    namespace: str
    container: str
    previous: bool = False
    lines: list[str] = Field(default_factory=list)

    def grep(self, pattern: str, *, ignore_case: bool = False) -> list[str]:
        return grep_lines(self.lines, pattern, ignore_case=ignore_case)


class DeploymentLogs(BaseModel):
    deployment: str
    namespace: str
    pods: list[PodLogs] = Field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """Every line; prefixed with ``[pod/<name>/<container>]`` (kubectl's ``--prefix``) when from several pods."""
        if len(self.pods) == 1:
            return list(self.pods[0].lines)
        return [f"[pod/{p.pod}/{p.container}] {line}" for p in self.pods for line in p.lines]

    def grep(self, pattern: str, *, ignore_case: bool = False) -> list[str]:
        return grep_lines(self.lines, pattern, ignore_case=ignore_case)


def default_container(pod: V1Pod) -> str:
    """The container kubectl reads when none is named: the default-container annotation, else the first."""
    annotations = pod.metadata.annotations or {}
    return annotations.get(DEFAULT_CONTAINER_ANNOTATION) or pod.spec.containers[0].name


async def _read(
    k: Kube,
    pod: V1Pod,
    container: str | None,
    *,
    since_seconds: int | None,
    tail_lines: int | None,
    previous: bool,
    timestamps: bool,
    limit_bytes: int | None,
) -> PodLogs:
    name, namespace = pod.metadata.name, pod.metadata.namespace
    container = container or default_container(pod)
    body = await k.get_raw(
        f"/api/v1/namespaces/{namespace}/pods/{name}/log",
        container=container,
        sinceSeconds=since_seconds,
        tailLines=tail_lines,
        previous="true" if previous else None,
        timestamps="true" if timestamps else None,
        limitBytes=limit_bytes,
    )
    return PodLogs(
        pod=name,
        namespace=namespace,
        container=container,
        previous=previous,
        lines=body.decode(errors="replace").splitlines(),
    )


@read_task
async def pod_logs(
    cluster: KubernetesCluster,
    pod: str,
    namespace: str | None = None,
    *,
    container: str | None = None,
    since_seconds: int | None = None,
    tail_lines: int | None = None,
    previous: bool = False,
    timestamps: bool = False,
    limit_bytes: int | None = None,
) -> PodLogs:
    """``kubectl logs <pod> [-c <container>] [--since=<s>s] [--tail=<n>] [--previous]``."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading the logs of pod {ns}/{pod}") as k:
        found = await k.core.read_namespaced_pod(pod, ns)
        return await _read(
            k,
            found,
            container,
            since_seconds=since_seconds,
            tail_lines=tail_lines,
            previous=previous,
            timestamps=timestamps,
            limit_bytes=limit_bytes,
        )


@read_task
async def deployment_logs(
    cluster: KubernetesCluster,
    deployment: str,
    namespace: str | None = None,
    *,
    all_pods: bool = False,
    container: str | None = None,
    since_seconds: int | None = None,
    tail_lines: int | None = None,
    previous: bool = False,
    timestamps: bool = False,
    limit_bytes: int | None = None,
) -> DeploymentLogs:
    """``kubectl logs deployment/<name>``: one pod, picked as kubectl picks it (ready, running, newest);
    ``all_pods`` reads every pod of the Deployment that is not terminating, concurrently."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading the logs of Deployment {ns}/{deployment}") as k:
        pods = await deployment_pods(k, ns, deployment)
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        chosen = sorted(live, key=lambda p: p.metadata.name) if all_pods else [p for p in [pick_pod(pods)] if p]
        if not chosen:
            raise KubernetesError(
                f"Deployment {ns}/{deployment} has no pods to read logs from",
                hint="check its replicas and events (list_events)",
                transient=False,
            )
        logs = await asyncio.gather(
            *(
                _read(
                    k,
                    p,
                    container,
                    since_seconds=since_seconds,
                    tail_lines=tail_lines,
                    previous=previous,
                    timestamps=timestamps,
                    limit_bytes=limit_bytes,
                )
                for p in chosen
            )
        )
    return DeploymentLogs(deployment=deployment, namespace=ns, pods=list(logs))
