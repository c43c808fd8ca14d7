"""Mitigation claims: the idempotency key of a destructive action, kept on the Deployment it acts on.

A rollback or a restart must happen once per incident, whichever worker runs the triage and however many runs
ask for it. The key therefore lives where every worker sees it: an annotation ``runbooks.io/mitigation.<incident>``
on the Deployment, holding a small JSON record (action, key, run, time). :func:`claim_mitigation` writes it with a
compare-and-set (the patch carries the ``resourceVersion`` it read, so the API server refuses it with 409 when
anything changed the object in between) BEFORE the action: of two concurrent runs exactly one claims, the other
reads the winner's record and reports "already applied by <run>". The record survives the rollback it guards
(:data:`tasks.kubernetes.deployments.OWN_ANNOTATION_PREFIX`), as the HPA floors' record does
(:mod:`tasks.kubernetes.autoscaling`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, Field

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from kernel.retry import idempotent_task, read_task
from tasks.kubernetes._api import kube, namespace_of, run_logger
from tasks.kubernetes.deployments import OWN_ANNOTATION_PREFIX

CLAIM_PREFIX = f"{OWN_ANNOTATION_PREFIX}mitigation."
#: how many times a claim re-reads the object after a conflict (each conflict is some other writer's success)
CLAIM_ATTEMPTS = 10
#: what a decision returns to leave the annotation as it is
UNCHANGED = object()
T = TypeVar("T")


async def _compare_and_set(
    k: Any, name: str, ns: str, annotation: str, decide: Callable[[str | None], tuple[object, T]], contended: T
) -> T:
    """Read Deployment ``name``, let ``decide(current value)`` answer (new value, or None to remove, or
    :data:`UNCHANGED`; and the result), and write the new value with the ``resourceVersion`` it read (the compare of
    compare-and-set). A 409 means some other writer changed the object in between: read again and decide again,
    up to :data:`CLAIM_ATTEMPTS` times, then answer ``contended``."""
    for _ in range(CLAIM_ATTEMPTS):
        dep = await k.apps.read_namespaced_deployment(name, ns)
        value, result = decide((dep.metadata.annotations or {}).get(annotation))
        if value is UNCHANGED:
            return result
        body = {"metadata": {"resourceVersion": dep.metadata.resource_version, "annotations": {annotation: value}}}
        try:
            await k.apps.patch_namespaced_deployment(name, ns, body)
        except ApiException as err:
            if err.status == 409:
                continue
            raise
        return result
    return contended


def claim_annotation(incident: str) -> str:
    """The annotation of ``incident``'s claim: ``runbooks.io/mitigation.<incident>``, its name part a valid
    annotation name (63 characters of ``[A-Za-z0-9._-]``, alphanumeric at both ends; a long id is hashed)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", incident).strip("-._") or "incident"
    if len(CLAIM_PREFIX.split("/", 1)[1]) + len(name) > 63:
        name = name[:36].rstrip("-._") + "-" + hashlib.sha256(incident.encode()).hexdigest()[:12]
    return CLAIM_PREFIX + name


