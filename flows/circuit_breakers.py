"""circuit-breakers: the seed's "Load Balancer Issues / Circuit Breaker Issues", in the catalogue's shape.

diagnose (every breaker, the models, the breakers' thresholds; the ``/test`` of each model whose breaker is OPEN,
concurrently) → plan (reset each OPEN breaker whose model's own ``/test`` passes; when the run asks,
``adjust_thresholds``, the thresholds the policy holds, ``circuit_breakers.thresholds``, as a diff of what changes)
→ decide (the policy's mode; the approval shows the diff and lists each action, each can be unticked) → apply (a
reset only after a fresh ``/test`` passes at that moment) → verify (the breakers and thresholds re-read) → report
(``circuit-breakers-<kind>-...``, Slack alerts).

A breaker whose model still fails its ``/test`` is left OPEN, and the report says so.
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
from tasks.catalogue.shape import (
    action_key,
    apply_one,
    choose_mode,
    decide,
    diagnose,
    publish_findings,
    report,
    skipped,
)
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "circuit-breakers"


def threshold_diff(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``-`` / ``+`` lines for each threshold that changes (a unified diff's body)."""
    lines = []
    for name, value in wanted.items():
        if current.get(name) != value:
            lines += [f"- {name}: {current.get(name)}", f"+ {name}: {value}"]
    return lines


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def circuit_breakers(
    environment: str = "sandbox",
    severity: Severity = "P2",
    incident: str | None = None,
    adjust_thresholds: bool = False,
    dry_run: bool | None = None,
) -> State:
    """Reset the OPEN breakers of models that answer their ``/test`` again. The policy's thresholds are compared
    every run (a finding); ``adjust_thresholds`` plans the change (an alert-started run never retunes them)."""
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.circuit_breakers
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()

    # 1.-2. the breakers, the OPEN ones; 4. the thresholds
    got, findings = await diagnose(
        {
            "breakers": api.list_circuit_breakers(env.platform),
            "config": api.get_circuit_breaker_config(env.platform),
        }
    )
    breakers: list[dict[str, Any]] = got.get("breakers", [])
    config: dict[str, Any] | None = got.get("config")
    opened = [b["model"] for b in breakers if b["state"] == "OPEN"]
    tests, test_failures = await diagnose({m: api.test_model(env.platform, m) for m in opened})
    findings += test_failures
    for b in breakers:
        test = tests.get(b["model"])
        findings.append(
            Finding(
                check=f"breaker {b['model']}",
                figure=f"{b['state']}, {b['failures']} failure(s)",
                verdict="ok" if b["state"] == "CLOSED" else "warn" if test and test["ok"] else "fail",
                detail=(f"open until {b['open_until']}; " if b.get("open_until") else "")
                + (
                    ""
                    if test is None
                    else "its /test passes: reset"
                    if test["ok"]
                    else f"its /test fails ({test.get('error')}): left open"
                ),
            )
        )
    diff = threshold_diff(config, spec.thresholds) if config is not None else []
    if config is not None:
        findings.append(
            Finding(
                check="thresholds",
                figure=", ".join(f"{k}={v}" for k, v in config.items()),
                verdict="warn" if diff else "ok",
                detail="; ".join(diff),
            )
        )
    await publish_findings(RUNBOOK, env, findings)

    # 3. reset when recovered; 5. thresholds
    actions = [
        Action(
            kind="reset_breaker",
            target=m,
            reason=f"OPEN, and {m}'s /test passed in {tests[m]['latency_ms']} ms",
            key=action_key(RUNBOOK, scope, "reset_breaker", m),
        )
        for m in opened
        if m in tests and tests[m]["ok"]
    ]
    note = ""
    if diff and config is not None and adjust_thresholds:
        changes = {k: v for k, v in spec.thresholds.items() if config.get(k) != v}
        actions.append(
            Action(
                kind="breaker_config",
                target="load-balancer",
                reason="thresholds to the policy's: " + "; ".join(diff),
                params={"changes": changes},
                key=action_key(RUNBOOK, scope, "breaker_config", "load-balancer"),
            )
        )
        note = "Threshold changes:\n\n```diff\n" + "\n".join(diff) + "\n```"

    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, note=note, env=env)
    for action in chosen:
        if action.kind == "reset_breaker" and spec.reset_after_test:
            fresh = await api.test_model(env.platform, action.target)
            if not fresh["ok"]:
                records.append(skipped(RUNBOOK, action, f"/test failed again before the reset: {fresh.get('error')}"))
                continue
        records.append(await apply_one(env, RUNBOOK, action, by))

    # verify
    after = {b["model"]: b["state"] for b in await api.list_circuit_breakers(env.platform)}
    config_after = await api.get_circuit_breaker_config(env.platform)
    still_open = sorted(m for m, s in after.items() if s == "OPEN")
    reset = [r.target for r in records if r.kind == "reset_breaker" and r.outcome == "applied"]
    findings.append(
        Finding(
            check="after",
            figure=f"OPEN: {', '.join(still_open) or 'none'}",
            verdict="ok" if all(after[m] == "CLOSED" for m in reset) else "fail",
            detail="thresholds " + ", ".join(f"{k}={v}" for k, v in config_after.items()),
        )
    )
    headline = f"reset {', '.join(reset) or 'none'}; still OPEN: {', '.join(still_open) or 'none'}" + (
        "; thresholds changed" if any(r.kind == "breaker_config" and r.outcome == "applied" for r in records) else ""
    )
    get_run_logger().info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline, extra=note)
    data = {"mode": mode, "records": records, "findings": findings, "breakers": after, "config": config_after}
    if any(r.outcome == "failed" for r in records) or any(after[m] != "CLOSED" for m in reset):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
