"""The record of a release: what went out, every check with its value, threshold and verdict, and the outcome.

Published as a table artifact (``deploy-<environment>``: one row per check) and a markdown artifact
(``deploy-report-<environment>``), told to Slack #deployments at the start and at the end, and emitted as
``runbooks.deploy.<outcome>`` on the resource ``runbooks.release.<environment>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment
from tasks.deploy.gates import Check, Verdict, checks_table, overall
from tasks.deploy.rollout import Release, RollbackStep
from tasks.notify import post_slack_message, post_slack_webhook
from tasks.reporting import emit, publish_markdown, publish_table

Outcome = Literal["refused", "promoted", "rolled-back", "rollback-failed", "dry-run"]


class ReleaseRequest(BaseModel):
    deployer: str
    commit: str
    reason: str
    images: dict[str, str] = Field(description="Deployment -> the image it is to run")


class DeployReport(BaseModel):
    environment: str
    run: str
    request: ReleaseRequest
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    previous: Release | None = None
    deployed: Release | None = None
    checks: list[Check] = Field(default_factory=list)
    backup_id: str | None = None
    outcome: Outcome | None = None
    decided_by: str = "gates"
    rollback: list[RollbackStep] = Field(default_factory=list)
    message: str = ""
    duration_s: float = 0.0
    rollout_started_at: datetime | None = None
    stable_at: datetime | None = Field(default=None, description="both Deployments Ready on the final release")

    @property
    def verdict(self) -> Verdict:
        return overall([c for c in self.checks if c.phase != "preflight"])

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "fail"]

    def inconclusive(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "inconclusive"]

    def deciding(self) -> str:
        """The checks that decided, named (the failing ones, else the inconclusive ones)."""
        chosen = self.failing() or self.inconclusive()
        return ", ".join(f"{c.name} ({c.value})" for c in chosen[:4])

    def table(self) -> list[dict[str, str]]:
        return checks_table(self.checks)

    def to_markdown(self) -> str:
        icon = {"promoted": "✅", "rolled-back": "↩️", "refused": "⛔", "rollback-failed": "🔥", "dry-run": "📝"}
        lines = [
            f"# Release on `{self.environment}`: {icon.get(self.outcome or '', '…')} {self.outcome or 'running'}",
            "",
            f"- deployer **{self.request.deployer}**, commit `{self.request.commit}`, reason: {self.request.reason}",
            f"- requested: {', '.join(f'{k} → `{v}`' for k, v in self.request.images.items())}",
        ]
        if self.previous:
            lines.append(f"- before: {self.previous.describe()}")
        if self.deployed:
            lines.append(f"- rolled out: {self.deployed.describe()}")
        if self.backup_id:
            lines.append(f"- preventive backup: `{self.backup_id}`")
        lines.append(f"- decided by: {self.decided_by}; {self.message}")
        for step in self.rollback:
            lines.append(f"- rollback {step.deployment}: {step.outcome} → {', '.join(step.images)} ({step.detail})")
        lines += ["", "| phase | check | value | threshold | verdict | detail |", "|---|---|---|---|---|---|"]
        for row in self.table():
            cells = [row[k].replace("|", "/") for k in ("phase", "check", "value", "threshold", "verdict", "detail")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def report_key(environment: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in environment.lower())


async def publish_report(report: DeployReport) -> None:
    slug = report_key(report.environment)
    await publish_table(f"deploy-{slug}", report.table(), f"Release checks on {report.environment}")
    await publish_markdown(f"deploy-report-{slug}", report.to_markdown(), f"Release on {report.environment}")


def emit_release_event(report: DeployReport, event: str | None = None) -> None:
    emit(
        event or f"runbooks.deploy.{report.outcome}",
        {"prefect.resource.id": f"runbooks.release.{report.environment}", "prefect.resource.name": report.environment},
        {
            "images": report.request.images,
            "commit": report.request.commit,
            "deployer": report.request.deployer,
            "verdict": report.verdict,
            "deciding": report.deciding(),
            "backup_id": report.backup_id,
            "run": report.run,
        },
    )


async def tell_deployments(env: RunbookEnvironment, text: str, details: str = "") -> None:
    """Post to Slack #deployments (chat.postMessage with a bot token, else the webhook); nothing without Slack."""
    if env.slack is None:
        return
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{text}\n{details}".strip()}}
    ]
    if env.slack.bot_token is not None:
        await post_slack_message(env.slack, env.slack.channel_for("deployments"), text, blocks)
    else:
        await post_slack_webhook(env.slack, text, blocks)
