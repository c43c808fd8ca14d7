"""The catalogue's shape, written once: decide (auto / approve / observe), apply with an idempotency key in Redis and
an event per action, record temporary actions, verify by re-reading, report (artifacts and Slack)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from pydantic import Field, create_model

from blocks.environment import RunbookEnvironment
from kernel.retry import once_task
from tasks.approval import ask_approval
from tasks.catalogue import actions as act
from tasks.catalogue.actions import Action, ActionRecord, Finding
from tasks.catalogue.policy import CataloguePolicy
from tasks.notify import post_slack_message
from tasks.reporting import describe_error, emit, publish_markdown, publish_table
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Mode


def approval_form(actions: list[Action]) -> type[Any]:
    """A typed form listing the actions, each ticked (untick to leave it out); ``approve`` defaults to no."""
    from prefect.input import RunInput

    fields: dict[str, Any] = {
        "approve": (bool, Field(False, description="Apply the ticked actions?")),
        "approver": (str, Field("", description="Who decides (for the record).")),
    }
    for i, a in enumerate(actions):
        fields[f"action_{i + 1}"] = (bool, Field(True, description=f"{a.label}: {a.reason}"))
    return create_model("CatalogueApproval", __base__=RunInput, **fields)


async def decide(
    runbook: str, actions: list[Action], mode: Mode, policy: CataloguePolicy, *, note: str = ""
) -> tuple[list[Action], list[ActionRecord], str]:
    """(actions to apply, records of those left out, who decided). ``observe`` applies nothing."""
    run = current_run()
    if not actions:
        return [], [], mode
    if mode == "observe":
        return (
            [],
            [_record(runbook, a, "observed", "observe", run, "observe mode: not applied") for a in actions],
            "observe",
        )
    if mode == "auto":
        return actions, [], "auto"
    get_run_logger().warning("%s: %d action(s) need approval: resume the run in the UI", runbook, len(actions))
    lines = [f"**{runbook}**: apply these actions? Untick the ones to leave out.", ""]
    lines += [f"{i + 1}. **{a.label}**: {a.reason}" for i, a in enumerate(actions)]
    if note:
        lines += ["", note]
    lines += ["", f"No answer within {policy.approval_timeout_s}s is a denial."]
    answer = await ask_approval(
        approval_form(actions), description="\n".join(lines), timeout_s=policy.approval_timeout_s, poll_s=2
    )
    if answer is None:
        return [], [_record(runbook, a, "rejected", "timeout", run, "no answer: denied") for a in actions], "timeout"
    by = getattr(answer, "approver", "") or "approver"
    chosen, left = [], []
    for i, a in enumerate(actions):
        if getattr(answer, "approve", False) and getattr(answer, f"action_{i + 1}", False):
            chosen.append(a)
        else:
            left.append(_record(runbook, a, "rejected", by, run, "not approved"))
    return chosen, left, by


def _record(runbook: str, a: Action, outcome: str, by: str, run: str, detail: str = "") -> ActionRecord:
    return ActionRecord(
        key=a.key,
        runbook=runbook,
        kind=a.kind,
        target=a.target,
        reason=a.reason,
        outcome=outcome,
        by=by,
        run=run,
        detail=detail,
    )


@once_task  # never retried blindly: the key in Redis says whether it happened
async def apply_action(env: RunbookEnvironment, runbook: str, action: Action, by: str) -> ActionRecord:
    """Claim the key, apply, record (temporary: with reversal and expiry); an event either way; never raises."""
    run = current_run()
    record = _record(runbook, action, "applying", by, run)
    held = await act.claim(env.redis, record)
    if held is not None and held.outcome not in ("applying", "failed"):
        skipped = held.model_copy(update={"outcome": "skipped", "detail": f"already {held.outcome} by {held.run}"})
        emit("runbooks.action.skipped", _resource(skipped), skipped.model_dump())
        return skipped
    try:
        detail, reversal = await act.DO[action.kind](env.platform, action)
    except Exception as err:  # noqa: BLE001 - recorded, told, and the flow fails at the end
        record.outcome, record.detail = "failed", describe_error(err)
        await act.release(env.redis, action.key)
        emit("runbooks.action.failed", _resource(record), record.model_dump())
        return record
    record.outcome, record.detail, record.applied_at = "applied", detail, act.now()
    if reversal is not None and action.expires_in_s:
        record.expires_at = record.applied_at + action.expires_in_s
        record.reversal = {**reversal, "applied": action.params}
    await act.save(env.redis, record)
    emit("runbooks.action.applied", _resource(record), record.model_dump())
    return record


def _resource(record: ActionRecord) -> dict[str, str]:
    return {"prefect.resource.id": f"runbooks.action.{record.key}", "runbooks.runbook": record.runbook}


async def apply_all(env: RunbookEnvironment, runbook: str, actions: list[Action], by: str) -> list[ActionRecord]:
    """One at a time, in the plan's order, then read each back from the platform."""
    records = []
    for a in actions:
        record = await apply_action(env, runbook, a, by)
        if record.outcome == "applied":
            record.verified = await act.in_force(env.platform, record)
        records.append(record)
    return records


def action_rows(records: list[ActionRecord]) -> list[dict[str, Any]]:
    return [
        {
            "action": r.kind,
            "target": r.target,
            "outcome": r.outcome,
            "by": r.by,
            "verified": "" if r.verified is None else str(r.verified),
            "expires": r.expires,
            "reason": r.reason,
            "detail": r.detail,
        }
        for r in records
    ]


async def report(
    env: RunbookEnvironment,
    policy: CataloguePolicy,
    runbook: str,
    findings: list[Finding],
    records: list[ActionRecord],
    *,
    headline: str,
    extra: str = "",
) -> None:
    """Keyed artifacts (findings, actions, report) and the Slack message in the runbook's channel."""
    key = f"{runbook}-{env.kind}"
    await publish_table(f"{key}-findings", [f.model_dump() for f in findings], description=f"{runbook}: findings")
    await publish_table(
        f"{key}-actions", action_rows(records) or [{"action": "none"}], description=f"{runbook}: actions"
    )
    lines = [f"# {runbook}: {headline}", "", "## Findings", ""]
    lines += [f"- **{f.check}**: {f.figure} ({f.verdict}){' — ' + f.detail if f.detail else ''}" for f in findings]
    lines += ["", "## Actions", ""]
    lines += [
        f"- **{r.kind} {r.target}**: {r.outcome}{' by ' + r.by if r.by else ''} — {r.reason}"
        + (f"; {r.detail}" if r.detail else "")
        + (f"; until {r.expires}" if r.expires else "")
        for r in records
    ] or ["- none"]
    if extra:
        lines += ["", extra]
    markdown = "\n".join(lines)
    await publish_markdown(f"{key}-report", markdown, description=f"{runbook}: {headline}")
    if env.slack is not None:
        text = f"{runbook}: {headline}\n" + "\n".join(
            f"• {r.kind} {r.target}: {r.outcome}" + (f" until {r.expires}" if r.expires else "") for r in records
        )
        await post_slack_message(env.slack, env.slack.channel_for(policy.channel(runbook)), text)
