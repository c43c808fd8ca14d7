"""lb-rebalance: the seed's "Load Balancer Issues / Imbalanced Load Distribution", in the catalogue's shape.

diagnose (the balancer's model distribution, the models' health, its algorithm and weights; concurrently) → plan (an
imbalance is a model serving more than the policy's ``max_share``: a weighted balancer gets the policy's weights,
the seed's step 5; any other gets the policy's algorithm with its statistics reset, the seed's step 4) → decide →
apply (the previous weights or algorithm recorded as the reversal) → verify (the distribution re-read: the largest
share under ``max_share``) → report (``lb-rebalance-<kind>-...``, Slack alerts channel).
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

RUNBOOK = "lb-rebalance"


def largest(distribution: dict[str, float]) -> tuple[str, float]:
    name = max(distribution, key=lambda n: distribution[n])
    return name, distribution[name]


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def lb_rebalance(
    environment: str = "sandbox",
    severity: Severity = "P2",
    incident: str | None = None,
    dry_run: bool | None = None,
) -> State:
    """Spread the traffic again when one model takes more than the policy's share of it."""
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.lb_rebalance
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()

    # 1. distribution, 2. the models' health, 3. the algorithm and weights
    got, findings = await diagnose(
        {
            "stats": api.get_lb_stats(env.platform),
            "models": api.list_models(env.platform),
            "config": api.get_lb_config(env.platform),
        }
    )
    stats: dict[str, Any] | None = got.get("stats")
    config: dict[str, Any] | None = got.get("config")
    if stats is None or config is None:
        await publish_findings(RUNBOOK, env, findings)
        await report(env, policy, RUNBOOK, findings, [], headline="the balancer could not be read")
        return Failed(message="the balancer could not be read", data={"findings": findings, "records": []})
    distribution: dict[str, float] = stats["model_distribution"]
    top, share = largest(distribution)
    for name, value in sorted(distribution.items(), key=lambda kv: -kv[1]):
        findings.append(
            Finding(
                check=f"share {name}",
                figure=f"{value:.1%}",
                verdict="fail" if value > spec.max_share else "ok",
                detail=f"weight {config['weights'].get(name)}",
            )
        )
    for m in got.get("models", []):
        if m.status != "active":
            findings.append(Finding(check=f"model {m.name}", figure=m.status, verdict="warn", detail=m.error or ""))
    findings.append(Finding(check="algorithm", figure=config["algorithm"]))

    # 4./5. the algorithm, or the weights of a weighted balancer
    actions: list[Action] = []
    if share > spec.max_share:
        why = f"{top} serves {share:.1%} of the traffic (over {spec.max_share:.0%})"
        if config["algorithm"] == "weighted" and spec.weights:
            actions.append(
                Action(
                    kind="set_weights",
                    target="load-balancer",
                    reason=f"{why}: weights {config['weights']} -> {spec.weights}",
                    params={"weights": spec.weights},
                    key=action_key(RUNBOOK, scope, "set_weights", "load-balancer"),
                )
            )
        elif config["algorithm"] != spec.algorithm:
            actions.append(
                Action(
                    kind="set_algorithm",
                    target="load-balancer",
                    reason=f"{why}: algorithm {config['algorithm']} -> {spec.algorithm}, statistics reset",
                    params={"algorithm": spec.algorithm},
                    key=action_key(RUNBOOK, scope, "set_algorithm", "load-balancer"),
                )
            )
    await publish_findings(RUNBOOK, env, findings)
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, env=env)
    records += await apply_all(env, RUNBOOK, chosen, by)

    # verify
    after = (await api.get_lb_stats(env.platform))["model_distribution"]
    top_after, share_after = largest(after)
    balanced = share_after <= spec.max_share
    findings.append(
        Finding(
            check="after",
            figure=f"{top_after} {share_after:.1%}",
            verdict="ok" if balanced else "fail",
            detail=", ".join(f"{n} {v:.1%}" for n, v in sorted(after.items(), key=lambda kv: -kv[1])),
        )
    )
    headline = f"largest share {top} {share:.1%} -> {top_after} {share_after:.1%}" + (
        "" if balanced else f" (still over {spec.max_share:.0%})"
    )
    get_run_logger().info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline)
    data = {"mode": mode, "records": records, "findings": findings, "distribution": after}
    applied = any(r.outcome == "applied" for r in records)
    if any(r.outcome == "failed" for r in records) or (applied and not balanced):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
