"""Plan, decide and apply mitigations: the seed's alert responses, with preconditions, approval and a record.

Which actions an alert may take, in which order, and how a triage decides (the mode ``auto`` / ``approve`` /
``observe`` per environment kind and severity) come from the policy (:mod:`tasks.triage.policy`); the
preconditions (a recent rollout, a crash loop, a model down) are here.

The idempotency key of a destructive action (rollback, restart) is kept on the Deployment it acts on
(:func:`tasks.kubernetes.claim_mitigation`, a compare-and-set before the action), so that two runs on two
workers never both act: the second reports "already applied by <run>".
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from blocks.environment import load_environment
from kernel.retry import once_task
from tasks import kubernetes as k8s
from tasks.approval import running_again
from tasks.deploy.rollout import roll_back_deployment
from tasks.platform import open_circuit_breaker, set_model_fallback
from tasks.reporting import describe_error
from tasks.triage.policy import Action, Mode, TriagePolicy

#: how often a paused run checks for the approver's answer
APPROVAL_POLL_INTERVAL_S = 5


class PlannedAction(BaseModel):
    action: Action
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""  # which facts justify it, for the approver

    def key(self, incident_id: str) -> str:
        """The idempotency key: one incident does one action on one target once."""
        return f"{incident_id}:{self.action}:{self.target}"


class MitigationRecord(BaseModel):
    action: Action
    target: str
    key: str
    outcome: str  # applied | dry-run (observed, or decided and not yet applied) | skipped | rejected | failed
    detail: str = ""
    by: str = "incident-triage"


class Approval(RunInput):
    approve: bool = Field(description="Apply this mitigation?")
    approver: str = Field(default="", description="Who decides (for the record).")
    note: str = ""


# ---------------------------------------------------------------------------------------------------- plan
def plan_actions(
    policy: TriagePolicy, alert_name: str, facts: dict[str, Any], api_deployment: str, incident_id: str = ""
) -> list[PlannedAction]:
    """Which actions the facts justify, in the alert branch's order of preference (preconditions here)."""
    m = policy.mitigation
    limits = policy.thresholds
    planned: list[PlannedAction] = []
    broken_release = (
        bool(facts.get("crashlooping_pods")) or bool(facts.get("error_log_lines")) or facts.get("health_ok") is False
    )
    slow_or_failing = (facts.get("response_time_p95_s") or 0) > limits.response_time_p95_s or (
        facts.get("error_rate") or 0
    ) > limits.severe_error_rate
    for action in policy.branch(alert_name).mitigations:
        good_images = facts.get("last_known_good_images") or []
        has_previous = (facts.get("api_revision") or 0) > 1 or bool(good_images)
        if action == "rollback" and facts.get("recent_rollout") and broken_release and has_previous:
            # the images go into the plan, so what an approver reads is exactly what is applied
            where = (
                f"back to the last known good release ({', '.join(good_images)})"
                if good_images
                else "back to the previous revision (no last known good release is recorded)"
            )
            planned.append(
                PlannedAction(
                    action="rollback",
                    target=api_deployment,
                    params={"timeout_s": 300, **({"to_images": list(good_images)} if good_images else {})},
                    reason=f"revision {facts.get('api_revision')} was rolled out recently and is broken "
                    f"({_broken_because(facts)}): {where}",
                )
            )
            break  # a rollback changes everything else: decide again after it
        if action == "restart" and facts.get("health_ok") is False and not facts.get("recent_rollout"):
            planned.append(
                PlannedAction(
                    action="restart", target=api_deployment, reason="the health check fails and nothing was rolled out"
                )
            )
        if (
            action == "scale_out"
            and not facts.get("crashlooping_pods")
            and (facts.get("api_replicas") or 0) < m.scale_out_replicas
            and slow_or_failing
        ):
            planned.append(
                PlannedAction(
                    action="scale_out",
                    target=api_deployment,
                    params={"replicas": m.scale_out_replicas, "incident": incident_id},
                    reason=f"p95 {facts.get('response_time_p95_s') or 0:.2f}s (limit {limits.response_time_p95_s}s), "
                    f"error rate {facts.get('error_rate') or 0:.1%} (limit {limits.severe_error_rate:.1%}): "
                    f"{facts.get('api_replicas') or 0} -> {m.scale_out_replicas} replicas",
                )
            )
        if action == "open_circuit_breaker":
            for model in facts.get("down_models") or []:
                planned.append(
                    PlannedAction(
                        action="open_circuit_breaker",
                        target=model,
                        params={"duration_s": m.circuit_breaker_duration_s, "fallback_model": m.fallback_model},
                        reason=f"{model} is down: its traffic goes to {m.fallback_model} "
                        f"for {m.circuit_breaker_duration_s}s",
                    )
                )
    return planned


def _broken_because(facts: dict[str, Any]) -> str:
    pods, lines = facts.get("crashlooping_pods") or 0, facts.get("error_log_lines") or 0
    signs = [
        f"{pods} pod{'s' if pods > 1 else ''} crash-looping" if pods else "",
        f"{lines} ERROR log line{'s' if lines > 1 else ''}" if lines else "",
        "health check failing" if facts.get("health_ok") is False else "",
    ]
    return ", ".join(sign for sign in signs if sign)


# -------------------------------------------------------------------------------------------------- decide
def approval_description(planned: PlannedAction, what: str, timeout_s: int) -> str:
    """The markdown Prefect shows above the approval form in the UI: the proposed action, its target, why, and
    with which parameters."""
    params = ", ".join(f"`{name}={value}`" for name, value in planned.params.items() if name != "incident")
    lines = [
        f"**{what}**: apply this mitigation?",
        "",
        f"- **{planned.action}** on `{planned.target}`" + (f": {planned.reason}" if planned.reason else ""),
    ]
    if params:
        lines.append(f"  - with {params}")
    lines += ["", f"Set *approve* and your name, then submit. No answer within {timeout_s}s is a denial."]
    return "\n".join(lines)


