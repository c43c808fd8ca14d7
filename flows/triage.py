"""Incident triage: from an alert to diagnosis, notification and mitigation (the seed's P0/P1 procedure and its
alert responses). Triggered by the gateway's ``runbooks.incident.opened`` events, or run by hand from the UI.

Diagnostics are concurrent enrichers, each adding one finding (a failing enricher adds an error finding instead of
failing the triage). Severity, escalation and mitigation come from ``flows/triage_policy.yaml``. Every action has
a dry-run, preconditions, an approval where the severity's policy asks for one, an idempotency key, and an event.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import get_run_context
from prefect.events import emit_event
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL
from pydantic import BaseModel, Field

from blocks._base import tls_context
from blocks.environment import RunbookEnvironment, load_environment
from flows.triage_policy import Action, Severity, TriagePolicy, load_policy
from tasks import kubernetes as k8s
from tasks.notify import create_opsgenie_alert, post_slack_message, send_pagerduty_event
from tasks.platform import check_health, fetch_metrics, list_models, open_circuit_breaker, set_model_fallback
from tasks.postgres import check_postgres
from tasks.redis import check_redis

API = "ai-multimodel-api"
#: how long one enricher may take before it becomes an error finding: the first notification must not wait on it
ENRICHER_TIMEOUT_S = 10.0
#: how often a paused run checks for the approver's answer
APPROVAL_POLL_INTERVAL_S = 5


class Finding(BaseModel):
    enricher: str
    ok: bool
    title: str
    detail: str = ""
    facts: dict[str, Any] = Field(default_factory=dict)


class MitigationRecord(BaseModel):
    action: Action
    target: str
    key: str
    outcome: str  # applied | dry-run | skipped | rejected | failed
    detail: str = ""
    by: str = "incident-triage"


class TriageReport(BaseModel):
    incident_id: str
    alert_name: str
    severity: Severity
    severity_reasons: list[str]
    facts: dict[str, Any]
    findings: list[Finding]
    mitigations: list[MitigationRecord] = Field(default_factory=list)
    slack_ts: str | None = None
    resolved: bool = False


class Approval(RunInput):
    approve: bool = Field(description="Apply this mitigation?")
    approver: str = Field(default="", description="Who decides (for the record).")
    note: str = ""


# -------------------------------------------------------------------------------------------------- enrichers
Enricher = Callable[[RunbookEnvironment], Awaitable[Finding]]


async def enrich_health(env: RunbookEnvironment) -> Finding:
    h = await check_health(env.platform)
    return Finding(
        enricher="health",
        ok=h.healthy,
        title=f"/health {h.status_code} {h.status}",
        detail=f"{h.latency_ms} ms",
        facts={"health_ok": h.healthy},
    )


async def enrich_metrics(env: RunbookEnvironment) -> Finding:
    m = await fetch_metrics(env.platform)
    ok = (m.error_rate or 0) <= 0.01 and (m.response_time_p95_s or 0) <= 1.5
    return Finding(
        enricher="metrics",
        ok=ok,
        title=f"error rate {m.error_rate}, p95 {m.response_time_p95_s}s",
        detail=f"requests by status {m.requests_by_status}",
        facts={"error_rate": m.error_rate, "response_time_p95_s": m.response_time_p95_s},
    )


async def enrich_models(env: RunbookEnvironment) -> Finding:
    models = await list_models(env.platform)
    down = [m.name for m in models if m.status == "down"]
    degraded = [m.name for m in models if m.status == "degraded"]
    return Finding(
        enricher="models",
        ok=not down,
        title=f"{len(down)} model(s) down: {', '.join(down) or '-'}",
        detail=f"degraded: {', '.join(degraded) or '-'}",
        facts={"models_down": len(down), "down_models": down},
    )


async def enrich_pods(env: RunbookEnvironment) -> Finding:
    cluster = env.require_kubernetes()
    pods = await k8s.list_pods(cluster)
    crashing = [p.name for p in pods if p.reason in {"CrashLoopBackOff", "Error", "ImagePullBackOff"}]
    api = [p for p in pods if p.labels.get("app") == API and p.status != "Terminating"]
    ratio = sum(p.is_ready for p in api) / len(api) if api else 0.0
    return Finding(
        enricher="pods",
        ok=not crashing and ratio == 1.0,
        title=f"{len(pods)} pods, {len(crashing)} crash-looping, API ready {ratio:.0%}",
        detail=", ".join(f"{p.name} {p.status} restarts={p.restarts}" for p in pods if not p.is_ready)[:800],
        facts={"crashlooping_pods": len(crashing), "api_available_ratio": round(ratio, 2)},
    )


async def enrich_events(env: RunbookEnvironment) -> Finding:
    events = await k8s.list_events(env.require_kubernetes(), warnings_only=True, last=20)
    return Finding(
        enricher="events",
        ok=not events,
        title=f"{len(events)} warning event(s)",
        detail="; ".join(f"{e.object} {e.reason}: {e.message}" for e in events[-5:])[:800],
    )


async def enrich_nodes(env: RunbookEnvironment) -> Finding:
    nodes = await k8s.list_nodes(env.require_kubernetes())
    bad = [n for n in nodes if not n.ready or n.problems]
    return Finding(
        enricher="nodes",
        ok=not bad,
        title=f"{len(nodes)} node(s), {len(bad)} with problems",
        detail="; ".join(f"{n.name}: {', '.join(n.problems) or 'NotReady'}" for n in bad),
    )


async def enrich_rollout(env: RunbookEnvironment) -> Finding:
    dep = await k8s.get_deployment(env.require_kubernetes(), API)
    policy = load_policy()
    age = (datetime.now(UTC) - dep.last_rollout_at).total_seconds() if dep.last_rollout_at else None
    recent = age is not None and age <= policy.mitigation.recent_rollout_s
    return Finding(
        enricher="rollout",
        ok=True,
        title=f"{API} revision {dep.revision}, {', '.join(dep.images)}",
        detail=f"last rollout {int(age) if age is not None else '?'}s ago ({dep.change_cause or '-'})",
        facts={"recent_rollout": recent, "api_revision": dep.revision, "api_replicas": dep.replicas},
    )


async def enrich_error_logs(env: RunbookEnvironment) -> Finding:
    logs = await k8s.deployment_logs(env.require_kubernetes(), API, all_pods=True, since_seconds=1800, tail_lines=500)
    errors = k8s.grep_lines(logs.lines, r"ERROR|FATAL")
    return Finding(
        enricher="error_logs",
        ok=not errors,
        title=f"{len(errors)} ERROR line(s) in the last 30 min",
        detail="\n".join(errors[-5:])[:1500],
        facts={"error_log_lines": len(errors)},
    )


async def enrich_database(env: RunbookEnvironment) -> Finding:
    p = await check_postgres(env.postgres)
    return Finding(
        enricher="database",
        ok=True,
        title=f"PostgreSQL {p.server_version}",
        detail=f"connections by state {p.connections_by_state}",
    )


async def enrich_redis(env: RunbookEnvironment) -> Finding:
    r = await check_redis(env.redis)
    return Finding(enricher="redis", ok=r.ping_ms < 50, title=f"Redis ping {r.ping_ms} ms", detail=r.address)


async def enrich_ingress(env: RunbookEnvironment) -> Finding:
    ingresses = await k8s.list_ingresses(env.require_kubernetes())
    return Finding(
        enricher="ingress",
        ok=bool(ingresses),
        title=f"{len(ingresses)} ingress(es)",
        detail="; ".join(f"{i.name}: {', '.join(i.hosts)}" for i in ingresses),
    )


PLATFORM_ENRICHERS: list[Enricher] = [enrich_health, enrich_metrics, enrich_models, enrich_database, enrich_redis]
KUBERNETES_ENRICHERS: list[Enricher] = [
    enrich_pods,
    enrich_events,
    enrich_nodes,
    enrich_rollout,
    enrich_error_logs,
    enrich_ingress,
]


async def run_enrichers(env: RunbookEnvironment, enrichers: list[Enricher]) -> list[Finding]:
    async def one(enricher: Enricher) -> Finding:
        name = enricher.__name__.removeprefix("enrich_")
        try:
            return await asyncio.wait_for(enricher(env), ENRICHER_TIMEOUT_S)
        except TimeoutError:
            return Finding(enricher=name, ok=False, title=f"{name} check timed out", detail=f"{ENRICHER_TIMEOUT_S}s")
        except Exception as err:  # noqa: BLE001 - a failing diagnostic is itself a finding
            return Finding(enricher=name, ok=False, title=f"{name} check failed", detail=f"{type(err).__name__}: {err}")

    return list(await asyncio.gather(*(one(e) for e in enrichers)))


def facts_of(findings: list[Finding], alert_name: str, alert_severity: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"alert_name": alert_name, "alert_severity": alert_severity}
    for finding in findings:
        facts.update(finding.facts)
    return facts


# ------------------------------------------------------------------------------------------------ mitigation
def _event(name: str, incident_id: str, payload: dict[str, Any]) -> None:
    emit_event(event=name, resource={"prefect.resource.id": f"runbooks.incident.{incident_id}"}, payload=payload)


def _key_fn(context: Any, parameters: dict[str, Any]) -> str:
    return str(parameters["key"])


@task(cache_key_fn=_key_fn, cache_expiration=timedelta(hours=12), persist_result=True)
async def apply_action(env_name: str, action: Action, target: str, key: str, params: dict[str, Any]) -> str:
    """Apply one mitigation; cached under its idempotency key so a re-run of the same incident does not redo it.
    Not retried: a rollback or a restart is never retried blindly."""
    env = await load_environment(env_name)
    if action == "rollback":
        cluster = env.require_kubernetes()
        undo = await k8s.rollout_undo(cluster, target)
        status = await k8s.rollout_status(cluster, target, timeout_s=params.get("timeout_s", 300))
        return f"{undo.message}; {status.message}"
    if action == "restart":
        restart = await k8s.rollout_restart(env.require_kubernetes(), target)
        return f"restarted at {restart.model_dump().get('restarted_at', '')}".strip()
    if action == "scale_out":
        # raises the HPA's floor too, else the HPA scales it back; released when the incident resolves
        out = await k8s.scale_out_deployment(env.require_kubernetes(), target, params["replicas"], params["incident"])
        held = (
            f"; HPA {out.hpa} floor {out.original_min_replicas} -> {out.hpa_min_replicas} until resolved"
            if out.hpa
            else ""
        )
        return f"replicas {out.previous_replicas} -> {out.replicas}{held}"
    breaker = await open_circuit_breaker(env.platform, target, params["duration_s"])
    fallback = await set_model_fallback(env.platform, target, params["fallback_model"], params["duration_s"])
    return (
        f"circuit breaker open for {params['duration_s']}s, fallback {fallback.response.get('fallback_model', '')}"
        + (f" ({breaker.response.get('state', '')})" if breaker.response else "")
    )


def plan_actions(
    policy: TriagePolicy, alert_name: str, facts: dict[str, Any], incident_id: str = ""
) -> list[tuple[Action, str, dict[str, Any]]]:
    """Which actions the facts justify, in the alert branch's order of preference (preconditions here)."""
    m = policy.mitigation
    planned: list[tuple[Action, str, dict[str, Any]]] = []
    broken_release = (
        bool(facts.get("crashlooping_pods")) or bool(facts.get("error_log_lines")) or facts.get("health_ok") is False
    )
    for action in policy.branch(alert_name).mitigations:
        has_previous = (facts.get("api_revision") or 0) > 1
        if action == "rollback" and facts.get("recent_rollout") and broken_release and has_previous:
            planned.append(("rollback", API, {"timeout_s": 300}))
            break  # a rollback changes everything else: decide again after it
        if action == "restart" and facts.get("health_ok") is False and not facts.get("recent_rollout"):
            planned.append(("restart", API, {}))
        if (
            action == "scale_out"
            and not facts.get("crashlooping_pods")
            and (facts.get("api_replicas") or 0) < m.scale_out_replicas
            and ((facts.get("response_time_p95_s") or 0) > 1.5 or (facts.get("error_rate") or 0) > 0.10)
        ):
            planned.append(("scale_out", API, {"replicas": m.scale_out_replicas, "incident": incident_id}))
        if action == "open_circuit_breaker":
            for model in facts.get("down_models") or []:
                planned.append(
                    (
                        "open_circuit_breaker",
                        model,
                        {"duration_s": m.circuit_breaker_duration_s, "fallback_model": m.fallback_model},
                    )
                )
    return planned


