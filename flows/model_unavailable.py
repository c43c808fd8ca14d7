"""model-unavailable: the seed's "AI Model Problems / Model Unavailability", in the catalogue's shape.

diagnose (every model's status; for each model down: its ``/test``, its configuration's ``api_key_status`` and
fallback, the API's log lines naming it through the Kubernetes tasks; concurrently) → plan (reconnect, then a
fallback to the policy's model for ``fallback_s``, the seed's 1,800 s) → decide (the policy's mode for the
environment's kind and the severity; a dry run, the default outside the sandbox, observes) → apply (the reconnect
first; the fallback only when the model's ``/test`` still fails after it) → verify (the model's status and ``/test``
again, its fallback) → report (``model-unavailable-<kind>-findings``/``-actions``/``-report``, Slack alerts channel).

The fallback is temporary: recorded with its reversal and end in the environment's Redis, undone by
``revert-temporary-actions`` at its end (``runbooks actions`` lists it until then). Whatever happens, an acting run
ends with each model recovered or on a fallback that expires; otherwise it fails.
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
    apply_one,
    choose_mode,
    decide,
    diagnose,
    publish_findings,
    report,
    skipped,
)
from tasks.kubernetes.logs import deployment_logs
from tasks.triage.mitigations import current_run
from tasks.triage.policy import Severity

RUNBOOK = "model-unavailable"


@flow(name=RUNBOOK, log_prints=False)
@redact_errors
async def model_unavailable(
    environment: str = "sandbox",
    model: Annotated[str, Field(max_length=100)] | None = None,
    severity: Severity = "P2",
    incident: Annotated[str, Field(max_length=200)] | None = None,
    fallback_model: Annotated[str, Field(max_length=100)] | None = None,
    fallback_s: Annotated[int, Field(ge=1, le=86400)] | None = None,
    dry_run: bool | None = None,
) -> State:
    """Bring ``model`` (default: every model the platform reports down) back, or onto a fallback that expires.
    ``incident`` scopes the idempotency keys (runs for one incident act once); ``dry_run`` (default: on everywhere
    but the sandbox) describes only."""
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_policy()
    spec = policy.model_unavailable
    mode = choose_mode(env, policy, severity, dry_run)
    scope = incident or current_run()
    duration = fallback_s or spec.fallback_s

    # diagnose: 1. the status of every model, then per model down: 2. /test, 3. api_key_status, 6. its log lines
    models = await api.list_models(env.platform)
    targets = [model] if model else [m.name for m in models if m.status == "down"]
    findings = [
        Finding(
            check=f"status {m.name}",
            figure=m.status,
            verdict="ok" if m.status == "active" else "fail" if m.status == "down" else "warn",
            detail=m.error or "",
        )
        for m in models
    ]
    reads: dict[str, Any] = {}
    for name in targets:
        reads[f"test {name}"] = api.test_model(env.platform, name)
        reads[f"config {name}"] = api.get_model_config(env.platform, name)
    if env.kubernetes is not None and targets:
        reads["logs"] = deployment_logs(env.kubernetes, env.api_deployment, tail_lines=spec.log_tail)
    got, findings_failed = await diagnose(reads)
    findings += findings_failed
    for name in targets:
        test, config = got.get(f"test {name}"), got.get(f"config {name}")
        if test is not None:
            findings.append(
                Finding(
                    check=f"test {name}",
                    figure=f"{'ok' if test['ok'] else 'failed'} in {test['latency_ms']} ms",
                    verdict="ok" if test["ok"] else "fail",
                    detail=test.get("error") or "",
                )
            )
        if config is not None:
            findings.append(
                Finding(
                    check=f"api key {name}",
                    figure=str(config.get("api_key_status")),
                    verdict="ok" if config.get("api_key_status") == "valid" else "fail",
                    detail=f"fallback {config['fallback_model']} in force" if config.get("fallback_model") else "",
                )
            )
        if "logs" in got:
            lines = got["logs"].grep(name)
            findings.append(
                Finding(
                    check=f"log lines {name}",
                    figure=str(len(lines)),
                    detail=lines[-1][:300] if lines else "",
                )
            )
    await publish_findings(RUNBOOK, env, findings)

    # plan: a model whose /test fails is reconnected, then handed to its fallback until it expires
    failing = [n for n in targets if not (got.get(f"test {n}") or {}).get("ok", False)]
    active = [m.name for m in models if m.status == "active"]
    actions: list[Action] = []
    for name in failing:
        stand_in = fallback_model or spec.fallback_model
        if stand_in == name:
            stand_in = next((a for a in active if a != name), stand_in)
        actions.append(
            Action(
                kind="reconnect",
                target=name,
                reason=f"/test of {name} failed",
                key=action_key(RUNBOOK, scope, "reconnect", name),
            )
        )
        actions.append(
            Action(
                kind="set_fallback",
                target=name,
                reason=f"{name} down: traffic to {stand_in} for {duration}s if the reconnect does not bring it back",
                params={"fallback_model": stand_in, "duration_s": duration + policy.platform_grace_s},
                key=action_key(RUNBOOK, scope, "set_fallback", name),
                expires_in_s=duration,
            )
        )

    # decide, apply
    chosen, records, by = await decide(RUNBOOK, actions, mode, policy, env=env)
    recovered: dict[str, bool] = {}
    for action in chosen:
        if action.kind == "set_fallback" and recovered.get(action.target):
            records.append(skipped(RUNBOOK, action, "the reconnect brought the model back: no fallback needed"))
            continue
        records.append(await apply_one(env, RUNBOOK, action, by))
        if action.kind == "reconnect":
            recovered[action.target] = bool((await api.test_model(env.platform, action.target)).get("ok"))

    # verify: each model recovered, or on a fallback that expires
    outcomes: dict[str, str] = {}
    after = {m.name: m for m in await api.list_models(env.platform)}
    for name in targets:
        config = await api.get_model_config(env.platform, name)
        temporary = any(
            r.kind == "set_fallback" and r.target == name and r.expires_at and r.outcome in ("applied", "skipped")
            for r in records
        )
        if after[name].status != "down":
            outcomes[name] = "recovered"
        elif config.get("fallback_model"):
            outcomes[name] = f"on fallback to {config['fallback_model']}" + (
                "" if temporary else " (set before this run)"
            )
        else:
            outcomes[name] = "still down, no fallback"
        findings.append(
            Finding(
                check=f"after {name}",
                figure=after[name].status,
                verdict="ok" if outcomes[name] != "still down, no fallback" else "fail",
                detail=outcomes[name],
            )
        )
    headline = "; ".join(f"{n} {o}" for n, o in outcomes.items()) or "every model answers"
    logger.info("%s (mode %s)", headline, mode)
    await report(env, policy, RUNBOOK, findings, records, headline=headline)
    data = {"mode": mode, "outcomes": outcomes, "records": records, "findings": findings}
    broken = [r for r in records if r.outcome == "failed"]
    stuck = [n for n, o in outcomes.items() if o == "still down, no fallback"]
    if broken or (stuck and mode == "auto"):
        return Failed(message=headline, data=data)
    return Completed(message=headline, data=data)
