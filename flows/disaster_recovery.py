"""The seed's "Disaster Recovery Procedure" as two flows: ``disaster-recovery`` and the weekly ``dr-drill``.

``disaster-recovery``: the whole system back from a daily backup into the recovery environment, timed, verified,
switched by a human.

1. the backup: ``backup_id``, else the newest *verified* daily backup, else the newest complete one (said loudly);
2. the preflight artifact, before anything changes: what the backup holds, what exists in the target, what will be
   created, skipped (existing objects are never overwritten unless ``overwrite``, and then listed) or refused (the
   source's own live namespace, database or Redis);
3. the restore in Velero's order (namespace labelled ``disaster-recovery=true``, Secrets decrypted in the process,
   ConfigMaps, Services, Deployments, Ingress, HPA, Certificates), PostgreSQL (``pg_restore -j``) and Redis into the
   recovery servers concurrently, with progress (:mod:`tasks.dr.recovery`);
4. verification: Deployments available, row counts and Redis keys equal to the manifest, the smoke suite;
5. with ``switch_traffic``, after an approval in the UI (a typed form, default deny): the production Services
   (the policy's ``switch_services``) point at the recovery pods, the smoke suite runs through them, and on failure
   the selectors are put back and the run says so;
6. the report artifact and ``dr.completed`` / ``dr.failed`` with RTA, RPO, every phase's duration, what was skipped.

``dr-drill``: the same restore into a throwaway namespace, a scratch database and a scratch Redis database of the
recovery environment, never switched, torn down afterwards even when a step failed; a keyed table artifact of RTA
and RPO week over week; a page when a drill fails.

Dry run by default everywhere but the sandbox: the preflight, then stop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.input import RunInput
from pydantic import Field

from blocks.environment import RunbookEnvironment, load_environment
from kernel.redact import redact_errors
from tasks.approval import ask_approval
from tasks.backup.report import artifact_slug
from tasks.backup.restore import scratch_database_name
from tasks.dr.data import redis_db_of, with_redis_db
from tasks.dr.plan import DisasterRecoveryError, RecoveryRefusedError
from tasks.dr.policy import DrPolicy, load_dr_policy
from tasks.dr.recovery import (
    RecoveryTarget,
    build_plan,
    choose_backup,
    clear_drill_leftovers,
    phase,
    restore,
    teardown,
    verify,
)
from tasks.dr.report import DrReport, drill_table, emit_dr_event, record_drill
from tasks.kubernetes.restore import ServiceSwitch, restore_service_selector, switch_service
from tasks.notify import send_pagerduty_event
from tasks.reporting import describe_error, publish_markdown, publish_table
from tasks.smoke import run_smoke_suite


class SwitchApproval(RunInput):
    """What an operator fills in to send production traffic to the recovery environment."""

    approve: bool = Field(default=False, description="Switch the production Services to the recovery pods")
    confirm_namespace: str = Field(default="", description="Type the recovery namespace to confirm")
    reason: str = Field(default="", max_length=500, description="Why (incident id, ticket)")


def _target(env: RunbookEnvironment, name: str, namespace: str | None, database: str | None) -> RecoveryTarget:
    return RecoveryTarget(
        environment=name,
        env=env,
        namespace=namespace or (env.kubernetes.namespace if env.kubernetes is not None else None),
        postgres=env.postgres,
        database=database or env.postgres.dbname,
        redis=env.redis,
    )


def _seconds(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 3)


@flow(name="disaster-recovery", log_prints=False)
@redact_errors
async def disaster_recovery(
    environment: str = "sandbox",
    recovery_environment: str | None = None,
    backup_id: str | None = None,
    recovery_namespace: str | None = None,
    switch_traffic: bool = False,
    overwrite: bool = False,
    dry_run: bool | None = None,
) -> DrReport:
    """Recover ``environment`` (the source) from its daily backup ``backup_id`` (default: the newest verified one,
    else the newest complete one) into ``recovery_environment`` (default ``<environment>-recovery``), its Kubernetes
    objects into
    ``recovery_namespace`` (default: the recovery environment's). ``overwrite`` replaces what exists there (listed);
    ``switch_traffic`` points the production Services at the recovery pods after verification and an approval."""
    logger = get_run_logger()
    started_at, clock = datetime.now(UTC), time.perf_counter()
    policy = load_dr_policy()
    recovery_name = recovery_environment or f"{environment}-recovery"
    report = DrReport(
        source_environment=environment,
        recovery_environment=recovery_name,
        started_at=started_at,
        rta_objective_s=policy.rta_objective_s,
        rpo_objective_s=policy.rpo_objective_s,
    )
    slug = artifact_slug(environment)
    try:
        source = await load_environment(environment)
        target_env = await load_environment(recovery_name)
        dry = source.dry_run_by_default if dry_run is None else dry_run
        target = _target(target_env, recovery_name, recovery_namespace, None)
        async with phase(report, "preflight"):
            manifest, choice = await choose_backup(source, environment, backup_id)
            _describe_backup(report, manifest.backup_id, manifest.prefix, choice, manifest.started_at, started_at)
            plan, payload = await build_plan(source, environment, target, manifest, choice, overwrite=overwrite)
            report.namespace, report.database, report.redis = plan.namespace, plan.database, plan.redis_address
            report.skipped += plan.skipped
            report.left_out = [o.label for o in plan.left_out]
            await publish_markdown(f"dr-preflight-{slug}", plan.to_markdown(), f"DR preflight of {environment}")
        if plan.refused:
            report.status = "refused"
            raise RecoveryRefusedError(plan.refused)
        if dry:
            report.status = "dry-run"
            report.notes.append("dry run: the preflight above is what a run would do; nothing changed")
            return report
        await restore(source, target, manifest, plan, payload, policy, report, f"dr-progress-{slug}")
        async with phase(report, "verify"):
            await verify(target, manifest, plan, policy, report)
        report.rta_s = round(time.perf_counter() - clock, 3)
        logger.info("Recovery verified: RTA %.1f s, RPO %.1f s", report.rta_s, report.rpo_s or 0)
        if switch_traffic:
            async with phase(report, "switch"):
                await _switch(source, environment, target, policy, report)
        report.status = "completed"
        return report
    except BaseException as err:
        if report.status not in ("refused",):
            report.status = "failed"
        report.error = describe_error(err)
        raise
    finally:
        await publish_markdown(f"dr-{slug}", report.to_markdown(), f"Disaster recovery of {environment}")
        if report.status != "dry-run":
            emit_dr_event(report)


def _describe_backup(
    report: DrReport, backup_id: str, prefix: str, choice: str, snapshot_at: datetime, started_at: datetime
) -> None:
    report.backup_id, report.backup_prefix, report.backup_choice = backup_id, prefix, choice
    report.snapshot_at = snapshot_at
    report.rpo_s = _seconds(snapshot_at, started_at)
    if report.rpo_objective_s is not None and report.rpo_s > report.rpo_objective_s:
        report.notes.append(f"RPO {report.rpo_s:.0f} s misses the objective of {report.rpo_objective_s:.0f} s")


async def _switch(
    source: RunbookEnvironment, source_name: str, target: RecoveryTarget, policy: DrPolicy, report: DrReport
) -> None:
    """Approval, switch, smoke through it; a failed smoke puts every selector back (and fails the run)."""
    logger = get_run_logger()
    cluster = source.require_kubernetes()
    namespace = target.namespace or ""
    answer = await ask_approval(
        SwitchApproval,
        description=(
            f"Recovery of {source_name} into {target.environment} is verified. Switch Services "
            f"{', '.join(policy.switch_services)} of {cluster.namespace} to the pods of {namespace}? "
            f"Type {namespace} to confirm."
        ),
        timeout_s=policy.approval_timeout_s,
        poll_s=policy.approval_poll_s,
    )
    report.switch_approved = bool(answer and answer.approve and answer.confirm_namespace == namespace)
    if not report.switch_approved:
        why = "no answer" if answer is None else "denied" if not answer.approve else "the confirmation did not match"
        report.notes.append(f"traffic not switched: {why}")
        logger.warning("Traffic not switched: %s", why)
        return
    if answer is not None and answer.reason:
        report.notes.append(f"switch approved: {answer.reason}")
    switched: list[ServiceSwitch] = []
    try:
        for service in policy.switch_services:
            switched.append(await switch_service(cluster, service, cluster.namespace, namespace))
        report.switches = switched
        smoke = await run_smoke_suite(source.platform, source_name)
        report.switch_smoke = smoke.summary()
        if smoke.passed:
            return
        failure: BaseException = DisasterRecoveryError(
            f"the smoke suite failed through the switched Services: {smoke.summary()}",
            hint="the selectors were put back; production serves from its own pods again",
            transient=False,
        )
    except Exception as err:  # noqa: BLE001 - whatever failed, the selectors go back first
        failure = err
    for s in reversed(switched):
        await restore_service_selector(cluster, s.service, s.namespace, s.original_selector)
    report.switch_rolled_back = True
    logger.error("Traffic switch rolled back: %s", describe_error(failure))
    raise failure


@flow(name="dr-drill", log_prints=False)
@redact_errors
async def dr_drill(
    environment: str = "sandbox",
    recovery_environment: str | None = None,
    backup_id: str | None = None,
    scratch_redis_db: Annotated[int, Field(ge=0, le=63)] = 1,
) -> DrReport:
    """Restore ``environment``'s backup (default: the newest verified, else complete one) into a throwaway namespace,
    a scratch database and scratch Redis database ``scratch_redis_db`` of ``recovery_environment`` (default
    ``<environment>-recovery``), verify it, tear it all down (even when a step failed), and keep RTA and RPO week
    over week (table artifact ``dr-drill-<environment>``). A failed drill pages."""
    logger = get_run_logger()
    started_at, clock = datetime.now(UTC), time.perf_counter()
    policy = load_dr_policy()
    recovery_name = recovery_environment or f"{environment}-recovery"
    report = DrReport(
        kind="drill",
        source_environment=environment,
        recovery_environment=recovery_name,
        started_at=started_at,
        rta_objective_s=policy.rta_objective_s,
        rpo_objective_s=policy.rpo_objective_s,
    )
    slug = artifact_slug(environment)
    source: RunbookEnvironment | None = None
    target: RecoveryTarget | None = None
    failure: BaseException | None = None
    try:
        source = await load_environment(environment)
        target_env = await load_environment(recovery_name)
        async with phase(report, "preflight"):
            manifest, choice = await choose_backup(source, environment, backup_id)
            _describe_backup(report, manifest.backup_id, manifest.prefix, choice, manifest.started_at, started_at)
            scratch = scratch_database_name(target_env.postgres.dbname, "drill", manifest.backup_id)
            namespace = f"{policy.drill_namespace_prefix}-{manifest.backup_id.lower()}"
            candidate = _target(target_env, recovery_name, namespace, scratch)
            candidate.redis = with_redis_db(target_env.redis, scratch_redis_db)
            if scratch_redis_db == redis_db_of(target_env.redis):
                report.status = "refused"
                raise RecoveryRefusedError(
                    [f"scratch Redis database {scratch_redis_db} is the recovery environment's own database"]
                )
            plan, payload = await build_plan(source, environment, candidate, manifest, choice, overwrite=False)
            if not plan.refused:  # an earlier drill that died before its teardown: its leftovers go first
                leftovers = await clear_drill_leftovers(
                    candidate,
                    scratch[: len(scratch) - len(manifest.backup_id)],  # <live>_drill_: every drill's
                    policy,
                    redis_keys=plan.redis_existing_keys,
                )
                if leftovers:
                    logger.warning("Removed what an earlier drill left behind: %s", "; ".join(leftovers))
                    report.notes.append("left behind by an earlier drill, removed first: " + "; ".join(leftovers))
                    plan, payload = await build_plan(source, environment, candidate, manifest, choice, overwrite=False)
            if plan.namespace_exists:
                plan.refused.append(f"the drill's namespace {namespace} exists and is not a drill's (no label)")
            if plan.database_exists:
                plan.refused.append(f"the drill's scratch database {scratch} exists already")
            if plan.redis_existing_keys:
                plan.refused.append(f"the drill's scratch Redis {candidate.redis.safe_address} is not empty")
            report.namespace, report.database, report.redis = plan.namespace, plan.database, plan.redis_address
            report.skipped += plan.skipped
            report.left_out = [o.label for o in plan.left_out]
            await publish_markdown(
                f"dr-drill-preflight-{slug}", plan.to_markdown(), f"DR drill preflight of {environment}"
            )
        if plan.refused:
            report.status = "refused"
            raise RecoveryRefusedError(plan.refused)
        target = candidate
        await restore(source, target, manifest, plan, payload, policy, report, f"dr-drill-progress-{slug}")
        async with phase(report, "verify"):
            await verify(target, manifest, plan, policy, report)
        report.rta_s = round(time.perf_counter() - clock, 3)
        report.status = "completed"
    except BaseException as err:
        failure = err
        if report.status != "refused":
            report.status = "failed"
        report.error = describe_error(err)
    finally:
        if target is not None:
            async with phase(report, "teardown"):
                problems = await teardown(target, policy, report)
            if problems and failure is None:
                report.status = "failed"
                failure = DisasterRecoveryError(
                    "the drill passed but its teardown left things behind: " + "; ".join(problems),
                    hint="remove them by hand",
                    transient=False,
                )
                report.error = describe_error(failure)
        await _drill_report(source, environment, report, slug)
    if failure is not None:
        logger.error("DR drill of %s failed: %s", environment, report.error)
        raise failure
    return report


async def _drill_report(source: RunbookEnvironment | None, environment: str, report: DrReport, slug: str) -> None:
    logger = get_run_logger()
    await publish_markdown(f"dr-drill-report-{slug}", report.to_markdown(), f"DR drill of {environment}")
    emit_dr_event(report)
    if source is None:
        return
    try:
        rows = await record_drill(source.backups, environment, report)
        await publish_table(f"dr-drill-{slug}", drill_table(rows), f"DR drills of {environment}: RTA and RPO by week")
    except Exception as err:  # noqa: BLE001 - the drill's outcome stands; the history is reported missing
        logger.warning("Drill history not updated: %s", describe_error(err))
    if report.status != "completed" and source.pagerduty is not None:
        try:
            await send_pagerduty_event(
                source.pagerduty,
                "trigger",
                dedup_key=f"dr-drill-{environment}-{report.started_at:%G-W%V}",
                summary=f"DR drill of {environment} failed: {report.error}",
                severity="error",
                source="runbooks/dr-drill",
                details={"backup": report.backup_prefix, "phases": report.phases},
            )
        except Exception as err:  # noqa: BLE001 - said, not hidden
            logger.error("Could not page about the failed drill: %s", describe_error(err))
    elif report.status != "completed":
        logger.error("DR drill failed and the environment has no PagerDuty block to page")