# ---------------------------------------------------------------------------------------------- notification
def _blocks(report: TriageReport, status: str) -> list[dict[str, Any]]:
    lines = [f"{'✅' if f.ok else '❌'} *{f.enricher}*: {f.title}" for f in report.findings]
    return [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": (
                    f"*Incident*: {report.incident_id} — {report.alert_name}\n"
                    f"*Severity*: {report.severity}\n*Status*: {status}\n"
                    f"*Why*: {'; '.join(report.severity_reasons)[:500]}"
                ),
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
    ]


async def notify(env: RunbookEnvironment, policy: TriagePolicy, report: TriageReport, summary: str) -> None:
    escalation = policy.escalation[report.severity]
    jobs: list[Awaitable[Any]] = []
    if env.slack is not None:
        jobs.append(
            post_slack_message(
                env.slack,
                env.slack.channel_for(escalation.slack),
                f"🚨 {report.severity} INCIDENT: {report.alert_name}",
                _blocks(report, "INVESTIGATING"),
            )
        )
    if env.pagerduty is not None and escalation.pagerduty:
        jobs.append(
            send_pagerduty_event(
                env.pagerduty,
                "trigger",
                report.incident_id,
                f"{report.severity}: {report.alert_name} — {summary}",
                severity=escalation.pagerduty,
                details={f.enricher: f.title for f in report.findings},
            )
        )
    if env.opsgenie is not None and escalation.opsgenie:
        jobs.append(
            create_opsgenie_alert(
                env.opsgenie,
                f"{report.severity}: {report.alert_name}",
                alias=report.incident_id,
                priority=escalation.opsgenie,
                description="\n".join(f"{f.enricher}: {f.title}" for f in report.findings),
            )
        )
    results = await asyncio.gather(*jobs)
    if env.slack is not None and results:
        report.slack_ts = results[0].ts


