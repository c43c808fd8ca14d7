"""``metrics.k8s.io/v1beta1`` as metrics-server serves it, behind the API server's aggregator (APIService
``v1beta1.metrics.k8s.io`` -> Service ``kube-system/metrics-server`` -> this server on its ClusterIP). The
aggregator presents the front-proxy client certificate; resource paths require it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sandbox.k8s.behaviour import PodSim, PodStore, rfc3339

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
GV = f"{GROUP}/{VERSION}"
STORE: web.AppKey[PodStore] = web.AppKey("store", PodStore)
OPEN_PATHS = ("/healthz", "/livez", "/readyz")


def cpu(nanocores: float) -> str:
    return f"{int(nanocores)}n"


def memory(size: float) -> str:
    return f"{int(size) // 1024}Ki"


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    return web.json_response({**body, "reason": reason, "code": code}, status=code)


def _selector(expression: str) -> list[tuple[str, str, set[str]]]:
    """A label selector as (key, operator, values); operators =, !=, in, notin, exists, !exists."""
    terms = []
    for term in re.split(r",(?![^()]*\))", expression):
        term = term.strip()
        if not term:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            terms.append((m[1], m[2], {v.strip() for v in m[3].split(",")}))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term):
            terms.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", term):
            terms.append((m[2], "!exists" if m[1] else "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return terms


_OPS: dict[str, Callable[[str | None, set[str]], bool]] = {
    "=": lambda value, values: value in values,
    "in": lambda value, values: value in values,
    "!=": lambda value, values: value not in values,
    "notin": lambda value, values: value not in values,
    "exists": lambda value, _: value is not None,
    "!exists": lambda value, _: value is None,
}


def _matches(labels: dict[str, str], terms: list[tuple[str, str, set[str]]]) -> bool:
    return all(_OPS[op](labels.get(key), values) for key, op, values in terms)


def _pod_metrics(pod: PodSim, now: float) -> dict[str, Any]:
    containers = []
    for c in pod.containers.values():
        c_cpu, c_memory = c.usage(now)
        containers.append({"name": c.name, "usage": {"cpu": cpu(c_cpu), "memory": memory(c_memory)}})
    return {
        "kind": "PodMetrics",
        "apiVersion": GV,
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "selfLink": f"/apis/{GV}/namespaces/{pod.namespace}/pods/{pod.name}",
            "creationTimestamp": rfc3339(now),
            "labels": (pod.pod["metadata"].get("labels") or {}),
        },
        "timestamp": rfc3339(now),
        "window": "30s",
        "containers": containers,
    }


def _node_metrics(store: PodStore, now: float) -> dict[str, Any]:
    node_cpu, node_memory = store.node_usage(now)
    return {
        "kind": "NodeMetrics",
        "apiVersion": GV,
        "metadata": {
            "name": store.node_name,
            "selfLink": f"/apis/{GV}/nodes/{store.node_name}",
            "creationTimestamp": rfc3339(now),
            "labels": {"kubernetes.io/hostname": store.node_name},
        },
        "timestamp": rfc3339(now),
        "window": "30s",
        "usage": {"cpu": cpu(node_cpu), "memory": memory(node_memory)},
    }


def _list(kind: str, items: list[dict[str, Any]], path: str) -> web.Response:
    return web.json_response({"kind": kind, "apiVersion": GV, "metadata": {"selfLink": path}, "items": items})


@web.middleware
async def front_proxy_only(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        transport = request.transport
        if transport is None or not transport.get_extra_info("peercert"):
            return _status(401, "Unauthorized", "Unauthorized: a front-proxy client certificate is required")
    try:
        response: web.StreamResponse = await handler(request)
    except ValueError as err:  # a label selector that does not parse
        return _status(400, "BadRequest", str(err))
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def api_groups(_: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]})


def _group() -> dict[str, Any]:
    version = {"groupVersion": GV, "version": VERSION}
    return {"name": GROUP, "versions": [version], "preferredVersion": version}


async def api_group(_: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **_group()})


async def api_resources(_: web.Request) -> web.Response:
    resources = [
        {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]},
    ]
    return web.json_response(
        {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GV, "resources": resources}
    )


async def openapi(_: web.Request) -> web.Response:
    info = {"title": "metrics-server (runbooks sandbox)", "version": VERSION}
    return web.json_response({"swagger": "2.0", "info": info, "paths": {}, "definitions": {}})


async def nodes(request: web.Request) -> web.Response:
    store = request.app[STORE]
    node = _node_metrics(store, time.time())
    terms = _selector(request.query.get("labelSelector", ""))
    return _list("NodeMetricsList", [node] if _matches(node["metadata"]["labels"], terms) else [], request.path)


async def node(request: web.Request) -> web.Response:
    store = request.app[STORE]
    if request.match_info["name"] != store.node_name:
        return _status(404, "NotFound", f'nodemetrics.{GROUP} "{request.match_info["name"]}" not found')
    return web.json_response(_node_metrics(store, time.time()))


async def pods(request: web.Request) -> web.Response:
    now = time.time()
    namespace = request.match_info.get("ns")
    terms = _selector(request.query.get("labelSelector", ""))
    items = [
        _pod_metrics(p, now)
        for p in request.app[STORE].running()
        if (namespace is None or p.namespace == namespace) and _matches(p.pod["metadata"].get("labels") or {}, terms)
    ]
    return _list("PodMetricsList", items, request.path)


async def pod(request: web.Request) -> web.Response:
    ns, name = request.match_info["ns"], request.match_info["name"]
    found = request.app[STORE].find(ns, name)
    if found is None or found.deleting:
        return _status(404, "NotFound", f'podmetrics.{GROUP} "{name}" not found')
    return web.json_response(_pod_metrics(found, time.time()))


def create_app(store: PodStore) -> web.Application:
    app = web.Application(middlewares=[front_proxy_only])
    app[STORE] = store
    for path in OPEN_PATHS:
        app.router.add_get(path, healthz)
    base = f"/apis/{GV}"
    app.router.add_get("/apis", api_groups)
    app.router.add_get(f"/apis/{GROUP}", api_group)
    app.router.add_get(base, api_resources)
    app.router.add_get("/openapi/v2", openapi)
    app.router.add_get(f"{base}/nodes", nodes)
    app.router.add_get(f"{base}/nodes/{{name}}", node)
    app.router.add_get(f"{base}/pods", pods)
    app.router.add_get(f"{base}/namespaces/{{ns}}/pods", pods)
    app.router.add_get(f"{base}/namespaces/{{ns}}/pods/{{name}}", pod)
    return app