async def decide(
    planned: PlannedAction,
    incident_id: str,
    mode: Mode,
    *,
    auto_approve: bool,
    approval_timeout_s: int,
    what: str,
) -> MitigationRecord:
    """The record before anything is applied: ``dry-run`` (to apply unless the mode is ``observe``) or
    ``rejected``.

    In mode ``approve`` the run pauses for a typed answer in the UI (unless ``auto_approve``); no answer before
    ``approval_timeout_s`` is a denial.
    """
    record = MitigationRecord(
        action=planned.action, target=planned.target, key=planned.key(incident_id), outcome="dry-run"
    )
    if mode != "approve" or auto_approve:
        return record
    get_run_logger().warning(
        "%s on %s needs approval: resume the run in the UI to decide", planned.action, planned.target
    )
    try:
        decision = await apause_flow_run(
            wait_for_input=Approval.with_initial_data(
                description=approval_description(planned, what, approval_timeout_s), approve=False
            ),
            timeout=approval_timeout_s,
            poll_interval=APPROVAL_POLL_INTERVAL_S,
        )
    except FlowPauseTimeout:
        await running_again()  # the server keeps a timed-out pause: the run goes on, denied
        record.outcome, record.by = "rejected", "timeout"
        record.detail = f"no answer within {approval_timeout_s}s: denied"
        return record
    record.by = decision.approver or "approver"
    if not decision.approve:
        record.outcome, record.detail = "rejected", decision.note
    return record


# --------------------------------------------------------------------------------------------------- apply
async def carry_out(
    environment: str, planned: PlannedAction, record: MitigationRecord, *, observe: bool
) -> MitigationRecord:
    """Apply a decided action (or only describe it when ``observe``); a failure is recorded, never raised here."""
    if record.outcome != "dry-run":
        return record
    if observe:
        record.detail = f"would {planned.action} {planned.target} with {planned.params}"
        return record
    try:
        applied = await apply_action(environment, planned.action, planned.target, record.key, planned.params)
        record.outcome, record.detail = applied.outcome, applied.detail
    except Exception as err:  # noqa: BLE001 - recorded, told, and the run fails at the end
        record.outcome, record.detail = "failed", describe_error(err)
    return record


class Applied(BaseModel):
    outcome: str  # applied | skipped (another run holds the key)
    detail: str


def current_run() -> str:
    """Who acts, for a claim's record: the flow run, else the task run (a task called outside a flow)."""
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return str(task_ctx.task_run.flow_run_id or task_ctx.task_run.id)
    return "unknown-run"


@once_task  # never retried: a rollback or a restart is never retried blindly
async def apply_action(env_name: str, action: Action, target: str, key: str, params: dict[str, Any]) -> Applied:
    """Apply one mitigation. A rollback or a restart first claims its key on the Deployment (compare-and-set):
    when another run holds it, nothing is done and the outcome is ``skipped``, "already applied by <run>"."""
    env = await load_environment(env_name)
    if action in ("rollback", "restart"):
        cluster = env.require_kubernetes()
        incident = key.rsplit(":", 2)[0]  # the key is <incident>:<action>:<target>
        run = current_run()
        claim = await k8s.claim_mitigation(cluster, target, incident, action, key, run)
        if not claim.claimed:
            return Applied(outcome="skipped", detail=f"already applied by {claim.run} ({claim.action}, {claim.at})")
        try:
            if action == "rollback" and params.get("to_images"):
                step = await roll_back_deployment(cluster, target, list(params["to_images"]))
                undo_detail = f"back to the last known good release: {step.detail}"
            elif action == "rollback":
                undo_detail = (await k8s.rollout_undo(cluster, target)).message
            else:
                restart = await k8s.rollout_restart(cluster, target)
        except Exception:
            # the action never reached the Deployment: give the key back so that a re-run may try again
            await k8s.release_mitigation_claim(cluster, target, incident, run)
            raise
        if action == "restart":
            detail = f"restarted at {restart.restarted_at}"
        else:
            detail = undo_detail
        await k8s.complete_mitigation_claim(cluster, target, incident, run, detail)
        if action == "rollback":
            status = await k8s.rollout_status(cluster, target, timeout_s=params.get("timeout_s", 300))
            detail = f"{detail}; {status.message}"
        return Applied(outcome="applied", detail=detail)
    if action == "scale_out":
        # raises the HPA's floor too, else the HPA scales it back; released when the incident resolves
        out = await k8s.scale_out_deployment(env.require_kubernetes(), target, params["replicas"], params["incident"])
        held = (
            f"; HPA {out.hpa} floor {out.original_min_replicas} -> {out.hpa_min_replicas} until resolved"
            if out.hpa
            else ""
        )
        return Applied(outcome="applied", detail=f"replicas {out.previous_replicas} -> {out.replicas}{held}")
    breaker = await open_circuit_breaker(env.platform, target, params["duration_s"])
    fallback = await set_model_fallback(env.platform, target, params["fallback_model"], params["duration_s"])
    fallback_model = fallback.response.get("fallback_model", "")
    return Applied(
        outcome="applied",
        detail=f"circuit breaker open for {params['duration_s']}s, fallback {fallback_model}"
        + (f" ({breaker.response.get('state', '')})" if breaker.response else ""),
    )
