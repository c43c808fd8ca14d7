"""``kubectl exec <pod> -- <command>`` and ``kubectl exec deployment/<name> -- <command>``, over the API's
websocket (channel protocol v4: stdout, stderr, and the exit status on the error channel).

No retries: a command may not be idempotent (``redis-cli FLUSHALL``). Its output is returned, never logged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client import V1Pod
from pydantic import BaseModel

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import once_task
from tasks.kubernetes._api import deployment_pods, kube, namespace_of, pick_pod, run_logger
from tasks.kubernetes.logs import default_container

STDOUT, STDERR, ERROR = 1, 2, 3


class ExecResult(BaseModel):
    pod: str
    namespace: str
    container: str
    command: list[str]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def exit_code_of(status: str) -> int:
    """The exit code in the error channel's ``Status``: Success is 0, NonZeroExitCode carries it; anything
    else (the command could not start) is a ``KubernetesError``."""
    if not status.strip():
        raise KubernetesError("exec ended without an exit status", hint="the connection was cut: retry", transient=True)
    body = json.loads(status)
    if body.get("status") == "Success":
        return 0
    for cause in (body.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    raise KubernetesError(
        f"exec failed: {body.get('message') or body.get('reason') or status[:200]}",
        hint="check that the command exists in the container image",
        transient=False,
    )


async def _exec(
    cluster: KubernetesCluster, pod: V1Pod, command: list[str], container: str | None, timeout_s: float
) -> ExecResult:
    name, ns = pod.metadata.name, pod.metadata.namespace
    container = container or default_container(pod)
    out: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray(), ERROR: bytearray()}
    async with kube(cluster, f"running {command[0]!r} in pod {ns}/{name}", websocket=True) as k:
        connect: Any = await k.core.connect_get_namespaced_pod_exec(
            name,
            ns,
            command=cast(str, command),  # the websocket client sends a list as repeated ``command`` parameters
            container=container,
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )
        try:
            async with asyncio.timeout(timeout_s), connect as ws:
                async for message in ws:
                    if message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        break
                    data = message.data if isinstance(message.data, bytes) else message.data.encode()
                    if data[:1] and data[0] in out:
                        out[data[0]] += data[1:]
        except TimeoutError as err:
            raise KubernetesError(
                f"{' '.join(command)!r} in pod {ns}/{name} did not finish within {timeout_s:g}s",
                hint="raise timeout_s, or run it as a Job",
                transient=False,
            ) from err
    exit_code = exit_code_of(out[ERROR].decode(errors="replace"))
    # the program only: arguments may hold passwords (psql -c "ALTER USER ... PASSWORD ..."), output may hold data
    run_logger().info("exec %s in pod %s/%s [%s]: exit code %s", command[0], ns, name, container, exit_code)
    return ExecResult(
        pod=name,
        namespace=ns,
        container=container,
        command=command,
        exit_code=exit_code,
        stdout=out[STDOUT].decode(errors="replace"),
        stderr=out[STDERR].decode(errors="replace"),
    )


@once_task
async def exec_in_pod(
    cluster: KubernetesCluster,
    pod: str,
    command: list[str],
    namespace: str | None = None,
    *,
    container: str | None = None,
    timeout_s: float = 60,
) -> ExecResult:
    """``kubectl exec <pod> [-c <container>] -- <command...>``: stdout, stderr and exit code."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading pod {ns}/{pod}") as k:
        found = await k.core.read_namespaced_pod(pod, ns)
    return await _exec(cluster, found, command, container, timeout_s)


@once_task
async def exec_in_deployment(
    cluster: KubernetesCluster,
    deployment: str,
    command: list[str],
    namespace: str | None = None,
    *,
    container: str | None = None,
    timeout_s: float = 60,
) -> ExecResult:
    """``kubectl exec deployment/<name> -- <command...>``: in the pod kubectl would pick (ready, newest)."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"finding a pod of Deployment {ns}/{deployment}") as k:
        chosen = pick_pod(await deployment_pods(k, ns, deployment))
    if chosen is None:
        raise KubernetesError(
            f"Deployment {ns}/{deployment} has no pod to exec in", hint="check its replicas and events", transient=False
        )
    return await _exec(cluster, chosen, command, container, timeout_s)
