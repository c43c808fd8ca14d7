"""The *last known good* release of a Deployment: an annotation on the Deployment itself.

``deploy-and-validate`` writes it when every gate of a release passed; ``rollback-release`` goes back to it by
default; ``weekly-maintenance``'s ReplicaSet cleanup never deletes its revision. It lives on the object acted on,
where every worker sees it (not in local result storage). Its value is JSON::

    {"revision": 7, "images": ["ghcr.io/genspark/ai-multimodel-api:v2.6.0"], "time": "2026-12-04T12:00:00Z",
     "run": "<flow run id>"}
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ValidationError

from blocks.kubernetes import KubernetesCluster
from kernel.retry import idempotent_task, read_task
from tasks.kubernetes._api import kube, namespace_of, run_logger

LAST_KNOWN_GOOD = "runbooks.io/last-known-good"


class LastKnownGood(BaseModel):
    """What a Deployment ran when a release last passed every gate."""

    revision: int
    images: list[str]
    time: datetime
    run: str | None = None


def parse_last_known_good(annotations: dict[str, str] | None) -> LastKnownGood | None:
    """The record in a Deployment's annotations; None when there is none or it cannot be read (a hand-edited value
    is not a release anyone can go back to)."""
    raw = (annotations or {}).get(LAST_KNOWN_GOOD)
    if not raw:
        return None
    try:
        return LastKnownGood.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


@read_task
async def read_last_known_good(
    cluster: KubernetesCluster, name: str, namespace: str | None = None
) -> LastKnownGood | None:
    """The Deployment's *last known good* record, or None when no release has been recorded."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading the last known good release of Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
    return parse_last_known_good(dep.metadata.annotations)


@idempotent_task
async def record_last_known_good(
    cluster: KubernetesCluster, name: str, record: LastKnownGood, namespace: str | None = None
) -> LastKnownGood:
    """Annotate the Deployment (its metadata, not its pod template: no rollout) with ``record``."""
    ns = namespace_of(cluster, namespace)
    value = record.model_dump_json()
    async with kube(cluster, f"recording the last known good release of Deployment {ns}/{name}") as k:
        await k.apps.patch_namespaced_deployment(name, ns, {"metadata": {"annotations": {LAST_KNOWN_GOOD: value}}})
    run_logger().info(
        "Deployment %s/%s: last known good = revision %s (%s)", ns, name, record.revision, ", ".join(record.images)
    )
    return record
