"""``deploy-and-validate``: the seed's Pre-Deployment Checklist, Production Deployment and Post-Deployment
Validation, with its Rollback Procedure as the automatic answer to a failing release.

1. **preflight**: no other release runs on the environment; the status page shows no open incident (unless
   ``force`` with a reason); the smoke suite passes; nodes under the policy's capacity; no Pending, crash-looping
   or failing pod; a preventive backup (Kubernetes resources and the schema) whose id goes in the report; Slack
   #deployments is told who deploys which commit and how long it should take;
2. **rollout**: both Deployments' revisions and images recorded, the baseline of every metric gate measured, both
   rolled out and followed together; a crash-looping new pod fails the release at once;
3. **validation**: the smoke suite, an open-loop load, the metric gates (PromQL, against the baseline) and the log
   gates (ERROR lines since the rollout began), each pass / fail / inconclusive (no data is never a pass);
4. **verdict**: fail → both Deployments back on the recorded images; inconclusive → paused for a decision in the
   UI (promote / roll back; no answer before the timeout rolls back); pass → *last known good* recorded on both.

Every check lands in the table artifact ``deploy-<environment>`` with its value, threshold and verdict; the
outcome goes to Slack #deployments and to the event ``runbooks.deploy.<outcome>``. Thresholds live in
``tasks/deploy/policy.yaml``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.input import RunInput
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import load_environment
from blocks.kubernetes import KubernetesCluster
from blocks.prometheus import PrometheusServer
from kernel.errors import DeployError
from kernel.redact import redact_errors
from tasks import kubernetes as k8s
from tasks.approval import ask_approval
from tasks.deploy.gates import Check, count_log_lines, judge_metric, measure_gate
from tasks.deploy.load import run_load
from tasks.deploy.policy import LogGate, MetricGate, load_deploy_policy
from tasks.deploy.preflight import (
    capacity_checks,
    guarded,
    pod_checks,
    preventive_backup,
    smoke_checks,
    status_page_check,
)
from tasks.deploy.report import DeployReport, ReleaseRequest, emit_release_event, publish_report, tell_deployments
from tasks.deploy.rollout import capture_release, follow_rollout, image_with_tag, roll_back_release
from tasks.deploy.runs import current_run_id, other_release_runs
from tasks.reporting import start_progress, update_progress
from tasks.triage.policy import TriagePolicy, load_policy

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # the OCI distribution spec's tag grammar


class ReleaseDecision(RunInput):
    promote: bool = Field(description="Promote the release (true) or roll both Deployments back (false)?")
    approver: str = Field(default="", description="Who decides (for the record).")
    note: str = ""


@flow(name="deploy-and-validate", log_prints=False)
@redact_errors
async def deploy_and_validate(
    environment: str = "sandbox",
    api_tag: str | None = None,
    frontend_tag: str | None = None,
    commit: str = "",
    deployer: str = "",
    reason: str = "",
    force: bool = False,
    force_reason: str = "",
    dry_run: bool | None = None,
    load_rate_per_s: Annotated[float, Field(gt=0, le=500)] | None = None,
    load_duration_s: Annotated[float, Field(ge=0, le=3600)] | None = None,
    gate_window_s: Annotated[int, Field(ge=10, le=3600)] | None = None,
    approval_timeout_s: Annotated[int, Field(ge=10, le=86400)] | None = None,
) -> State:
    """Release the image tags ``api_tag`` / ``frontend_tag`` on ``environment``, check it before, during and after,
    and roll both Deployments back together when it fails. ``force`` (with ``force_reason``) overrides an open
    incident on the status page; ``dry_run`` (default: on everywhere but the sandbox) runs the preflight and
    says what it would roll out. The load, the gate
    window and the approval timeout default to the policy's."""
    logger = get_run_logger()
    clock = time.monotonic()
    env = await load_environment(environment)
    cluster = env.require_kubernetes()
    policy, triage = load_deploy_policy(), load_policy()
    tags = {role: tag for role, tag in (("api", api_tag), ("frontend", frontend_tag)) if tag}
    if not tags:
        raise DeployError("nothing to release: give api_tag and/or frontend_tag", transient=False)
    for role, tag in tags.items():
        if role not in policy.deployments:
            raise DeployError(f"the deploy policy names no {role} Deployment", hint="see tasks/deploy/policy.yaml")
        if not TAG.fullmatch(tag):
            raise DeployError(f"{role}_tag {tag!r} is not an image tag", hint="letters, digits, '_', '.', '-' (≤128)")
    if force and not force_reason.strip():
        raise DeployError("force needs a force_reason", hint="say why the release goes ahead despite the incident")
    names = list(policy.deployments.values())
    window = gate_window_s
    load_rate = load_rate_per_s or policy.load.rate_per_s
    load_duration = policy.load.duration_s if load_duration_s is None else load_duration_s

    # ------------------------------------------------------------------------------------------ preflight
    previous = await capture_release(cluster, names)
    images = {
        policy.deployments[role]: image_with_tag(previous.images(policy.deployments[role])[0], tag)
        for role, tag in tags.items()
    }
    report = DeployReport(
        environment=environment,
        run=current_run_id(),
        request=ReleaseRequest(
            deployer=deployer or "unknown", commit=commit or "unknown", reason=reason, images=images
        ),
        previous=previous,
    )
    others = await other_release_runs(environment)
    if others:
        return await _refuse(report, f"another release is running on {environment}: {', '.join(others)}")
    groups = await asyncio.gather(
        guarded("status page", "preflight", lambda: status_page_check(env.platform)),
        guarded("smoke", "preflight", lambda: smoke_checks(env.platform, environment, "preflight")),
        guarded("node capacity", "preflight", lambda: capacity_checks(cluster, policy.preflight)),
        guarded("pods", "preflight", lambda: pod_checks(cluster, policy.preflight)),
    )
    report.checks = [c for group in groups for c in group]
    incident = next((c for c in report.checks if c.name == "status page" and c.verdict == "fail"), None)
    if incident is not None and force:
        incident.detail += f"; forced by {report.request.deployer}: {force_reason}"
    blocking = [c for c in report.checks if c.verdict == "fail" and not (c is incident and force)]
    if incident is not None and not force:
        return await _refuse(report, f"the status page shows {incident.value}: fix it first, or force with a reason")
    if blocking:
        return await _refuse(report, "preflight failed: " + ", ".join(f"{c.name} ({c.value})" for c in blocking[:4]))
    if env.dry_run_by_default if dry_run is None else dry_run:
        report.outcome, report.message = "dry-run", f"would roll out {', '.join(images.values())}"
        report.duration_s = round(time.monotonic() - clock, 1)
        await publish_report(report)
        return Completed(message=report.message, data=report)
    backup_checks, backup = await preventive_backup(env, environment, policy.preflight)
    report.checks += backup_checks
    report.backup_id = backup.backup_id if backup else None
    if backup is None:
        return await _refuse(report, f"the preventive backup failed: {backup_checks[0].detail}")
    await tell_deployments(
        env,
        f"🚀 Deploying to {environment}: {', '.join(images.values())}",
        f"deployer *{report.request.deployer}*, commit `{report.request.commit}`, "
        f"expected ~{policy.preflight.expected_duration_min} min; {reason}",
    )

    # -------------------------------------------------------------------------------------------- rollout
    baselines = await asyncio.gather(*(_measure(env.prometheus, g, triage, window) for g in policy.gates))
    progress = await start_progress(f"deploy-progress-{environment}", f"Rolling out to {environment}")
    rollout_started = time.monotonic()
    report.rollout_started_at = datetime.now(UTC)
    for name, image in images.items():
        await k8s.set_image(cluster, name, image, change_cause=f"deploy {image} ({report.request.commit})")
    rolled = await follow_rollout(cluster, names, policy.rollout, progress=progress)
    report.checks.append(
        Check(
            phase="rollout",
            name="rollout",
            value=f"{rolled.outcome} after {rolled.waited_s:.0f}s",
            threshold=f"complete, no crash-looping new pod, ≤ {policy.rollout.timeout_s:g}s",
            verdict="pass" if rolled.outcome == "complete" else "fail",
            detail=rolled.message,
        )
    )
    report.deployed = rolled.release
    report.stable_at = datetime.now(UTC) if rolled.outcome == "complete" else None
    if rolled.outcome == "complete":
        # ------------------------------------------------------------------------------------- validation
        soak = max([window or g.window_s for g in policy.gates] + [load_duration])
        await update_progress(progress, 100, f"rolled out; validating for {soak:g}s")
        load, _ = await asyncio.gather(
            run_load(env.platform, policy.load, rate_per_s=load_rate, duration_s=load_duration),
            asyncio.sleep(soak),
        )
        since = int(time.monotonic() - rollout_started) + 1
        currents = await asyncio.gather(*(_measure(env.prometheus, g, triage, window) for g in policy.gates))
        logs = await asyncio.gather(
            *(
                guarded(f"{gate.name} ({name})", "validation", _log_check(cluster, name, gate, since))
                for gate in policy.logs
                for name in names
            )
        )
        smoke = await guarded("smoke", "validation", lambda: smoke_checks(env.platform, environment, "validation"))
        report.checks += smoke + load.checks(policy.load)
        for gate, before, after in zip(policy.gates, baselines, currents, strict=True):
            gate_used = gate.model_copy(update={"window_s": window}) if window else gate
            check = judge_metric(gate_used, triage, before, after)
            if env.prometheus is None:
                check.detail = "the environment has no Prometheus block: nothing measured the release"
            report.checks.append(check)
        report.checks += [c for group in logs for c in group]

    # -------------------------------------------------------------------------------------------- verdict
    verdict = report.verdict
    promote = verdict == "pass"
    if verdict == "inconclusive":
        timeout = approval_timeout_s or policy.approval.timeout_s
        logger.warning("release inconclusive (%s): waiting %ss for a decision in the UI", report.deciding(), timeout)
        await publish_report(report)  # the approver reads the table before deciding
        decision = await ask_approval(
            ReleaseDecision,
            description=(
                f"**Release on `{environment}` is inconclusive**: {report.deciding()}.\n\n"
                "See the `deploy-` table artifact. Set *promote* to keep it, leave it off to roll both Deployments "
                f"back. No answer within {timeout}s rolls back."
            ),
            timeout_s=timeout,
            poll_s=policy.approval.poll_s,
            promote=False,
        )
        if decision is None:
            report.decided_by = f"timeout ({timeout}s without an answer)"
        else:
            promote = decision.promote
            report.decided_by = f"{decision.approver or 'approver'}" + (f": {decision.note}" if decision.note else "")
    if promote and rolled.release is not None:
        now = datetime.now(UTC)
        for version in rolled.release.versions:
            record = k8s.LastKnownGood(revision=version.revision or 0, images=version.images, time=now, run=report.run)
            await k8s.record_last_known_good(cluster, version.deployment, record)
        report.outcome = "promoted"
        report.message = "every gate passed" if verdict == "pass" else f"promoted by {report.decided_by}"
    else:
        why = report.deciding() if verdict == "fail" else f"inconclusive ({report.deciding()}), {report.decided_by}"
        steps, back = await roll_back_release(cluster, previous, policy.rollout)
        report.rollback = steps
        report.outcome = "rolled-back" if back.outcome == "complete" else "rollback-failed"
        report.stable_at = datetime.now(UTC) if back.outcome == "complete" else None
        report.message = f"rolled back: {why}" + ("" if back.outcome == "complete" else f"; rollback {back.message}")
    report.duration_s = round(time.monotonic() - clock, 1)
    await publish_report(report)
    emit_release_event(report)
    icon = "✅" if report.outcome == "promoted" else "↩️" if report.outcome == "rolled-back" else "🔥"
    await tell_deployments(
        env,
        f"{icon} Release on {environment} {report.outcome}: {', '.join(images.values())}",
        f"{report.message} ({report.duration_s:.0f}s; backup `{report.backup_id}`)",
    )
    logger.info("release %s: %s", report.outcome, report.message)
    if report.outcome == "promoted":
        return Completed(message=report.message, data=report)
    return Failed(message=report.message, data=report)


async def _measure(
    prometheus: PrometheusServer | None, gate: MetricGate, triage: TriagePolicy, window: int | None
) -> float | None:
    """A gate's figure, or None without a Prometheus block (no data: inconclusive, never a pass)."""
    if prometheus is None:
        return None
    return await measure_gate(prometheus, gate, triage, window)


def _log_check(
    cluster: KubernetesCluster, name: str, gate: LogGate, since: int
) -> Callable[[], Awaitable[list[Check]]]:
    async def run() -> list[Check]:
        return [await count_log_lines(cluster, name, gate, since)]

    return run


async def _refuse(report: DeployReport, message: str) -> State:
    """Refused before anything changed: the table and the event say why, the run fails with one line."""
    report.outcome, report.message = "refused", message
    await publish_report(report)
    emit_release_event(report)
    get_run_logger().error("release refused: %s", message)
    raise DeployError(f"release refused: {message}", transient=False)
