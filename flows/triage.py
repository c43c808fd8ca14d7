"""Incident triage: from an alert to diagnosis, notification and mitigation (the seed's P0/P1 procedure and its
alert responses). Triggered by the gateway's ``runbooks.incident.opened`` events, or run by hand from the UI.

diagnose (concurrent enrichers, :mod:`tasks.triage.enrichers`) → classify and tell (the policy's severity rules
and escalation matrix, :mod:`tasks.triage.policy`, read at each run; notifications are never dry) → plan → decide
(the policy's mode for the environment's kind and the severity: ``auto`` acts, ``approve`` pauses for an answer in
the UI with the run's link in the Slack thread, default deny, ``observe`` describes) → apply
(:mod:`tasks.triage.mitigations`: preconditions, an idempotency key on the object acted on, an event per action)
→ verify (re-read the figures until resolved) → report (post-mortem artifact, :mod:`tasks.triage.postmortem`).
"""

from __future__ import annotations

import asyncio
import time

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.utilities.urls import url_for

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks import kubernetes as k8s
from tasks.reporting import emit
from tasks.triage import render
from tasks.triage.enrichers import diagnose, facts_of, verify
from tasks.triage.escalation import close_incident, notify, resolve_page, update_thread
from tasks.triage.incident_record import IncidentThread, remember_thread
from tasks.triage.mitigations import carry_out, current_run, decide, plan_actions
from tasks.triage.policy import load_policy
from tasks.triage.postmortem import publish_postmortem
from tasks.triage.report import TriageReport, incident_resource


@flow(name="incident-triage")
@redact_errors
async def incident_triage(
    alert_name: str,
    incident_id: str = "",
    fingerprint: str = "",
    alert_severity: str | None = None,
    summary: str = "",
    environment: str = "sandbox",
    dry_run: bool | None = None,
    auto_approve: bool = False,
    approval_timeout_s: int = 900,
    watch_s: float = 0.0,
    update_interval_s: float = 900.0,
) -> TriageReport:
    """Diagnose, tell, mitigate by policy, then watch until resolved (``watch_s``) with updates in the thread.

    How it decides is the policy's mode for the environment's kind and the severity (``modes`` in the policy
    file); ``dry_run=True`` only observes whatever the policy says, ``auto_approve`` answers an approval at once
    (a manual run whose operator already decided). Notifications go out in every mode.
    """
    logger = get_run_logger()
    started = time.time()
    run_id = get_run_context().flow_run.id  # type: ignore[union-attr]
    incident_id = incident_id or f"manual-{run_id.hex[:12]}"
    env = await load_environment(environment)
    policy = load_policy()

    # diagnose: every enricher concurrently; the policy says how severe, the escalation matrix who hears of it
    findings = await diagnose(env, policy, alert_name)
    facts = facts_of(findings, alert_name, alert_severity)
    severity, why = policy.severity(facts)
    report = TriageReport(
        incident_id=incident_id,
        alert_name=alert_name,
        severity=severity,
        severity_reasons=why,
        facts=facts,
        findings=findings,
    )
    logger.info("%s %s: %s (%s)", incident_id, alert_name, severity, "; ".join(why))
    emit(
        "runbooks.incident.triaged",
        incident_resource(incident_id),
        {"severity": severity, "alert": alert_name, "failing": report.failing},
    )
    await notify(env, policy, report, summary)
    if report.slack_ts and report.slack_channel:  # where incident-resolved posts, whichever worker runs it
        await remember_thread(incident_id, IncidentThread(channel=report.slack_channel, ts=report.slack_ts))

    # plan → decide → apply, one action at a time, each told in the thread and recorded as an event
    mode = "observe" if dry_run else policy.mode(env.kind, severity)
    logger.info("mitigation mode: %s (%s environment, %s)", mode, env.kind, severity)
    plan = plan_actions(policy, alert_name, facts, env.api_deployment, incident_id)
    for planned in plan:
        if mode == "approve" and not auto_approve:
            link = url_for("flow-run", obj_id=run_id) or f"flow run {run_id}"
            text = render.approval_text(planned.action, planned.target, link, approval_timeout_s)
            await update_thread(env, policy, report, text)
        record = await decide(
            planned,
            incident_id,
            mode,
            auto_approve=auto_approve,
            approval_timeout_s=approval_timeout_s,
            what=f"{severity} {alert_name}",
        )
        record = await carry_out(environment, planned, record, observe=mode == "observe")
        report.mitigations.append(record)
        emit(f"runbooks.mitigation.{record.outcome}", incident_resource(incident_id), record.model_dump())
        await update_thread(env, policy, report, render.mitigation_text(record))

    # verify: re-read the figures until they are healthy or the watch ends, with updates in the thread
    deadline = started + watch_s
    while True:
        smoke = await verify(env, policy)
        report.resolved = all(f.ok for f in smoke)
        if report.resolved or time.time() >= deadline:
            break
        await update_thread(env, policy, report, render.still_failing_text(smoke))
        await asyncio.sleep(min(update_interval_s, max(0.0, deadline - time.time())))

    # report: resolved (give back what was held, resolve the page) or still open; the post-mortem either way
    if report.resolved:
        emit("runbooks.incident.mitigated", incident_resource(incident_id), {"severity": severity})
        if report.holds_hpa_floor:
            released = await k8s.release_hpa_floors(env.require_kubernetes(), incident_id)
            await update_thread(env, policy, report, render.released_text(released))
        await update_thread(env, policy, report, render.resolved_text(report, time.time() - started))
        await resolve_page(env, policy, report)
    elif report.holds_hpa_floor:
        await update_thread(env, policy, report, render.FLOOR_HELD_TEXT)
    await publish_postmortem(report, started)
    if report.failed_mitigations:
        raise RuntimeError(
            "a mitigation failed: " + "; ".join(f"{m.action} {m.target}: {m.detail}" for m in report.failed_mitigations)
        )
    return report


@flow(name="incident-resolved")
@redact_errors
async def incident_resolved(
    incident_id: str,
    alert_name: str = "",
    environment: str = "sandbox",
    dry_run: bool | None = None,
) -> list[k8s.FloorRelease]:
    """The alert cleared (the gateway's ``runbooks.incident.resolved``): give back what triage held for the
    incident (HPA floors raised by a scale-out; only described when ``dry_run``), and in every environment resolve
    its PagerDuty incident, close its Opsgenie alert and post RESOLVED in its Slack thread (once per incident,
    whichever run gets there first). Idempotent: a re-run finds nothing to give back and nothing to post.
    """
    logger = get_run_logger()
    env = await load_environment(environment)
    released: list[k8s.FloorRelease] = []
    if env.kubernetes is not None:
        released = await k8s.release_hpa_floors(env.kubernetes, incident_id, dry_run=bool(dry_run))
    logger.info("incident %s resolved (%s): %s", incident_id, alert_name or "alert", render.released_text(released))
    closed = await close_incident(
        env, incident_id, render.alert_cleared_text(alert_name, incident_id, released), current_run()
    )
    if closed.detail:
        logger.info("incident %s: %s", incident_id, closed.detail)
    emit(
        "runbooks.incident.closed",
        incident_resource(incident_id),
        {
            "alert": alert_name,
            "dry_run": bool(dry_run),
            "released": [r.model_dump() for r in released],
            **closed.model_dump(),
        },
    )
    return released
