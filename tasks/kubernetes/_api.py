"""Shared by every Kubernetes task: building the API client from the block, mapping API errors, small helpers.

Clients are built from the block's ``KubernetesCredentials`` the way ``KubernetesCredentials.get_client`` builds
its ``ApiClient`` (kubeconfig dict of the block, else in-cluster, else ``~/.kube/config``), into a private
``Configuration`` (never the process-wide default), so one ``ApiClient`` serves every API group a task needs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import config
from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    AutoscalingV1Api,
    Configuration,
    CoreV1Api,
    CustomObjectsApi,
    NetworkingV1Api,
    V1LabelSelector,
    V1Pod,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.stream import WsApiClient
from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from blocks.kubernetes import KubernetesCluster
from kernel.errors import ConfigurationError, KubernetesError


class Condition(BaseModel):
    """A status condition (of a node, a Deployment, a custom resource)."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition: datetime | None = None

    @classmethod
    def of(cls, c: Any) -> Condition:
        """From a client model (V1NodeCondition, V1DeploymentCondition) or the dict of a custom resource."""
        if isinstance(c, dict):
            return cls(
                type=str(c.get("type")),
                status=str(c.get("status")),
                reason=c.get("reason"),
                message=c.get("message"),
                last_transition=c.get("lastTransitionTime"),
            )
        return cls(
            type=c.type,
            status=c.status,
            reason=c.reason,
            message=c.message,
            last_transition=getattr(c, "last_transition_time", None),
        )


