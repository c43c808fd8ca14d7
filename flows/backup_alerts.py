"""``backup-missing``: what the "no backup in 26 h" automation runs (:mod:`deployments.automations`).

The automation fires when no ``backup.completed`` of a daily backup arrived within its window. This flow
looks at the bucket itself before it pages: a completed backup there (the event was lost) is a Slack warning;
no recent completed backup is a Slack alert and a PagerDuty incident (dedup key ``backup-missing-<env>``, so
a re-fire is the same incident).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.backup.manifest import IncompleteBackupError, backup_resource
from tasks.backup.restore import find_backup
from tasks.notify import post_slack_webhook, send_pagerduty_event
from tasks.reporting import emit


class BackupMissingReport(BaseModel):
    environment: str
    window_hours: float
    newest_backup: str | None = None
    newest_completed_at: datetime | None = None
    verdict: Literal["missing", "event-missing"]
    notified: list[str] = Field(default_factory=list)

    @property
    def message(self) -> str:
        newest = (
            f"the newest completed one is {self.newest_backup} ({self.newest_completed_at:%Y-%m-%d %H:%M} UTC)"
            if self.newest_backup and self.newest_completed_at
            else "there is no completed backup at all"
        )
        if self.verdict == "event-missing":
            return (
                f"No backup.completed event from {self.environment} in {self.window_hours:g} h, but the bucket holds "
                f"a recent backup: {newest}. Check the daily-backup runs and event delivery."
            )
        return f"No daily backup of {self.environment} completed in the last {self.window_hours:g} h: {newest}."


@flow(name="backup-missing", log_prints=False)
@redact_errors
async def backup_missing(
    environment: str = "sandbox", window_hours: Annotated[float, Field(gt=0, le=24 * 14)] = 26
) -> BackupMissingReport:
    """Alert that ``environment`` has had no completed daily backup for ``window_hours``: Slack, and PagerDuty
    unless the bucket shows a recent completed backup after all."""
    logger = get_run_logger()
    env = await load_environment(environment)
    newest = None
    try:
        newest = await find_backup(env.backups, "daily", environment)
    except IncompleteBackupError:
        pass
    recent = newest is not None and datetime.now(UTC) - newest.completed_at < timedelta(hours=window_hours)
    report = BackupMissingReport(
        environment=environment,
        window_hours=window_hours,
        newest_backup=newest.backup_id if newest else None,
        newest_completed_at=newest.completed_at if newest else None,
        verdict="event-missing" if recent else "missing",
    )
    (logger.warning if recent else logger.error)(report.message)
    if env.slack is not None:
        icon = "⚠️" if recent else "🚨"
        await post_slack_webhook(
            env.slack,
            f"{icon} {report.message}",
            [{"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *Backup missing* — {report.message}"}}],
        )
        report.notified.append("slack")
    if env.pagerduty is not None and not recent:
        await send_pagerduty_event(
            env.pagerduty,
            "trigger",
            dedup_key=f"backup-missing-{environment}",
            summary=report.message,
            severity="error",
            source=f"runbooks.backup.{environment}",
            details={"newest_backup": report.newest_backup, "window_hours": window_hours},
        )
        report.notified.append("pagerduty")
    emit(
        "backup.missing",
        resource=backup_resource(environment, "daily"),
        payload=report.model_dump(mode="json"),
    )
    return report