async def update_thread(env: RunbookEnvironment, policy: TriagePolicy, report: TriageReport, text: str) -> None:
    if env.slack is not None and report.slack_ts:
        await post_slack_message(
            env.slack, env.slack.channel_for(policy.escalation[report.severity].slack), text, thread_ts=report.slack_ts
        )


async def postmortem(report: TriageReport, started: float) -> str:
    """The post-mortem markdown, with the timeline read back from the run's events in Prefect."""
    async with httpx.AsyncClient(base_url=str(PREFECT_API_URL.value()), timeout=10, verify=tls_context()) as client:
        response = await client.post(
            "/events/filter",
            json={
                "filter": {
                    "resource": {"id": [f"runbooks.incident.{report.incident_id}"]},
                    "occurred": {"since": datetime.fromtimestamp(started - 3600, UTC).isoformat()},
                },
                "limit": 50,
            },
        )
        response.raise_for_status()
    events = sorted(response.json()["events"], key=lambda e: e["occurred"])
    timeline = [
        f"| {e['occurred'][11:19]} | `{e['event']}` | {e['payload'].get('action', '')} "
        f"{e['payload'].get('target', '')} {e['payload'].get('outcome', '')} |"
        for e in events
    ]
    actions = [
        f"- {m.action} {m.target}: **{m.outcome}** {m.detail} (key `{m.key}`, by {m.by})" for m in report.mitigations
    ] or ["- none"]
    return "\n".join(
        [
            f"# Post-mortem {report.incident_id}: {report.alert_name}",
            "",
            f"- Severity: **{report.severity}** ({'; '.join(report.severity_reasons)})",
            f"- Resolved: {'yes' if report.resolved else 'no'}; time to triage {time.time() - started:.0f}s",
            "",
            "## Findings",
            "",
            *[f"- {'✅' if f.ok else '❌'} **{f.enricher}**: {f.title} {f.detail[:200]}" for f in report.findings],
            "",
            "## Actions",
            "",
            *actions,
            "",
            "## Timeline (from the run's events)",
            "",
            "| time (UTC) | event | detail |",
            "|---|---|---|",
            *timeline,
            "",
            "## Root cause",
            "",
            "_to be written by the incident commander_",
        ]
    )


