"""The catalogue's shape, written once: diagnose (concurrent reads, a findings table) → decide (auto / approve /
observe) → apply with an idempotency key in Redis and an event per action → temporary actions recorded with their
reversal and expiry (:func:`revert_due`, run on a schedule by ``revert-temporary-actions``) → verify by re-reading →
report (artifacts and Slack in the runbook's channel)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for
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
from tasks.triage.policy import Mode, Severity

T = TypeVar("T")


def action_key(runbook: str, scope: str, kind: str, target: str) -> str:
    """The idempotency key of one action: ``<runbook>:<scope>:<kind>:<target>``; the scope is the incident (every
    run for one incident shares it), else the run."""
    return f"{runbook}:{scope}:{kind}:{target}"


def choose_mode(env: RunbookEnvironment, policy: CataloguePolicy, severity: Severity, dry_run: bool | None) -> Mode:
    """``observe`` for a dry run (the default outside the sandbox), else the policy's mode for the kind and
    severity."""
    dry = env.dry_run_by_default if dry_run is None else dry_run
    return "observe" if dry else policy.mode(env.kind, severity)


async def diagnose(reads: Mapping[str, Awaitable[T]]) -> tuple[dict[str, T], list[Finding]]:
    """Run the reads concurrently: (the answers by name, a ``fail`` finding per read that failed). A failing read
    never hides the others (the triage's enrichers do the same)."""
    names = list(reads)
    answers = await asyncio.gather(*reads.values(), return_exceptions=True)
    ok: dict[str, T] = {}
    failed: list[Finding] = []
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, Exception):
                raise answer  # cancellation and the like go through
            failed.append(Finding(check=name, figure="unreadable", verdict="fail", detail=describe_error(answer)))
        else:
            ok[name] = answer
    return ok, failed


ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_SOURCE = re.compile(r"\b(?:ip|client_ip|source_ip|remote_addr)=((?:\d{1,3}\.){3}\d{1,3})\b")


def source_address(line: str) -> str | None:
    """The address a log line names as its source (``ip=...``), else the first address in it."""
    found = _SOURCE.search(line) or ADDRESS.search(line)
    return found.group(1) if found and found.re is _SOURCE else found.group(0) if found else None


def log_findings(
    pattern: str, lines: Sequence[str], words: Sequence[str], *, ignore_case: bool = False, top: int = 10
) -> list[Finding]:
    """The log lines that matched ``pattern``: a finding with their count by word (``detail``), then one per
    source address (the ``top`` most frequent): its count of lines, by word."""

    def matched(line: str) -> list[str]:
        text = line.lower() if ignore_case else line
        return [w for w in words if (w.lower() if ignore_case else w) in text]

    by_word = Counter(w for line in lines for w in matched(line))
    count: Counter[str] = Counter()
    words_of: dict[str, Counter[str]] = {}
    for line in lines:
        address = source_address(line)
        if address is not None:
            count[address] += 1
            words_of.setdefault(address, Counter()).update(matched(line))
    summary = Finding(
        check=f"API log lines {pattern}",
        figure=str(len(lines)),
        verdict="warn" if lines else "ok",
        detail=", ".join(f"{w} x{n}" for w, n in by_word.most_common())
        + (f"; from {len(count)} address(es)" if count else ""),
    )
    return [summary] + [
        Finding(
            check=f"API log {address}",
            figure=f"{n} line(s)",
            verdict="warn",
            detail=", ".join(f"{w} x{k}" for w, k in words_of[address].most_common()),
        )
        for address, n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    ]


async def publish_findings(runbook: str, env: RunbookEnvironment, findings: list[Finding]) -> None:
    """The findings table (``<runbook>-<kind>-findings``): check, figure, verdict, detail."""
    rows = [f.model_dump() for f in findings] or [{"check": "none", "figure": "", "verdict": "info", "detail": ""}]
    await publish_table(f"{runbook}-{env.kind}-findings", rows, description=f"{runbook}: findings")


def approval_form(actions: list[Action]) -> type[Any]:
    """A typed form listing the actions, each ticked (untick to leave it out); ``approve`` defaults to no."""
    from prefect.input import RunInput

    fields: dict[str, Any] = {
        "approve": (bool, Field(False, description="Apply the ticked actions?")),
        "approver": (str, Field("", description="Who decides (for the record).")),
    }
    for i, a in enumerate(actions):
        fields[f"action_{i + 1}"] = (bool, Field(True, title=a.label, description=a.reason))
    return create_model("CatalogueApproval", __base__=RunInput, **fields)


