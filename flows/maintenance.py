"""``weekly-maintenance``: the seed's Weekly Maintenance Checklist, each line measured instead of printed.

The ten steps run one after the other, each as a task run of its own with its own state (a failing step never
hides the others), and each returns pass / warn / fail / skipped with the figure behind it:

1. health: the smoke suite, and every pod that is not Running, by name;
2. resources: nodes, pods by CPU and by memory (table artifact ``weekly-maintenance-resources-<env>``);
3. logs: 168 h of the API's logs archived to S3 through the backup pipeline (zstd, SHA-256, a manifest);
4. database: ANALYZE, size, largest tables and indexes, estimated bloat, XID age, unused and duplicate indexes,
   the seed's pg_stats query; nothing that blocks writes (no REINDEX, no VACUUM FULL);
5. security: ``trivy image`` of every image the Deployments run (skipped where trivy is not installed);
6. performance: the platform's 7-day analytics summary against last week's;
7. backups: the newest daily backup's age and completeness, when last verified; a stale verification runs it;
8. certificates: ``certificate-check``'s three readings (handshake, Secret, Certificate) and their agreement;
9. cleanup: old ReplicaSets (never the current, previous or last known good) and ``deployment-alerts-*``
   ConfigMaps (never a mounted one); a dry run outside the sandbox unless approved in the UI;
10. report: the markdown artifact ``weekly-maintenance-<env>``, this week's figures beside last week's (table
    artifact ``weekly-maintenance-figures-<env>``), Slack with the run's link, and ``runbooks.maintenance.completed``.

Thresholds live in ``tasks/maintenance/policy.yaml``. The run fails when any step fails, after every step ran.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.input import RunInput
from prefect.states import Completed, Failed, State
from prefect.utilities.urls import url_for
from pydantic import Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.approval import ask_approval
from tasks.maintenance import checks
from tasks.maintenance.checks import MaintenanceContext
from tasks.maintenance.policy import load_maintenance_policy
from tasks.maintenance.report import (
    MaintenanceReport,
    emit_report_event,
    publish_report,
    read_previous_figures,
    store_figures,
    tell_slack,
)
from tasks.maintenance.steps import StepResult, run_step
from tasks.reporting import describe_error

STEPS = (
    (1, "health", "System health", checks.health),
    (2, "resources", "Resource usage", checks.resources),
    (3, "logs", "Log archive", checks.logs),
    (4, "database", "Database", checks.database),
    (5, "security", "Security scan", checks.security),
    (6, "performance", "Performance", checks.performance),
    (7, "backups", "Backups", checks.backups),
    (8, "certificates", "Certificates", checks.certificates),
    (9, "cleanup", "Resource cleanup", checks.cleanup),
)
STEP_NAMES = [name for _, name, _, _ in STEPS]


class CleanupApproval(RunInput):
    approve: bool = Field(description="Delete the listed ReplicaSets and ConfigMaps (true), or leave them (false)?")
    approver: str = Field(default="", description="Who decides (for the record).")
    note: str = ""


@flow(name="weekly-maintenance", log_prints=False)
@redact_errors
async def weekly_maintenance(
    environment: str = "sandbox",
    window_minutes: Annotated[int, Field(ge=5, le=24 * 60)] = 120,
    dry_run: bool | None = None,
    skip: list[str] | None = None,
    approval_timeout_s: Annotated[int, Field(ge=10, le=86400)] | None = None,
) -> State:
    """Run the weekly maintenance of ``environment`` within a ``window_minutes`` maintenance window (steps that
    would start after the window closes are skipped and say so). ``dry_run`` (default: on everywhere but the
    sandbox) holds back the cleanup's deletions; where the dry run is the environment's default, the run asks for
    approval in the UI before deleting (no answer within ``approval_timeout_s``: nothing deleted). ``skip`` names
    steps not to run (``health``, ``resources``, ``logs``, ``database``, ``security``, ``performance``,
    ``backups``, ``certificates``, ``cleanup``)."""
    logger = get_run_logger()
    started_at, clock = datetime.now(UTC), time.monotonic()
    unknown = sorted(set(skip or []) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown step(s) to skip: {', '.join(unknown)}; the steps are {', '.join(STEP_NAMES)}")
    env = await load_environment(environment)
    policy = load_maintenance_policy()
    dry = env.dry_run_by_default if dry_run is None else dry_run
    window_end = started_at + timedelta(minutes=window_minutes)
    previous_at, previous = await read_previous_figures(env.backups, environment, started_at)
    flow_run = FlowRunContext.get()
    run_id = str(flow_run.flow_run.id) if flow_run and flow_run.flow_run else None
    report = MaintenanceReport(
        environment=environment,
        started_at=started_at,
        window_minutes=window_minutes,
        dry_run=dry,
        previous_at=previous_at,
        previous=previous,
        run_url=url_for("flow-run", obj_id=run_id) if run_id else None,
    )
    timeout = approval_timeout_s or policy.cleanup.approval_timeout_s

    async def approver(planned: str) -> str | None:
        decision = await ask_approval(
            CleanupApproval,
            description=(
                f"**Weekly maintenance of `{environment}`: delete these old resources?**\n\n{planned}\n\n"
                f"The current, previous and last known good ReplicaSets and every mounted ConfigMap are kept. "
                f"No answer within {timeout}s deletes nothing."
            ),
            timeout_s=timeout,
            poll_s=policy.cleanup.approval_poll_s,
            approve=False,
        )
        if decision is None or not decision.approve:
            return None
        return decision.approver or "approver"

    ctx = MaintenanceContext(
        env=env,
        environment=environment,
        policy=policy,
        dry_run=dry,
        previous=previous,
        approver=approver if dry and dry_run is None else None,
        window_end=window_end,
    )
    for number, name, title, body in STEPS:
        if name in (skip or []):
            report.steps.append(_skipped(number, name, title, "skipped: asked to skip it"))
            continue
        if datetime.now(UTC) >= window_end:
            report.over_window = True
            report.steps.append(_skipped(number, name, title, f"skipped: the {window_minutes}-minute window closed"))
            continue

        async def run(body: checks.Step = body) -> StepResult:
            return await body(ctx)

        result = await run_step(number, name, title, run)
        logger.info("step %d %s: %s: %s", number, name, result.status, result.summary)
        report.steps.append(result)

    async def publish() -> StepResult:
        report.duration_s = round(time.monotonic() - clock, 1)
        notes = []
        try:
            report.figures_key = await store_figures(env.backups, report)
            notes.append(f"figures stored at `{report.figures_key}`")
        except Exception as err:  # noqa: BLE001 - the report still goes out; next week compares with an older week
            notes.append(f"figures not stored: {describe_error(err)}")
        await publish_report(report)
        try:
            notes.append("Slack told" if await tell_slack(env, report) else "no Slack block")
        except Exception as err:  # noqa: BLE001 - the report and the event say it all
            notes.append(f"Slack not told: {describe_error(err)}")
        status = "pass" if report.figures_key and not any("not told" in n for n in notes) else "warn"
        return StepResult(
            number=10,
            name="report",
            title="Report",
            status=status,
            summary=f"artifact weekly-maintenance-{environment}; " + "; ".join(notes),
        )

    report.steps.append(await run_step(10, "report", "Report", publish))
    emit_report_event(report)
    failed = [s for s in report.steps if s.status == "fail"]
    message = (
        f"weekly maintenance of {environment}: {report.status} ("
        + ", ".join(f"{s.name} {s.status}" for s in report.steps)
        + ")"
    )
    if failed:
        return Failed(message=message, data=report)
    return Completed(message=message, data=report)


def _skipped(number: int, name: str, title: str, why: str) -> StepResult:
    return StepResult(number=number, name=name, title=title, status="skipped", summary=why)