# ------------------------------------------------------------------------------------------------------ flow
@flow(name="incident-triage")
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
    """Diagnose, tell, mitigate by policy, then watch until resolved (``watch_s``) with updates in the thread."""
    logger = get_run_logger()
    started = time.time()
    incident_id = incident_id or f"manual-{get_run_context().flow_run.id.hex[:12]}"  # type: ignore[union-attr]
    env = await load_environment(environment)
    policy = load_policy()
    dry = env.dry_run_by_default if dry_run is None else dry_run
    enrichers = PLATFORM_ENRICHERS + (KUBERNETES_ENRICHERS if env.kubernetes is not None else [])
    findings = await run_enrichers(env, enrichers)
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
    _event(
        "runbooks.incident.triaged",
        incident_id,
        {"severity": severity, "alert": alert_name, "failing": [f.enricher for f in findings if not f.ok]},
    )
    await notify(env, policy, report, summary)

    rule = policy.mitigation.for_severity(severity)
    for action, target, params in plan_actions(policy, alert_name, facts, incident_id) if rule.allowed else []:
        key = f"{incident_id}:{action}:{target}"
        record = MitigationRecord(action=action, target=target, key=key, outcome="dry-run")
        if not dry and rule.approval and not auto_approve:
            logger.warning("%s on %s needs approval: resume the run in the UI to decide", action, target)
            decision = await apause_flow_run(
                wait_for_input=Approval.with_initial_data(
                    description=f"{severity} {alert_name}: apply **{action}** on `{target}`?", approve=False
                ),
                timeout=approval_timeout_s,
                poll_interval=APPROVAL_POLL_INTERVAL_S,
            )
            record.by = decision.approver or "approver"
            if not decision.approve:
                record.outcome, record.detail = "rejected", decision.note
        if record.outcome == "dry-run" and not dry:
            try:
                record.detail = await apply_action(environment, action, target, key, params)
                record.outcome = "applied"
            except Exception as err:  # noqa: BLE001 - recorded, told, and the run fails at the end
                record.outcome, record.detail = "failed", f"{type(err).__name__}: {err}"
        elif record.outcome == "dry-run":
            record.detail = f"would {action} {target} with {params}"
        report.mitigations.append(record)
        _event(f"runbooks.mitigation.{record.outcome}", incident_id, record.model_dump())
        await update_thread(env, policy, report, f"🔧 {action} {target}: {record.outcome} {record.detail}"[:3000])

    deadline = started + watch_s
    while True:
        smoke = await run_enrichers(env, [enrich_health, enrich_metrics, enrich_models])
        report.resolved = all(f.ok for f in smoke)
        if report.resolved or time.time() >= deadline:
            break
        await update_thread(
            env,
            policy,
            report,
            "🔄 INCIDENT UPDATE — still failing: " + "; ".join(f"{f.enricher}: {f.title}" for f in smoke if not f.ok),
        )
        await asyncio.sleep(min(update_interval_s, max(0.0, deadline - time.time())))

    held_floor = any(m.action == "scale_out" and m.outcome == "applied" for m in report.mitigations)
    if report.resolved:
        _event("runbooks.incident.mitigated", incident_id, {"severity": severity})
        if held_floor:
            released = await k8s.release_hpa_floors(env.require_kubernetes(), incident_id)
            await update_thread(env, policy, report, _released_text(released))
        await update_thread(
            env,
            policy,
            report,
            f"✅ INCIDENT RESOLVED in {time.time() - started:.0f}s — actions: "
            + (", ".join(f"{m.action} {m.target} ({m.outcome})" for m in report.mitigations) or "none"),
        )
        if env.pagerduty is not None and policy.escalation[severity].pagerduty:
            await send_pagerduty_event(env.pagerduty, "resolve", incident_id)
    elif held_floor:
        await update_thread(
            env, policy, report, "📌 The HPA floor stays raised until the alert resolves (incident-resolved lowers it)."
        )
    await acreate_markdown_artifact(
        key=f"incident-{re.sub(r'[^a-z0-9-]', '-', incident_id.lower())}",
        markdown=await postmortem(report, started),
        description=f"{severity} {alert_name}",
    )
    if any(m.outcome == "failed" for m in report.mitigations):
        raise RuntimeError(
            "a mitigation failed: "
            + "; ".join(f"{m.action} {m.target}: {m.detail}" for m in report.mitigations if m.outcome == "failed")
        )
    return report


