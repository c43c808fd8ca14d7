"""security-suspicious-usage: the seed's "Security Incidents / Suspicious AI Usage Patterns", in the catalogue's
shape.

diagnose (the platform's anomalies over 24 h; the top users, those over the policy's ``min_requests``; the API's logs
through the Kubernetes tasks for the seed's patterns, ``malware|hack|exploit|vulnerability`` without case, counted by
source address; the throttles in force; concurrently) → plan (throttle each user over the threshold to ``rate_limit``
requests/min for ``throttle_s``, never a user of ``exempt_users``) → decide (the policy's mode; each throttle can be
unticked) → apply (an event per throttle) → verify (the throttles read back from the rate limits) → the platform's
security report of the window (the seed's step 5) → report (Slack security channel,
``security-suspicious-usage-<kind>-...``).

A throttle is temporary: ``revert-temporary-actions`` lifts it at its end; ``runbooks actions`` lists it until then.
"""

from __future__ import annotations

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
from tasks.reporting import describe_error
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "security-suspicious-usage"


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def security_suspicious_usage(
    environment: str = "sandbox",
    severity: Severity = "P2",
    incident: Annotated[str, Field(max_length=200)] | None = None,
    throttle_s: Annotated[int, Field(ge=1, le=7 * 86400)] | None = None,
    dry_run: bool | None = None,
) -> State:
    """Throttle the users behind suspicious volumes for ``throttle_s`` (the policy's, the seed's 3,600 s, by
    default), and file the platform's security report."""
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.suspicious_usage
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()
    duration = throttle_s or spec.throttle_s

    # 1. anomalies, 2. top users, 3. the API's logs, and the throttles in force
    reads: dict[str, Any] = {
        "anomalies": api.get_anomalies(env.platform, spec.hours),
        "users": api.get_top_users(env.platform, spec.hours),
        "limits": api.get_rate_limits(env.platform),
    }
    if env.kubernetes is not None:
        reads["logs"] = deployment_logs(env.kubernetes, env.api_deployment, all_pods=True, tail_lines=spec.log_tail)
    got, findings = await diagnose(reads)
    anomalies: list[dict[str, Any]] = got.get("anomalies", [])
    users: list[dict[str, Any]] = got.get("users", [])
    throttled = {t["user_id"] for t in (got.get("limits") or {}).get("throttled_users", [])}
    for a in anomalies:
        findings.append(
            Finding(
                check=f"anomaly {a['kind']}",
                figure=a["subject"],
                verdict="fail" if a["severity"] in ("critical", "high") else "warn",
                detail=a["detail"],
            )
        )
    heavy = [u for u in users if u["requests"] > spec.min_requests]
    for u in users[:10]:
        findings.append(
            Finding(
                check=f"requests {u['user_id']}",
                figure=f"{u['requests']} in {spec.hours} h",
                verdict="fail" if u in heavy else "info",
                detail=f"keys {', '.join(u['api_key_ids'])}" + ("; throttled now" if u["user_id"] in throttled else ""),
            )
        )
    if "logs" in got:  # the lines, their count by source address, and the last three
        pattern = "|".join(spec.log_patterns)
        lines = got["logs"].grep(pattern, ignore_case=True)
        found = log_findings(pattern, lines, spec.log_patterns, ignore_case=True)
        if lines:
            found[0].detail += " | " + " | ".join(line[:200] for line in lines[-3:])
        findings += found

    # 4. throttle the users over the threshold
    actions: list[Action] = []
    for u in heavy:
        if u["user_id"] in spec.exempt_users or u["user_id"] in throttled:
            findings.append(
                Finding(
                    check=f"not throttled {u['user_id']}",
                    figure=str(u["requests"]),
                    detail="exempt by the policy" if u["user_id"] in spec.exempt_users else "already throttled",
                )
            )
            continue
        actions.append(
            Action(
                kind="throttle_user",
                target=u["user_id"],
                reason=f"{u['requests']} requests in {spec.hours} h (over {spec.min_requests})",
                params={"rate_limit": spec.rate_limit, "duration_s": duration + policy.platform_grace_s},
                key=action_key(RUNBOOK, scope, "throttle_user", u["user_id"]),
                expires_in_s=duration,
            )
        )
    await publish_findings(RUNBOOK, env, findings)
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, env=env)
    records += await apply_all(env, RUNBOOK, chosen, by)

    # 5. the platform's security report of the window
    extra = ""
    try:
        filed = await api.generate_security_report(env.platform, "suspicious_activity", spec.hours)
        extra = (
            f"Security report {filed['id']}: {filed['total_events']} events, suspicious keys "
            f"{', '.join(filed['suspicious_api_keys']) or 'none'}"
        )
    except Exception as err:  # noqa: BLE001 - the report is told, the throttles stand
        extra = f"The platform's security report failed: {describe_error(err)}"
    applied = [r.target for r in records if r.outcome == "applied"]
    headline = f"{len(applied)} user(s) throttled to {spec.rate_limit}/min" + (
        f": {', '.join(applied)}" if applied else ""
    )
    get_run_logger().info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline, extra=extra)
    data = {"mode": mode, "records": records, "findings": findings}
    if any(r.outcome == "failed" or (r.outcome == "applied" and r.verified is False) for r in records):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
