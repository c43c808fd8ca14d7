"""Scale-out that the HorizontalPodAutoscaler does not undo.

The runbook's ``kubectl scale deployment --replicas=10`` is overridden by an HPA that targets the Deployment: on
its next sync it scales back toward its own recommendation (the sandbox saw 10 → 6 within minutes). So where an
HPA targets the Deployment, :func:`scale_out_deployment` raises the HPA's floor (``minReplicas``, and
``maxReplicas`` when it is below the target) and records the bounds it found in an annotation on the HPA, with
the incidents that asked for it. :func:`release_hpa_floors` takes an incident off that record and, when none is
left, puts the bounds back; the HPA then scales in at its own pace.

The record lives on the HPA itself, so it survives the run that made it: a re-run, a second incident, or the
``incident-resolved`` flow fired by the gateway's resolution event all read the same record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import V1HorizontalPodAutoscaler
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task
from tasks.kubernetes._api import hpa_for, kube, namespace_of, run_logger

#: JSON on the HPA: {"minReplicas": n, "maxReplicas": m, "incidents": [...], "since": iso} (the bounds before any raise)
FLOOR_ANNOTATION = "runbooks.io/raised-floor"


class HpaFloor(BaseModel):
    """What an HPA's bounds were before the raise, and which incidents hold the raise."""

    min_replicas: int
    max_replicas: int
    incidents: list[str] = Field(default_factory=list)
    since: str = ""

    @classmethod
    def of(cls, hpa: V1HorizontalPodAutoscaler) -> HpaFloor | None:
        raw = (hpa.metadata.annotations or {}).get(FLOOR_ANNOTATION)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(
                min_replicas=int(data["minReplicas"]),
                max_replicas=int(data["maxReplicas"]),
                incidents=[str(i) for i in data.get("incidents", [])],
                since=str(data.get("since", "")),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise KubernetesError(
                f"HPA {hpa.metadata.namespace}/{hpa.metadata.name}: unreadable {FLOOR_ANNOTATION} annotation {raw!r}",
                hint="set minReplicas/maxReplicas by hand to the intended values, then remove the annotation",
                transient=False,
            ) from err

    def annotation(self) -> str:
        return json.dumps(
            {
                "minReplicas": self.min_replicas,
                "maxReplicas": self.max_replicas,
                "incidents": self.incidents,
                "since": self.since,
            },
            separators=(",", ":"),
        )


class ScaleOut(BaseModel):
    deployment: str
    namespace: str
    previous_replicas: int
    replicas: int
    hpa: str | None = Field(default=None, description="the HPA whose floor was raised, when one targets the Deployment")
    hpa_min_replicas: int | None = None
    hpa_max_replicas: int | None = None
    original_min_replicas: int | None = Field(default=None, description="the HPA's minReplicas before any raise")
    changed: bool


class FloorRelease(BaseModel):
    hpa: str
    namespace: str
    deployment: str
    incident: str
    restored: bool = Field(description="True when the bounds went back; False when other incidents still hold them")
    min_replicas: int
    max_replicas: int
    remaining_incidents: list[str]


@idempotent_task
async def scale_out_deployment(
    cluster: KubernetesCluster, name: str, replicas: int, incident: str, namespace: str | None = None
) -> ScaleOut:
    """Scale a Deployment out to at least ``replicas`` so that it stays there while ``incident`` is open.

    With an HPA on the Deployment, its floor is raised first (the bounds found are recorded once, so a re-run or
    a second incident never records a raised floor as the original). Then the Deployment's replicas are set for
    immediate effect. Never scales in: a Deployment already at or above ``replicas`` keeps its count. Idempotent.
    """
    if replicas < 1:
        raise KubernetesError(f"cannot scale out to {replicas} replicas", hint="use 1 or more", transient=False)
    if not incident:
        raise KubernetesError("a scale-out needs the incident it is for", hint="pass incident=...", transient=False)
    ns = namespace_of(cluster, namespace)
    log = run_logger()
    async with kube(cluster, f"scaling Deployment {ns}/{name} out to {replicas}") as k:
        hpa: V1HorizontalPodAutoscaler | None = await hpa_for(k, ns, name)
        hpa_min = hpa_max = original_min = None
        hpa_changed = False
        if hpa is not None:
            floor = HpaFloor.of(hpa)
            current_min, current_max = hpa.spec.min_replicas or 1, hpa.spec.max_replicas
            if floor is None:
                floor = HpaFloor(
                    min_replicas=current_min, max_replicas=current_max, since=datetime.now(UTC).isoformat()
                )
            if incident not in floor.incidents:
                floor.incidents.append(incident)
            hpa_min, hpa_max = max(current_min, replicas), max(current_max, replicas)
            original_min = floor.min_replicas
            annotation = floor.annotation()
            if (hpa_min, hpa_max) != (current_min, current_max) or (
                (hpa.metadata.annotations or {}).get(FLOOR_ANNOTATION) != annotation
            ):
                body: dict[str, Any] = {
                    "metadata": {"annotations": {FLOOR_ANNOTATION: annotation}},
                    "spec": {"minReplicas": hpa_min, "maxReplicas": hpa_max},
                }
                await k.autoscaling.patch_namespaced_horizontal_pod_autoscaler(hpa.metadata.name, ns, body)
                hpa_changed = (hpa_min, hpa_max) != (current_min, current_max)
                log.info(
                    "HPA %s/%s: minReplicas %s -> %s, maxReplicas %s -> %s (for %s; was %s..%s before any raise)",
                    ns,
                    hpa.metadata.name,
                    current_min,
                    hpa_min,
                    current_max,
                    hpa_max,
                    ", ".join(floor.incidents),
                    floor.min_replicas,
                    floor.max_replicas,
                )
        scale = await k.apps.read_namespaced_deployment_scale(name, ns)
        previous = scale.spec.replicas or 0
        target = max(previous, replicas)
        if target != previous:
            await k.apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": target}})
            log.info("Deployment %s/%s: replicas %s -> %s", ns, name, previous, target)
    return ScaleOut(
        deployment=name,
        namespace=ns,
        previous_replicas=previous,
        replicas=target,
        hpa=hpa.metadata.name if hpa is not None else None,
        hpa_min_replicas=hpa_min,
        hpa_max_replicas=hpa_max,
        original_min_replicas=original_min,
        changed=target != previous or hpa_changed,
    )


@idempotent_task
async def release_hpa_floors(
    cluster: KubernetesCluster, incident: str, namespace: str | None = None, dry_run: bool = False
) -> list[FloorRelease]:
    """Take ``incident`` off every HPA floor it holds in the namespace; put an HPA's bounds back when no incident
    holds its floor any more. The HPA then scales in at its own pace. Idempotent: a second call finds nothing."""
    ns = namespace_of(cluster, namespace)
    log = run_logger()
    released: list[FloorRelease] = []
    async with kube(cluster, f"releasing the HPA floors of incident {incident} in {ns}") as k:
        hpas = await k.autoscaling.list_namespaced_horizontal_pod_autoscaler(ns)
        for hpa in hpas.items:
            floor = HpaFloor.of(hpa)
            if floor is None or incident not in floor.incidents:
                continue
            remaining = [i for i in floor.incidents if i != incident]
            restored = not remaining
            body: dict[str, Any]
            if restored:
                body = {
                    "metadata": {"annotations": {FLOOR_ANNOTATION: None}},
                    "spec": {"minReplicas": floor.min_replicas, "maxReplicas": floor.max_replicas},
                }
            else:
                floor.incidents = remaining
                body = {"metadata": {"annotations": {FLOOR_ANNOTATION: floor.annotation()}}}
            if not dry_run:
                await k.autoscaling.patch_namespaced_horizontal_pod_autoscaler(hpa.metadata.name, ns, body)
            log.info(
                "%sHPA %s/%s: %s",
                "[dry run] " if dry_run else "",
                ns,
                hpa.metadata.name,
                f"bounds back to {floor.min_replicas}..{floor.max_replicas}"
                if restored
                else f"floor kept for {', '.join(remaining)}",
            )
            released.append(
                FloorRelease(
                    hpa=hpa.metadata.name,
                    namespace=ns,
                    deployment=hpa.spec.scale_target_ref.name,
                    incident=incident,
                    restored=restored,
                    min_replicas=floor.min_replicas if restored else hpa.spec.min_replicas or 1,
                    max_replicas=floor.max_replicas if restored else hpa.spec.max_replicas,
                    remaining_incidents=remaining,
                )
            )
    return released
