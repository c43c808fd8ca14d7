"""security-unauthorized-access: the seed's "Security Incidents / Unauthorized Access Attempts", in the catalogue's
shape.

diagnose (the API's logs through the Kubernetes tasks for the policy's patterns, ``UNAUTHORIZED|BLOCKED|THREAT``,
counted by source address; the platform's security events, unauthorized ones counted by source address; the rate
limits and blocks in force; concurrently) → plan (block each address with more unauthorized events than the policy's
``min_events``, for ``block_s``; never an address of the policy's ``allow_list``, which the report names with the
range that holds it) → decide (the policy's mode; the approval lists each block, each can be unticked) → apply (an
event per block) → verify (no unauthorized event from a blocked address since its block) → report (the seed's
security alert: source addresses and actions taken, in the Slack security channel;
``security-unauthorized-access-<kind>-...``).

A block is temporary: ``revert-temporary-actions`` lifts it at its end (the platform's own block runs the policy's
``platform_grace_s`` longer, as a safety net), and ``runbooks actions`` lists it until then.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks import platform as api
from tasks.catalogue.actions import Action, Finding
from tasks.catalogue.policy import load_policy
from tasks.catalogue.shape import (
    action_key,
    apply_all,
    choose_mode,
    decide,
    diagnose,
    log_findings,
    publish_findings,
    report,
)
from tasks.kubernetes.logs import deployment_logs
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "security-unauthorized-access"


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def security_unauthorized_access(
    environment: str = "sandbox",
    severity: Severity = "P1",
    incident: Annotated[str, Field(max_length=200)] | None = None,
    block_s: Annotated[int, Field(ge=1, le=7 * 86400)] | None = None,
    dry_run: bool | None = None,
) -> State:
    """Block the addresses behind unauthorized attempts (never an allow-listed one) for ``block_s`` (the policy's,
    the seed's 3,600 s, by default), and tell the security channel."""
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.unauthorized_access
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()
    duration = block_s or spec.block_s
    pattern = "|".join(spec.log_patterns)

    # 1. the API's logs, 2. the unauthorized events by address, 4. the rate limits
    reads: dict[str, Any] = {
        "events": api.list_security_events(env.platform, spec.hours),
        "limits": api.get_rate_limits(env.platform),
    }
    if env.kubernetes is not None:
        reads["logs"] = deployment_logs(
            env.kubernetes, env.api_deployment, all_pods=True, since_seconds=spec.hours * 3600, tail_lines=spec.log_tail
        )
    got, findings = await diagnose(reads)
    events = got.get("events", [])
    by_ip = Counter(e.source_ip for e in events if e.type == "unauthorized")
    blocked = {b["ip"]: b for b in (got.get("limits") or {}).get("blocked_ips", [])}
    if "logs" in got:  # the lines, and their count by source address
        findings += log_findings(pattern, got["logs"].grep(pattern), spec.log_patterns)
    for ip, count in by_ip.most_common(20):
        findings.append(
            Finding(
                check=f"unauthorized {ip}",
                figure=f"{count} in {spec.hours} h",
                verdict="fail" if count > spec.min_events else "info",
                detail=f"blocked until {blocked[ip]['until']}" if ip in blocked else "",
            )
        )
    if "limits" in got:
        findings.append(Finding(check="blocks in force", figure=str(len(blocked)), detail=", ".join(sorted(blocked))))

    # 3. block the addresses over the threshold, never an allow-listed one
    actions: list[Action] = []
    spared: dict[str, str] = {}
    for ip, count in by_ip.most_common():
        if count <= spec.min_events or ip in blocked:
            continue
        entry = policy.allowed(ip)
        if entry is not None:
            spared[ip] = entry
            findings.append(
                Finding(
                    check=f"allow-list {ip}",
                    figure=f"{count} unauthorized",
                    verdict="warn",
                    detail=f"not blocked: in the allow-list entry {entry}",
                )
            )
            continue
        actions.append(
            Action(
                kind="block_ip",
                target=ip,
                reason=f"{count} unauthorized attempts in {spec.hours} h (over {spec.min_events})",
                params={"duration_s": duration + policy.platform_grace_s},
                key=action_key(RUNBOOK, scope, "block_ip", ip),
                expires_in_s=duration,
            )
        )
    await publish_findings(RUNBOOK, env, findings)
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, env=env)
    records += await apply_all(env, RUNBOOK, chosen, by)

    # verify: a blocked address sends no unauthorized event after its block
    applied = {r.target: r for r in records if r.kind == "block_ip" and r.outcome == "applied"}
    if applied:
        after = await api.list_security_events(env.platform, 1)
        for ip, record in applied.items():
            since = datetime.fromtimestamp(record.applied_at or 0, UTC)
            late = sum(1 for e in after if e.source_ip == ip and e.type == "unauthorized" and e.at > since)
            findings.append(
                Finding(
                    check=f"after block {ip}",
                    figure=f"{late} unauthorized since the block",
                    verdict="ok" if late == 0 else "fail",
                )
            )
    sources = ", ".join(f"{ip} ({n})" for ip, n in by_ip.most_common(10)) or "none"
    taken = ", ".join(f"{r.kind} {r.target}: {r.outcome}" for r in records) or "none"
    extra = f"*Incident*: Unauthorized Access\n*Source IPs*: {sources}\n*Actions Taken*: {taken}"
    if spared:
        extra += "\n*Not blocked (allow-list)*: " + ", ".join(f"{ip} (in {entry})" for ip, entry in spared.items())
    headline = f"{len(applied)} address(es) blocked, {len(spared)} allow-listed not blocked"
    get_run_logger().info("%s (mode %s)", headline, mode)
    markdown = await report(env, policy, RUNBOOK, findings, records, headline=headline, extra=extra)
    data = {"mode": mode, "records": records, "findings": findings, "spared": spared, "report": markdown}
    if any(r.outcome == "failed" for r in records) or any(
        f.verdict == "fail" and f.check.startswith("after") for f in findings
    ):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
