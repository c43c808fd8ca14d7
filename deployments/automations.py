"""The Prefect automations of the project, as code: applied by :func:`deployments.apply.apply_automations`.

``backup-missing-<environment>``: a proactive trigger that fires when no ``backup.completed`` of a daily backup
(resource ``runbooks.backup.<environment>``, label ``runbooks.backup.kind: daily``, as
:func:`tasks.backup.report.emit_backup_event` emits it) arrived within 26 h, and runs the ``backup-missing``
deployment (:mod:`flows.backup_alerts`: Slack, PagerDuty) for that environment. One automation per
environment that has a ``daily-backup`` deployment in ``prefect.yaml``; while backups stay missing it fires
again after every window.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import AutomationCore, EventTrigger, Posture, RunDeployment

BACKUP_COMPLETED_EVENT = "backup.completed"
BACKUP_MISSING_WINDOW = timedelta(hours=26)
#: ``<flow name>/<deployment name>`` of what the automation runs (a deployment of ``prefect.yaml``).
BACKUP_MISSING_DEPLOYMENT = "backup-missing/backup-missing"
AUTOMATION_TAGS = ["runbooks", "backup"]


def backup_missing_name(environment: str) -> str:
    return f"backup-missing-{environment}"


def backup_missing_automation(
    environment: str, deployment_id: UUID, *, within: timedelta = BACKUP_MISSING_WINDOW
) -> AutomationCore:
    """The "no daily backup of ``environment`` within ``within``" automation, running ``deployment_id``."""
    hours = within.total_seconds() / 3600
    return AutomationCore(
        name=backup_missing_name(environment),
        description=(
            f"No {BACKUP_COMPLETED_EVENT} of a daily backup of {environment} within {hours:g} h: "
            "run backup-missing (Slack, PagerDuty)."
        ),
        enabled=True,
        tags=AUTOMATION_TAGS,
        trigger=EventTrigger(
            posture=Posture.Proactive,
            expect={BACKUP_COMPLETED_EVENT},
            match={"prefect.resource.id": f"runbooks.backup.{environment}", "runbooks.backup.kind": "daily"},
            threshold=1,
            within=within,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={"environment": environment, "window_hours": round(hours, 4)},
            )
        ],
    )
