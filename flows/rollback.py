"""``rollback-release``: the seed's Rollback Procedure, run from the UI.

The seed types ``kubectl rollout undo deployment/ai-multimodel-api`` (and ``--to-revision=N``, a revision the
person has to find) for one Deployment at a time. Here both Deployments of the release go back together, to
*last known good* (the release ``deploy-and-validate`` last promoted, recorded on each Deployment) or to named
revisions; a target equal to what runs is refused; the rollout is followed, the smoke suite run, and #deployments
told the reason and the restored version. ``dry_run`` says what would change.
"""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from blocks.environment import load_environment
from kernel.errors import DeployError
from kernel.redact import redact_errors
from tasks import kubernetes as k8s
from tasks.deploy.gates import Check, overall
from tasks.deploy.policy import load_deploy_policy
from tasks.deploy.preflight import guarded, smoke_checks
from tasks.deploy.report import DeployReport, ReleaseRequest, emit_release_event, publish_report, tell_deployments
from tasks.deploy.rollout import DeployedVersion, Release, capture_release, roll_back_release
from tasks.deploy.runs import current_run_id, other_release_runs


@flow(name="rollback-release", log_prints=False)
@redact_errors
async def rollback_release(
    environment: str = "sandbox",
    target: Literal["last-known-good", "revision"] = "last-known-good",
    api_revision: int | None = None,
    frontend_revision: int | None = None,
    reason: str = "",
    requested_by: str = "",
    dry_run: bool | None = None,
) -> State:
    """Put the API and frontend Deployments of ``environment`` back on ``target`` together: their *last known good*
    release, or (``target="revision"``) the revisions ``api_revision`` / ``frontend_revision`` of their rollout
    history (a Deployment without one stays as it is). ``dry_run`` (default: on everywhere but the sandbox) says
    what would change."""
    logger = get_run_logger()
    clock = time.monotonic()
    env = await load_environment(environment)
    cluster = env.require_kubernetes()
    policy = load_deploy_policy()
    names = policy.deployments
    current = await capture_release(cluster, list(names.values()))
    wanted: list[DeployedVersion] = []
    if target == "last-known-good":
        for name in names.values():
            record = await k8s.read_last_known_good(cluster, name)
            if record is None:
                raise DeployError(
                    f"Deployment {name} has no last known good release recorded",
                    hint="deploy-and-validate records it when a release passes; or roll back to a named revision",
                    transient=False,
                )
            wanted.append(DeployedVersion(deployment=name, revision=record.revision, images=record.images))
    else:
        asked = {names["api"]: api_revision, names["frontend"]: frontend_revision}
        if all(rev is None for rev in asked.values()):
            raise DeployError("target revision needs api_revision and/or frontend_revision", transient=False)
        for name, rev in asked.items():
            if rev is None:
                wanted.append(DeployedVersion(deployment=name, revision=None, images=current.images(name)))
                continue
            history = await k8s.rollout_history(cluster, name)
            found = next((r for r in history.revisions if r.revision == rev), None)
            if found is None:
                kept = ", ".join(str(r.revision) for r in history.revisions)
                raise DeployError(f"Deployment {name} has no revision {rev}", hint=f"revisions kept: {kept}")
            wanted.append(DeployedVersion(deployment=name, revision=rev, images=found.images))
    goal = Release(namespace=current.namespace, versions=wanted)
    if all(goal.images(v.deployment) == current.images(v.deployment) for v in wanted):
        raise DeployError(
            f"nothing to roll back: {environment} already runs the target release ({goal.describe()})",
            hint="pick another revision",
            transient=False,
        )
    report = DeployReport(
        environment=environment,
        run=current_run_id(),
        request=ReleaseRequest(
            deployer=requested_by or "unknown",
            commit="rollback",
            reason=reason,
            images={v.deployment: ", ".join(v.images) for v in wanted},
        ),
        previous=current,
        decided_by=f"rollback-release ({target})",
    )
    others = await other_release_runs(environment)
    if others:
        raise DeployError(f"another release is running on {environment}: {', '.join(others)}", transient=False)
    if env.dry_run_by_default if dry_run is None else dry_run:
        report.outcome, report.message = "dry-run", f"would roll back to {goal.describe()}"
        await publish_report(report)
        return Completed(message=report.message, data=report)
    steps, back = await roll_back_release(cluster, goal, policy.rollout)
    report.rollback = steps
    report.checks.append(
        Check(
            phase="rollout",
            name="rollback",
            value=f"{back.outcome} after {back.waited_s:.0f}s",
            threshold="complete",
            verdict="pass" if back.outcome == "complete" else "fail",
            detail=back.message,
        )
    )
    report.deployed = back.release
    report.checks += await guarded("smoke", "validation", lambda: smoke_checks(env.platform, environment, "validation"))
    ok = overall(report.checks) != "fail"
    report.outcome = "rolled-back" if ok else "rollback-failed"
    report.message = f"back on {goal.describe()}" + ("" if ok else f"; failing: {report.deciding()}")
    report.duration_s = round(time.monotonic() - clock, 1)
    await publish_report(report)
    emit_release_event(report, f"runbooks.rollback.{'completed' if ok else 'failed'}")
    await tell_deployments(
        env,
        f"{'↩️' if ok else '🔥'} Rolled back {environment}: {', '.join(i for v in wanted for i in v.images)}",
        f"reason: {reason or 'none given'}; requested by {report.request.deployer}; {report.message}",
    )
    logger.info("rollback %s: %s", report.outcome, report.message)
    return Completed(message=report.message, data=report) if ok else Failed(message=report.message, data=report)