class Kube:
    """The API groups the tasks use, over one ``ApiClient``."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.core = CoreV1Api(api)
        self.apps = AppsV1Api(api)
        self.autoscaling = AutoscalingV1Api(api)
        self.networking = NetworkingV1Api(api)
        self.custom = CustomObjectsApi(api)

    async def get_raw(self, path: str, **query: Any) -> bytes:
        """GET ``path`` and return the body as sent (JSON of a List to export, or the text of a log).

        The typed methods would turn a log that happens to be JSON into a dict, and would drop fields the
        client's models do not know; this does neither, and does not log the body (Secrets go through it).
        """
        params = [(k, v) for k, v in query.items() if v is not None]
        response = await self.api.call_api(
            path,
            "GET",
            query_params=params,
            header_params={"Accept": "application/json, */*"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        async with response:
            body: bytes = await response.read()
            if response.status >= 300:
                err = ApiException(status=response.status, reason=response.reason)
                err.body = body
                raise err
        return body


async def _configuration(cluster: KubernetesCluster) -> Configuration:
    configuration = Configuration()
    credentials = cluster.credentials
    try:
        if credentials.cluster_config:
            await config.load_kube_config_from_dict(
                config_dict=cluster.kubeconfig(),
                context=credentials.cluster_config.context_name,
                client_configuration=configuration,
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                await config.load_kube_config(client_configuration=configuration)
    except (ConfigException, OSError, KeyError, TypeError, ValueError) as err:
        raise ConfigurationError(
            cluster.display_name,
            "credentials",
            f"the kubeconfig cannot be used: {err}",
            hint="save a KubernetesClusterConfig made with KubernetesClusterConfig.from_file(<kubeconfig>)",
        ) from err
    # The server validates what we send; the client's models are newer than some servers (v1.20 in the sandbox)
    # and would refuse objects that lack fields they call required.
    configuration.client_side_validation = False
    return configuration


@asynccontextmanager
async def kube(cluster: KubernetesCluster, action: str, *, websocket: bool = False) -> AsyncIterator[Kube]:
    """An API client for ``cluster``; API and network failures inside the block become ``KubernetesError``.

    ``action`` says what the task was doing, for the error message ("reading Deployment production/x").
    """
    configuration = await _configuration(cluster)
    client = WsApiClient(configuration=configuration) if websocket else ApiClient(configuration=configuration)
    async with client as api:
        try:
            yield Kube(api)
        except ApiException as err:
            raise api_error(err.status or 0, err.reason, err.body, action, cluster) from err
        except aiohttp.ClientResponseError as err:  # a refused websocket upgrade (exec) lands here
            raise api_error(err.status, err.message, None, action, cluster) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise KubernetesError(
                f"{action}: cannot reach the Kubernetes API at {configuration.host}: {err or type(err).__name__}",
                hint=f"check that the API server is up and the server address in block {cluster.display_name!r}",
                transient=True,
            ) from err


def status_message(body: Any) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the body's first line."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    try:
        return str(json.loads(text).get("message") or text)[:300]
    except (ValueError, AttributeError):
        return text.strip().splitlines()[0][:300] if text.strip() else ""


def api_error(status: int, reason: str | None, body: Any, action: str, cluster: KubernetesCluster) -> KubernetesError:
    """One ``KubernetesError`` per API answer: what failed, why, what to do; transient only for 429, 5xx."""
    detail = status_message(body) or reason or "no detail"
    message = f"{action}: {status} {detail}"
    hint: str | None
    if status == 401:
        hint = f"the credentials of block {cluster.display_name!r} were refused: renew its kubeconfig/token"
    elif status == 403:
        hint = (
            f"the user of block {cluster.display_name!r} lacks this RBAC permission: add the verb and resource to "
            "the ClusterRole bound to it (runbooks-operator in the sandbox)"
        )
    elif status == 404:
        hint = "check the name and the namespace (and that the API group is served)"
    elif status == 409:
        hint = "it changed or exists already: read it again and decide"
    elif status == 422 or status == 400:
        hint = "the API server refused the request as invalid: fix the input"
    elif status == 429 or status >= 500:
        hint = "the API server is overloaded or failing: try again later"
    else:
        hint = None
    return KubernetesError(message, hint=hint, status_code=status or None, transient=status == 429 or status >= 500)


# --------------------------------------------------------------------------------------------- small helpers
def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger (the UI shows what a task changed), or a module logger outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tasks.kubernetes")


def namespace_of(cluster: KubernetesCluster, namespace: str | None) -> str:
    return namespace or cluster.namespace


def params(**kwargs: Any) -> dict[str, Any]:
    """Keyword arguments without the ``None`` ones (the generated client's stubs do not accept ``None``)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def now() -> datetime:
    return datetime.now(UTC)


def age_s(created: datetime | None) -> int | None:
    return None if created is None else max(0, int((now() - created).total_seconds()))


def selector_string(selector: V1LabelSelector | None) -> str:
    """A ``LabelSelector`` as the query string the API takes (``app=x,tier in (a,b)``)."""
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        parts.append(
            {
                "In": f"{expr.key} in ({values})",
                "NotIn": f"{expr.key} notin ({values})",
                "Exists": expr.key,
                "DoesNotExist": f"!{expr.key}",
            }[expr.operator]
        )
    return ",".join(parts)


def pod_is_ready(pod: V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def pick_pod(pods: list[V1Pod]) -> V1Pod | None:
    """The pod ``kubectl logs/exec deployment/x`` would pick: ready, running, not terminating, then the newest."""
    live = [p for p in pods if p.metadata.deletion_timestamp is None] or pods
    if not live:
        return None

    def rank(p: V1Pod) -> tuple[bool, bool, float]:
        created = p.metadata.creation_timestamp
        return (
            pod_is_ready(p),
            (p.status.phase if p.status else None) == "Running",
            created.timestamp() if created else 0,
        )

    return max(live, key=rank)


async def deployment_pods(k: Kube, namespace: str, deployment: str) -> list[V1Pod]:
    """The pods a Deployment selects (by its selector, as kubectl does)."""
    dep = await k.apps.read_namespaced_deployment(deployment, namespace)
    return list((await k.core.list_namespaced_pod(namespace, label_selector=selector_string(dep.spec.selector))).items)


async def hpa_for(k: Kube, namespace: str, deployment: str) -> Any:
    """The HorizontalPodAutoscaler whose target is the Deployment, or None."""
    hpas = await k.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace)
    for h in hpas.items:
        ref = h.spec.scale_target_ref
        if ref.kind == "Deployment" and ref.name == deployment:
            return h
    return None


async def list_metadata(k: Kube, path: str) -> Any:
    """``GET path`` as a PartialObjectMetadataList: names, labels and annotations only (a Secret's values are never
    fetched). The generated client has no call for this media type, hence the raw ``call_api``."""
    response = await k.api.call_api(
        path,
        "GET",
        header_params={"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    async with response:
        data = await response.read()
        if response.status >= 300:
            err = ApiException(status=response.status, reason=response.reason)
            err.body = data
            raise err
    return json.loads(data)