async def decide(
    runbook: str,
    actions: list[Action],
    mode: Mode,
    policy: CataloguePolicy,
    *,
    note: str = "",
    env: RunbookEnvironment | None = None,
) -> tuple[list[Action], list[ActionRecord], str]:
    """(actions to apply, records of those left out, who decided). ``observe`` applies nothing; in ``approve`` no
    answer within the policy's timeout, or ``approve`` left unticked, is a denial, and ``env``'s Slack is told in
    the runbook's channel with the run's link."""
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
    if env is not None and env.slack is not None:
        link = url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None
        text = (
            f"✋ APPROVAL NEEDED: {runbook} ({env.kind}) proposes "
            + "; ".join(a.label for a in actions)
            + f". Approve or untick in the run: {link or 'flow run ' + str(run)} "
            f"(no answer within {policy.approval_timeout_s}s is a denial)"
        )
        await post_slack_message(env.slack, env.slack.channel_for(policy.channel(runbook)), text)
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


def skipped(runbook: str, a: Action, detail: str) -> ActionRecord:
    """An approved action the flow did not need after all (e.g. the fallback once a reconnect worked)."""
    return _record(runbook, a, "skipped", "", current_run(), detail)


@once_task  # never retried blindly: the key in Redis says whether it happened
async def apply_action(env: RunbookEnvironment, runbook: str, action: Action, by: str) -> ActionRecord:
    """Claim the key, apply, record (temporary: with reversal and expiry); an event either way; never raises."""
    run = current_run()
    record = _record(runbook, action, "applying", by, run)
    held = await act.claim(env.redis, record)
    if held is not None and held.outcome != "failed":
        done = held.model_copy(update={"outcome": "skipped", "detail": f"already {held.outcome} by run {held.run}"})
        emit("runbooks.action.skipped", _resource(done), done.model_dump())
        return done
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
        records.append(await apply_one(env, runbook, a, by))
    return records


async def apply_one(env: RunbookEnvironment, runbook: str, action: Action, by: str) -> ActionRecord:
    record = await apply_action(env, runbook, action, by)
    if record.outcome == "applied":
        record.verified = await act.in_force(env.platform, record, action.params)
    return record


async def revert_due(env: RunbookEnvironment, due_by: float | None = None) -> list[ActionRecord]:
    """Every temporary action whose expiry has passed: run its reversal, then read the platform back. Taken out of
    the expiry set first (one worker reverts each); a reversal that fails, or an effect still in force, stays in
    the set as ``revert-failed`` and is tried again by the next run. An event per reversal."""
    when = act.now() if due_by is None else due_by
    done: list[ActionRecord] = []
    for record in await act.temporary_actions(env.redis, due_by=when):
        if not await act.take(env.redis, record.key):
            continue  # another worker took it
        try:
            detail = await act.undo(env.platform, record)
            still = await act.in_force(env.platform, record)
        except Exception as err:  # noqa: BLE001 - recorded, tried again on the next run
            detail, still = describe_error(err), True
        reverted = record.model_copy(
            update={
                "outcome": "revert-failed" if still else "reverted",
                "detail": detail if not still else f"{detail}; still in force on the platform",
                "run": current_run(),
                "by": "revert-temporary-actions",
                "verified": still is False if still is not None else None,
            }
        )
        await act.save(env.redis, reverted)
        emit(f"runbooks.action.{reverted.outcome}", _resource(reverted), reverted.model_dump())
        done.append(reverted)
    return done


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
) -> str:
    """Keyed artifacts (actions ``<runbook>-<kind>-actions``, report ``<runbook>-<kind>-report``) and the Slack
    message in the runbook's channel (the policy's ``channels``: security runbooks to the security channel).
    Returns the report's markdown."""
    key = f"{runbook}-{env.kind}"
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
        text = f"{runbook} ({env.kind}): {headline}\n" + "\n".join(
            f"• {r.kind} {r.target}: {r.outcome}" + (f" until {r.expires}" if r.expires else "") for r in records
        )
        if extra:
            text += "\n" + extra
        await post_slack_message(env.slack, env.slack.channel_for(policy.channel(runbook)), text)
    return markdown


def failed(records: list[ActionRecord]) -> list[ActionRecord]:
    return [r for r in records if r.outcome == "failed"]
