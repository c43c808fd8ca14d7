"""cost-optimization: the seed's "AI Model Problems / Cost Optimization Issues", in the catalogue's shape.

diagnose (cost per model over the policy's period, 24 h: total, per request, requests; the three most expensive per
request; the average cost per request of the traffic) → plan (over ``max_avg_cost_per_request``: the policy's cost
strategy, the seed's step 3, with the saving it projects from the current split; the daily cost alert, step 4) →
decide (the projected saving is in the approval) → apply → verify (the costs re-read: the saving measured) →
report (``cost-optimization-<kind>-...``, Slack alerts channel).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks import platform as api
from tasks.catalogue.actions import Action, Finding
from tasks.catalogue.policy import load_policy
from tasks.catalogue.shape import action_key, apply_all, choose_mode, decide, diagnose, publish_findings, report
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "cost-optimization"


def average_cost(models: list[dict[str, Any]]) -> float:
    """USD per request over the traffic of ``models`` (the cost report's rows)."""
    requests = sum(m["requests"] for m in models)
    return sum(m["total_cost"] for m in models) / requests if requests else 0.0


def projected_cost(models: list[dict[str, Any]], strategy: dict[str, Any]) -> float:
    """The average cost per request once the strategy routes the current traffic: models above its cap lose their
    share (unless that leaves none), preferred models weigh double, the rest keep their proportions."""
    cap = strategy.get("max_cost_per_request")
    prefer = set(strategy.get("prefer_models") or [])
    allowed = [m for m in models if cap is None or m["cost_per_request"] <= cap] or models
    weights = {m["name"]: m["requests"] * (2.0 if m["name"] in prefer else 1.0) for m in allowed}
    total = sum(weights.values())
    if not total:
        return 0.0
    return sum(m["cost_per_request"] * weights[m["name"]] for m in allowed) / total


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def cost_optimization(
    environment: str = "sandbox",
    severity: Severity = "P3",
    incident: str | None = None,
    dry_run: bool | None = None,
) -> State:
    """Apply the policy's cost strategy when the traffic costs more per request than the policy allows, and keep a
    daily cost alert; the saving is projected before and measured after."""
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.cost_optimization
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()

    # 1. cost per model, 2. the three most expensive
    got, findings = await diagnose({"costs": api.get_costs(env.platform, spec.period)})
    costs: dict[str, Any] | None = got.get("costs")
    if costs is None:
        await publish_findings(RUNBOOK, env, findings)
        await report(env, policy, RUNBOOK, findings, [], headline="the costs could not be read")
        return Failed(message="the costs could not be read", data={"findings": findings, "records": []})
    models: list[dict[str, Any]] = costs["models"]
    before = average_cost(models)
    for m in sorted(models, key=lambda m: -m["cost_per_request"])[:3]:
        findings.append(
            Finding(
                check=f"most expensive {m['name']}",
                figure=f"${m['cost_per_request']}/request",
                detail=f"${m['total_cost']:,.2f} over {spec.period}, {m['requests']:,} requests",
            )
        )
    findings.append(
        Finding(
            check=f"average cost per request {spec.period}",
            figure=f"${before:.5f}",
            verdict="fail" if before > spec.max_avg_cost_per_request else "ok",
            detail=f"total ${costs['total_cost']:,.2f}; the policy's limit ${spec.max_avg_cost_per_request}",
        )
    )

    # 3. the strategy, with its projected saving; 4. the cost alert
    actions: list[Action] = []
    note = ""
    projected = projected_cost(models, spec.strategy)
    if before > spec.max_avg_cost_per_request:
        saving = 1 - projected / before if before else 0.0
        note = (
            f"Projected: ${before:.5f} -> ${projected:.5f} per request ({saving:.0%} less, about "
            f"${costs['total_cost'] * saving:,.2f} per {spec.period})"
        )
        findings.append(Finding(check="projected with the strategy", figure=f"${projected:.5f}", detail=note))
        actions.append(
            Action(
                kind="cost_strategy",
                target="load-balancer",
                reason=f"${before:.5f} per request, over ${spec.max_avg_cost_per_request}. {note}",
                params={"strategy": spec.strategy},
                key=action_key(RUNBOOK, scope, "cost_strategy", "load-balancer"),
            )
        )
        actions.append(
            Action(
                kind="cost_alert",
                target=f"{spec.alert['period']} ${spec.alert['threshold']}",
                reason="the seed's cost alert, so the next overspend is told",
                params=dict(spec.alert),
                key=action_key(RUNBOOK, scope, "cost_alert", str(spec.alert["period"])),
            )
        )
    await publish_findings(RUNBOOK, env, findings)
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, note=note, env=env)
    records += await apply_all(env, RUNBOOK, chosen, by)

    # verify: the saving measured
    after = average_cost((await api.get_costs(env.platform, spec.period))["models"])
    measured = 1 - after / before if before else 0.0
    findings.append(
        Finding(
            check="after",
            figure=f"${after:.5f} per request",
            verdict="ok" if after <= spec.max_avg_cost_per_request else "warn",
            detail=f"measured {measured:.0%} less (projected {1 - projected / before if before else 0:.0%})",
        )
    )
    headline = f"${before:.5f} -> ${after:.5f} per request ({measured:.0%} less)"
    get_run_logger().info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline, extra=note)
    data = {
        "mode": mode,
        "records": records,
        "findings": findings,
        "before": before,
        "projected": projected,
        "after": after,
    }
    if any(r.outcome == "failed" for r in records):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
