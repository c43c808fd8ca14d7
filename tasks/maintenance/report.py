"""The weekly maintenance report: the seed's sections filled from the steps' own results, this week's figures
beside last week's, where the figures are kept between runs, the Slack summary and the event.

Each run stores its figures as ``maintenance/<environment>/<YYYYMMDDTHHMMSSZ>.json`` in the environment's bucket
(storage every worker sees); the next run reads the newest one before its own as *last week*.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment
from kernel.retry import idempotent_task, read_task
from tasks.maintenance.steps import ICONS, Figure, StepResult, StepStatus, worst
from tasks.notify import post_slack_webhook
from tasks.reporting import emit, publish_markdown, publish_table
from tasks.storage import get_bytes, list_stored, put_bytes

FIGURES_ROOT = "maintenance"
EVENT = "runbooks.maintenance.completed"


class MaintenanceReport(BaseModel):
    environment: str
    started_at: datetime
    window_minutes: int
    dry_run: bool
    steps: list[StepResult] = Field(default_factory=list)
    previous_at: datetime | None = Field(default=None, description="when last week's figures were taken")
    previous: dict[str, Figure] = Field(default_factory=dict)
    figures_key: str | None = None
    run_url: str | None = None
    duration_s: float = 0.0
    over_window: bool = False

    @property
    def status(self) -> StepStatus:
        return worst([s.status for s in self.steps])

    @property
    def figures(self) -> dict[str, Figure]:
        return {f"{s.name}.{k}": v for s in self.steps for k, v in s.figures.items()}

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for s in self.steps if s.status == status) for status in ICONS}

    def to_markdown(self) -> str:
        figures = self.figures
        lines = [
            f"# Weekly Maintenance Report - {self.started_at:%Y-%m-%d} ({self.environment})",
            "",
            f"{ICONS[self.status]} overall **{self.status}** — "
            + ", ".join(f"{n} {status}" for status, n in self.counts().items() if n)
            + f"; {self.duration_s:.0f}s of a {self.window_minutes}-minute window"
            + (" (**over the window**)" if self.over_window else "")
            + ("; dry run: nothing deleted" if self.dry_run else ""),
            "",
            "## System Status",
            *[f"- {s.line}" for s in self.steps],
            "",
            "## Resource Usage",
            f"- CPU Usage: {_shown(figures.get('resources.node_cpu_percent'), '%')}",
            f"- Memory Usage: {_shown(figures.get('resources.node_memory_percent'), '%')}",
            f"- Database Size: {_shown(figures.get('database.size_mib'), ' MiB')}",
            "",
            "## Actions Taken",
            *([f"- {a}" for s in self.steps for a in s.actions] or ["- none"]),
            "",
            "## Next Week Priorities",
            *(
                [f"- {ICONS[s.status]} {s.title}: {s.summary}" for s in self.steps if s.status in ("fail", "warn")]
                or ["- nothing flagged this week"]
            ),
            "",
            "## Details",
        ]
        for s in self.steps:
            lines += ["", f"### {s.number}. {s.title} ({s.status}, {s.duration_s:.1f}s)", *s.details]
        if self.previous_at:
            lines += ["", f"Last week's figures: {self.previous_at:%Y-%m-%d %H:%M} UTC (table artifact beside this)."]
        return "\n".join(lines)

    def figure_rows(self) -> list[dict[str, Any]]:
        rows = []
        for key, now in self.figures.items():
            before = self.previous.get(key)
            change = None
            if isinstance(now, int | float) and isinstance(before, int | float):
                change = round(now - before, 3)
            rows.append({"figure": key, "this week": now, "last week": before, "change": change})
        return rows


def _shown(value: Figure, unit: str) -> str:
    return "unknown" if value is None else f"{value}{unit}"


def figures_prefix(environment: str) -> str:
    return f"{FIGURES_ROOT}/{environment}/"


@read_task
async def read_previous_figures(
    bucket: S3Bucket, environment: str, before: datetime
) -> tuple[datetime | None, dict[str, Figure]]:
    """The newest stored figures taken before ``before`` (last week's), or nothing on a first run."""
    stored = await asyncio.to_thread(list_stored, bucket, figures_prefix(environment))
    candidates = sorted(o.key for o in stored if o.key.endswith(".json"))
    stamp = before.strftime("%Y%m%dT%H%M%SZ")
    older = [k for k in candidates if k.rsplit("/", 1)[-1].removesuffix(".json") < stamp]
    if not older:
        return None, {}
    data = await asyncio.to_thread(get_bytes, bucket, older[-1])
    if data is None:
        return None, {}
    try:
        doc = json.loads(data)
        return datetime.fromisoformat(doc["taken_at"]), dict(doc["figures"])
    except (ValueError, KeyError, TypeError):
        return None, {}


@idempotent_task
async def store_figures(bucket: S3Bucket, report: MaintenanceReport) -> str:
    key = f"{figures_prefix(report.environment)}{report.started_at:%Y%m%dT%H%M%SZ}.json"
    doc = {
        "environment": report.environment,
        "taken_at": report.started_at.isoformat(),
        "status": report.status,
        "steps": {s.name: s.status for s in report.steps},
        "figures": report.figures,
    }
    await asyncio.to_thread(put_bytes, bucket, key, json.dumps(doc, default=str).encode())
    return key


async def publish_report(report: MaintenanceReport) -> None:
    """The markdown artifact ``weekly-maintenance-<env>`` (the UI keeps its history) and the figures table."""
    await publish_markdown(
        f"weekly-maintenance-{report.environment}",
        report.to_markdown(),
        f"Weekly maintenance of {report.environment}: {report.status}",
    )
    await publish_table(
        f"weekly-maintenance-figures-{report.environment}",
        report.figure_rows(),
        f"Weekly maintenance of {report.environment}: this week's figures beside last week's",
    )


async def tell_slack(env: RunbookEnvironment, report: MaintenanceReport) -> bool:
    """A summary (one line per step) and the link to the run; False when the environment has no Slack block."""
    if env.slack is None:
        return False
    icon = ICONS[report.status]
    text = f"{icon} Weekly maintenance of {report.environment}: {report.status}"
    body = "\n".join(f"{ICONS[s.status]} *{s.title}*: {s.summary}"[:300] for s in report.steps)
    link = f"\n<{report.run_url}|The run and its report>" if report.run_url else ""
    await post_slack_webhook(
        env.slack,
        text,
        [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*\n{body}{link}"[:2900]}}],
    )
    return True


def emit_report_event(report: MaintenanceReport) -> None:
    emit(
        EVENT,
        {
            "prefect.resource.id": f"runbooks.environment.{report.environment}",
            "prefect.resource.name": report.environment,
        },
        {
            "status": report.status,
            "steps": {s.name: s.status for s in report.steps},
            "summaries": {s.name: s.summary for s in report.steps},
            "dry_run": report.dry_run,
            "figures_key": report.figures_key,
            "taken_at": report.started_at.astimezone(UTC).isoformat(),
        },
    )
