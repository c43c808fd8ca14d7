"""security-key-compromise: the seed's "Security Incidents / API Key Compromise", in the catalogue's shape.

revoke first (``DELETE /admin/api-keys/<id>``) → diagnose (its usage over 24 h and its audit trail over 72 h,
concurrently) → a replacement key for its owner with the seed's permissions (:func:`tasks.catalogue.keys.rotate_key`:
its value only in the Secret block ``replacement-key-<old id>``, named in the report; a re-run after a crash at any
step finishes the rotation without a second key) → verify (the old key revoked, exactly one live replacement) →
report (``security-key-compromise-<kind>-findings``/``-actions``/``-report``, Slack security channel).

The mode (auto / approve / observe) is the catalogue policy's for the environment's kind and the severity; the
approval form lists the revocation and the replacement, each of which can be unticked. A dry run (the default
outside the sandbox) describes only.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks import platform as api
from tasks.catalogue.actions import Action, ActionRecord, Finding
from tasks.catalogue.keys import replacement_name, rotate_key, secret_block_name
from tasks.catalogue.policy import load_policy
from tasks.catalogue.shape import action_key, apply_one, choose_mode, decide, diagnose, publish_findings, report
from tasks.reporting import describe_error, emit
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "security-key-compromise"


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def security_key_compromise(
    key_id: Annotated[str, Field(min_length=1, max_length=200)],
    environment: str = "sandbox",
    severity: Severity = "P1",
    incident: Annotated[str, Field(max_length=200)] | None = None,
    dry_run: bool | None = None,
) -> State:
    """Revoke ``key_id`` at once, read what it did, and give its owner one replacement (in a Secret block)."""
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.key_compromise
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()
    block = secret_block_name(key_id)
    actions = [
        Action(
            kind="revoke_key",
            target=key_id,
            reason="reported compromised: revoked before anything else",
            key=action_key(RUNBOOK, scope, "revoke_key", key_id),
        ),
        Action(
            kind="issue_key",
            target=key_id,
            reason=f"a replacement for its owner with {spec.permissions}, its value only in the Secret block {block}",
            params={"permissions": spec.permissions},
            key=action_key(RUNBOOK, scope, "issue_key", key_id),
        ),
    ]
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, env=env)
    kinds = {a.kind for a in chosen}

    # 2. revoke first
    if "revoke_key" in kinds:
        records.append(await apply_one(env, RUNBOOK, actions[0], by))

    # 3. usage over 24 h, 5. the audit trail over 72 h
    got, findings = await diagnose(
        {
            "usage": api.get_api_key_usage(env.platform, key_id, spec.usage_hours),
            "audit": api.search_audit(env.platform, key_id, spec.audit_hours),
        }
    )
    usage: dict[str, Any] | None = got.get("usage")
    if usage is not None:
        findings += [
            Finding(check=f"requests {spec.usage_hours} h", figure=str(usage["requests"])),
            Finding(check=f"errors {spec.usage_hours} h", figure=str(usage["errors"])),
            Finding(
                check="source addresses",
                figure=str(usage["unique_source_ips"]),
                verdict="warn" if usage["unique_source_ips"] > 3 else "info",
            ),
            Finding(check="owner", figure=usage["user_id"]),
            Finding(check="last used", figure=str(usage["last_used_at"])),
        ]
    audit: list[dict[str, Any]] = got.get("audit") or []
    by_action = Counter(e["action"] for e in audit)
    findings.append(
        Finding(
            check=f"audit trail {spec.audit_hours} h",
            figure=str(len(audit)),
            detail=", ".join(f"{a} x{n}" for a, n in by_action.most_common(8)),
        )
    )
    await publish_findings(RUNBOOK, env, findings)

    # 4. one replacement for the owner (a re-run finds the one already issued)
    extra = ""
    if "issue_key" in kinds:
        record = ActionRecord(
            key=actions[1].key,
            runbook=RUNBOOK,
            kind="issue_key",
            target=key_id,
            reason=actions[1].reason,
            outcome="failed",
            by=by,
            run=current_run(),
        )
        if usage is None:
            record.detail = "the key's owner is unknown (its usage could not be read): no replacement issued"
        else:
            try:
                rotation = await rotate_key(
                    env.platform,
                    env.redis,
                    key_id,
                    usage["user_id"],
                    spec.replacement_name,
                    spec.permissions,
                )
                record.outcome = "applied" if rotation.issued else "skipped"
                record.detail = (
                    f"{'issued' if rotation.issued else 'already issued'} {rotation.new_key_id} for "
                    f"{usage['user_id']}, value in the Secret block {rotation.block}"
                    + (f"; revoked unclaimed {', '.join(rotation.orphans_revoked)}" if rotation.orphans_revoked else "")
                )
                extra = (
                    f"The replacement key `{rotation.new_key_id}` is in the Prefect Secret block "
                    f"`{rotation.block}` for its owner `{usage['user_id']}` to collect; its value is nowhere else."
                )
            except Exception as err:  # noqa: BLE001 - recorded and reported; the run fails
                record.detail = describe_error(err)
        emit(
            f"runbooks.action.{record.outcome}",
            {"prefect.resource.id": f"runbooks.action.{record.key}", "runbooks.runbook": RUNBOOK},
            record.model_dump(),
        )
        records.append(record)

    # verify: the old key revoked, exactly one live replacement
    after = await api.get_api_key_usage(env.platform, key_id, 1)
    replacements = [
        k
        for k in await api.list_api_keys(env.platform, after["user_id"])
        if k.name == replacement_name(spec.replacement_name, key_id) and k.revoked_at is None
    ]
    findings.append(
        Finding(check="revoked", figure=str(after["revoked"]), verdict="ok" if after["revoked"] else "fail")
    )
    findings.append(
        Finding(
            check="live replacements",
            figure=str(len(replacements)),
            verdict="ok" if len(replacements) == 1 else "fail" if mode == "auto" else "info",
        )
    )
    rotated = bool(after["revoked"]) and len(replacements) == 1
    headline = (
        f"{key_id} revoked, one replacement in the Secret block {block}"
        if rotated
        else f"{key_id} {'revoked' if after['revoked'] else 'NOT revoked'}, {len(replacements)} live replacement(s)"
    )
    logger.info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline, extra=extra)
    data = {
        "mode": mode,
        "records": records,
        "findings": findings,
        "block": block if rotated else None,
        "replacement": replacements[0].id if len(replacements) == 1 else None,
    }
    if any(r.outcome == "failed" for r in records) or (mode == "auto" and not rotated):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
