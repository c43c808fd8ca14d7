"""model-latency: the seed's "AI Model Problems / High Latency from Specific Provider", in the catalogue's shape.

diagnose (latency per model over the policy's window, avg and p95; every model's timeout, retries and region; the
balancer's weights; concurrently) → plan (for each model whose p95 is over the policy's ``p95_ms``: its timeout and
retries raised, its weight lowered, its endpoint switched to the policy's region, the seed's steps 3-5, all three
temporary for ``hold_s``) → decide (each change can be unticked) → apply → verify (the model's p95 re-read) → report
(``model-latency-<kind>-...``, Slack alerts channel).

``revert-temporary-actions`` puts the timeout, the weight and the region back at the end; ``runbooks actions`` lists
them until then.
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
from tasks.catalogue.shape import action_key, apply_all, choose_mode, decide, diagnose, publish_findings, report
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "model-latency"


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def model_latency(
    environment: str = "sandbox",
    model: Annotated[str, Field(max_length=100)] | None = None,
    severity: Severity = "P2",
    incident: Annotated[str, Field(max_length=200)] | None = None,
    hold_s: Annotated[int, Field(ge=1, le=7 * 86400)] | None = None,
    dry_run: bool | None = None,
) -> State:
    """Work around a slow provider: ``model`` (default: every model over the policy's p95) gets a longer timeout, a
    lower weight and another region, for ``hold_s`` (the policy's by default)."""
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.model_latency
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()
    hold = hold_s or spec.hold_s

    # 1. latency per model, 2. timeouts and retries (and regions), the weights
    got, findings = await diagnose(
        {
            "latency": api.get_latency(env.platform, spec.window),
            "configs": api.list_model_configs(env.platform),
            "lb": api.get_lb_config(env.platform),
        }
    )
    latency: dict[str, dict[str, Any]] = {r["name"]: r for r in got.get("latency", [])}
    configs: dict[str, dict[str, Any]] = {c["name"]: c for c in got.get("configs", [])}
    weights: dict[str, float] = (got.get("lb") or {}).get("weights", {})
    slow = [n for n, r in latency.items() if r["p95_latency"] > spec.p95_ms and (model is None or n == model)]
    for name, row in sorted(latency.items(), key=lambda kv: -kv[1]["p95_latency"]):
        config = configs.get(name, {})
        findings.append(
            Finding(
                check=f"p95 {name}",
                figure=f"{row['p95_latency']:.0f} ms (avg {row['avg_latency']:.0f} ms)",
                verdict="fail" if name in slow else "ok",
                detail=f"timeout {config.get('timeout')} ms, {config.get('retry_attempts')} retries, "
                f"region {config.get('region')}, weight {weights.get(name)}",
            )
        )
    await publish_findings(RUNBOOK, env, findings)

    # 3. timeout, 4. weight, 5. endpoint
    actions: list[Action] = []
    for name in slow:
        why = f"p95 {latency[name]['p95_latency']:.0f} ms over {spec.p95_ms:.0f} ms"
        config = configs.get(name, {})
        if config.get("timeout") != spec.timeout_ms or config.get("retry_attempts") != spec.retry_attempts:
            actions.append(
                Action(
                    kind="model_timeout",
                    target=name,
                    reason=f"{why}: timeout {config.get('timeout')} -> {spec.timeout_ms} ms, "
                    f"retries {config.get('retry_attempts')} -> {spec.retry_attempts}",
                    params={"changes": {"timeout": spec.timeout_ms, "retry_attempts": spec.retry_attempts}},
                    key=action_key(RUNBOOK, scope, "model_timeout", name),
                    expires_in_s=hold,
                )
            )
        if weights.get(name, 0.0) > spec.weight:
            actions.append(
                Action(
                    kind="set_weights",
                    target=name,
                    reason=f"{why}: weight {weights.get(name)} -> {spec.weight}",
                    params={"weights": {name: spec.weight}},
                    key=action_key(RUNBOOK, scope, "set_weights", name),
                    expires_in_s=hold,
                )
            )
        if config.get("region") != spec.region:
            actions.append(
                Action(
                    kind="switch_endpoint",
                    target=name,
                    reason=f"{why}: endpoint {config.get('region')} -> {spec.region}",
                    params={"region": spec.region},
                    key=action_key(RUNBOOK, scope, "switch_endpoint", name),
                    expires_in_s=hold,
                )
            )
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, env=env)
    records += await apply_all(env, RUNBOOK, chosen, by)

    # verify: the slow models' p95 again
    after = {r["name"]: r for r in await api.get_latency(env.platform, spec.window)}
    outcomes = {}
    for name in slow:
        p95 = after[name]["p95_latency"]
        outcomes[name] = p95
        findings.append(
            Finding(
                check=f"after {name}",
                figure=f"p95 {p95:.0f} ms",
                verdict="ok" if p95 <= spec.p95_ms else "fail",
                detail=f"was {latency[name]['p95_latency']:.0f} ms",
            )
        )
    headline = (
        "; ".join(f"{n} p95 {latency[n]['p95_latency']:.0f} -> {p:.0f} ms" for n, p in outcomes.items())
        or "no model over the p95 limit"
    )
    get_run_logger().info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline)
    data = {"mode": mode, "records": records, "findings": findings, "p95_after": outcomes}
    if any(r.outcome == "failed" for r in records):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