def _released_text(released: list[k8s.FloorRelease]) -> str:
    if not released:
        return "📉 No HPA floor was held for this incident."
    return "📉 " + "; ".join(
        f"HPA {r.hpa}: bounds back to {r.min_replicas}..{r.max_replicas}, it scales in at its own pace"
        if r.restored
        else f"HPA {r.hpa}: floor kept for {', '.join(r.remaining_incidents)}"
        for r in released
    )


@flow(name="incident-resolved")
async def incident_resolved(
    incident_id: str,
    alert_name: str = "",
    environment: str = "sandbox",
    dry_run: bool | None = None,
) -> list[k8s.FloorRelease]:
    """The alert cleared (the gateway's ``runbooks.incident.resolved``): give back what triage held for the
    incident (HPA floors raised by a scale-out), resolve its PagerDuty incident (same dedup key; a resolve of a
    key PagerDuty never saw changes nothing) and say so in Slack. Idempotent: a re-run finds nothing to give back.
    """
    logger = get_run_logger()
    env = await load_environment(environment)
    dry = env.dry_run_by_default if dry_run is None else dry_run
    released: list[k8s.FloorRelease] = []
    if env.kubernetes is not None:
        released = await k8s.release_hpa_floors(env.kubernetes, incident_id, dry_run=dry)
    logger.info("incident %s resolved (%s): %s", incident_id, alert_name or "alert", _released_text(released))
    if not dry:
        if env.pagerduty is not None:
            await send_pagerduty_event(env.pagerduty, "resolve", incident_id)
        if env.slack is not None:
            await post_slack_message(
                env.slack,
                env.slack.channel_for("alerts"),
                f"✅ RESOLVED {alert_name} ({incident_id}): the alert cleared. {_released_text(released)}",
            )
    _event(
        "runbooks.incident.closed",
        incident_id,
        {"alert": alert_name, "dry_run": dry, "released": [r.model_dump() for r in released]},
    )
    return released