class MitigationClaim(BaseModel):
    """The record on the Deployment: which action, for which key, by which run, when."""

    incident: str
    action: str
    key: str
    run: str
    at: str = ""
    done: str = Field(default="", description="what the action did, once it did it (empty while in progress)")
    claimed: bool = Field(default=False, description="True when this call wrote the record; False: it was there")
    deployment: str = ""
    namespace: str = ""

    def annotation(self) -> str:
        record = {"incident": self.incident, "action": self.action, "key": self.key, "run": self.run, "at": self.at}
        if self.done:
            record["done"] = self.done
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str, where: str) -> MitigationClaim:
        try:
            data: dict[str, Any] = json.loads(raw)
            return cls(
                incident=str(data["incident"]),
                action=str(data["action"]),
                key=str(data["key"]),
                run=str(data.get("run", "")),
                at=str(data.get("at", "")),
                done=str(data.get("done", "")),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise KubernetesError(
                f"{where}: unreadable mitigation claim {raw!r}",
                hint="check by hand whether the mitigation was applied, then remove the annotation",
                transient=False,
            ) from err


@idempotent_task
async def claim_mitigation(
    cluster: KubernetesCluster, name: str, incident: str, action: str, key: str, run: str, namespace: str | None = None
) -> MitigationClaim:
    """Claim ``incident``'s mitigation on Deployment ``name`` before acting: write the record with a
    compare-and-set, or return the record already there (``claimed=False``: someone did it or is doing it).

    Safe to retry: a retry after a lost answer finds its own record (same ``run``, not ``done``) and reports it
    claimed; a record marked done (:func:`complete_mitigation_claim`) is never claimed again, not even by its run.
    """
    ns = namespace_of(cluster, namespace)
    where = f"Deployment {ns}/{name}"

    def decide(raw: str | None) -> tuple[object, MitigationClaim | None]:
        if raw:
            found = MitigationClaim.parse(raw, where)
            found.claimed = found.run == run and not found.done
            found.deployment, found.namespace = name, ns
            return UNCHANGED, found
        at = datetime.now(UTC).isoformat()
        claim = MitigationClaim(
            incident=incident, action=action, key=key, run=run, at=at, claimed=True, deployment=name, namespace=ns
        )
        return claim.annotation(), claim

    async with kube(cluster, f"claiming {action} of incident {incident} on {where}") as k:
        claim = await _compare_and_set(k, name, ns, claim_annotation(incident), decide, None)
    if claim is None:
        raise KubernetesError(
            f"{where}: could not claim {action} of incident {incident}: the object kept changing",
            hint="something writes this Deployment continuously: look at its managedFields, then run the triage again",
            transient=True,
        )
    if claim.claimed and claim.at and not claim.done:
        run_logger().info("%s: %s of incident %s claimed by run %s", where, action, incident, run)
    return claim


@read_task
async def read_mitigation_claim(
    cluster: KubernetesCluster, name: str, incident: str, namespace: str | None = None
) -> MitigationClaim | None:
    """``incident``'s claim on Deployment ``name``, or None."""
    ns = namespace_of(cluster, namespace)
    async with kube(cluster, f"reading the mitigation claim of incident {incident} on Deployment {ns}/{name}") as k:
        dep = await k.apps.read_namespaced_deployment(name, ns)
    raw = (dep.metadata.annotations or {}).get(claim_annotation(incident))
    if not raw:
        return None
    found = MitigationClaim.parse(raw, f"Deployment {ns}/{name}")
    found.deployment, found.namespace = name, ns
    return found


@idempotent_task
async def release_mitigation_claim(
    cluster: KubernetesCluster, name: str, incident: str, run: str, namespace: str | None = None
) -> bool:
    """Remove ``incident``'s claim if ``run`` holds it (the action it guarded never happened, so a re-run may
    try again). Compare-and-set too: a claim of another run is never removed. True when removed."""
    ns = namespace_of(cluster, namespace)
    where = f"Deployment {ns}/{name}"

    def decide(raw: str | None) -> tuple[object, bool]:
        if not raw or MitigationClaim.parse(raw, where).run != run:
            return UNCHANGED, False
        return None, True

    async with kube(cluster, f"releasing the mitigation claim of incident {incident} on {where}") as k:
        released = await _compare_and_set(k, name, ns, claim_annotation(incident), decide, False)
    if released:
        run_logger().info("%s: claim of incident %s by run %s released", where, incident, run)
    return released


@idempotent_task
async def complete_mitigation_claim(
    cluster: KubernetesCluster, name: str, incident: str, run: str, done: str, namespace: str | None = None
) -> bool:
    """Mark ``run``'s claim done, with what the action did (for whoever reads the Deployment next). True when
    marked; a claim of another run is left alone."""
    ns = namespace_of(cluster, namespace)
    where = f"Deployment {ns}/{name}"

    def decide(raw: str | None) -> tuple[object, bool]:
        claim = MitigationClaim.parse(raw, where) if raw else None
        if claim is None or claim.run != run:
            return UNCHANGED, False
        claim.done = done[:500]
        return claim.annotation(), True

    async with kube(cluster, f"completing the mitigation claim of incident {incident} on {where}") as k:
        return await _compare_and_set(k, name, ns, claim_annotation(incident), decide, False)


# ------------------------------------------------------------------------------------------ one at a time
TURN_PREFIX = f"{OWN_ANNOTATION_PREFIX}turn."


class Turn(BaseModel):
    """Who may disrupt a Deployment's pods now (delete one of them): one run at a time."""

    deployment: str
    namespace: str
    what: str
    granted: bool = Field(description="True: this run holds the turn (it wrote it, or it held it already)")
    run: str = Field(description="the run that holds it")
    at: str = ""


def _turn(raw: str | None) -> tuple[str, float] | None:
    try:
        data = json.loads(raw) if raw else None
        return (str(data["run"]), float(data["at"])) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: treated as free (a turn only spaces disruptions out, it guards no data)


@idempotent_task
async def claim_turn(
    cluster: KubernetesCluster, name: str, what: str, run: str, *, hold_s: float, namespace: str | None = None
) -> Turn:
    """Take the turn ``what`` on Deployment ``name`` (annotation ``runbooks.io/turn.<what>``, compare-and-set)
    unless another run took it less than ``hold_s`` ago: of several runs that each want to delete one pod of the
    same Deployment (three alerts for three leaking replicas), one deletes at a time, and the next waits for its
    turn (:func:`release_turn`, once the replacement is ready). A turn older than ``hold_s`` (its run died) is
    taken over."""
    ns = namespace_of(cluster, namespace)
    stamp = datetime.now(UTC)
    now = stamp.timestamp()

    def decide(raw: str | None) -> tuple[object, Turn]:
        held = _turn(raw)
        if held is not None and held[0] != run and now - held[1] < hold_s:
            at = datetime.fromtimestamp(held[1], UTC).isoformat()
            return UNCHANGED, Turn(deployment=name, namespace=ns, what=what, granted=False, run=held[0], at=at)
        granted = Turn(
            deployment=name, namespace=ns, what=what, granted=True, run=run, at=datetime.now(UTC).isoformat()
        )
        return json.dumps({"run": run, "at": now}, separators=(",", ":")), granted

    busy = Turn(deployment=name, namespace=ns, what=what, granted=False, run="(contended)")
    async with kube(cluster, f"taking the turn {what} on Deployment {ns}/{name}") as k:
        return await _compare_and_set(k, name, ns, TURN_PREFIX + what, decide, busy)


@idempotent_task
async def release_turn(
    cluster: KubernetesCluster, name: str, what: str, run: str, namespace: str | None = None
) -> bool:
    """Give the turn ``what`` back if ``run`` holds it (compare-and-set: another run's turn is left alone)."""
    ns = namespace_of(cluster, namespace)

    def decide(raw: str | None) -> tuple[object, bool]:
        held = _turn(raw)
        if raw is None or (held is not None and held[0] != run):
            return UNCHANGED, False
        return None, True

    async with kube(cluster, f"releasing the turn {what} on Deployment {ns}/{name}") as k:
        return await _compare_and_set(k, name, ns, TURN_PREFIX + what, decide, False)
