"""What a recovery and a drill tell the world: the report (markdown artifact), ``dr.completed`` / ``dr.failed`` and
``dr.drill.completed`` / ``dr.drill.failed`` (resource ``runbooks.dr.<environment>``) with RTA, RPO, every phase's
duration and what was skipped, and the drill's week-over-week table (its rows kept in the environment's bucket, where
every worker sees them)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any, Literal

from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel, Field

from kernel.retry import once_task
from tasks.dr.data import RedisRestore
from tasks.kubernetes.restore import ApplyResult, ServiceSwitch
from tasks.reporting import emit
from tasks.storage import get_bytes, put_bytes

#: how many drills the week-over-week table shows
DRILL_HISTORY = 26


def dr_resource(environment: str) -> dict[str, str]:
    return {"prefect.resource.id": f"runbooks.dr.{environment}", "prefect.resource.name": f"{environment} recovery"}


class DrReport(BaseModel):
    kind: Literal["recovery", "drill"] = "recovery"
    source_environment: str
    recovery_environment: str
    status: Literal["running", "completed", "failed", "refused", "dry-run"] = "running"
    started_at: datetime
    backup_id: str | None = None
    backup_prefix: str | None = None
    backup_choice: str | None = None
    snapshot_at: datetime | None = None
    namespace: str | None = None
    database: str | None = None
    redis: str | None = None
    rta_s: float | None = Field(default=None, description="recovery time actual: start to verified")
    rpo_s: float | None = Field(default=None, description="the backup's snapshot to the start of the recovery")
    rta_objective_s: float | None = None
    rpo_objective_s: float | None = None
    phases: dict[str, float] = Field(default_factory=dict, description="phase → seconds")
    created: list[str] = Field(default_factory=list)
    replaced: list[str] = Field(default_factory=list)
    existing_left: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    left_out: list[str] = Field(default_factory=list)
    namespace_created: bool = False
    database_created: bool = False
    redis_touched: bool = False
    redis_restored_keys: int | None = None
    redis_expired_keys: int | None = Field(default=None, description="keys whose TTL passed since the backup")
    deployments: dict[str, str] = Field(default_factory=dict)
    restored_rows: dict[str, int | None] = Field(default_factory=dict)
    redis_keys: int | None = None
    redis_copy: RedisRestore | None = Field(default=None, exclude=True, description="the copy's own accounting")
    smoke: str | None = None
    checks: list[str] = Field(
        default_factory=list, description="the verification's checks that ran: deployments, rows, redis-keys, smoke"
    )
    verification_failures: list[str] = Field(default_factory=list)
    switch_approved: bool | None = None
    switches: list[ServiceSwitch] = Field(default_factory=list)
    switch_smoke: str | None = None
    switch_rolled_back: bool = False
    torn_down: list[str] = Field(default_factory=list)
    teardown_problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    error: str | None = None

    def add_applied(self, result: ApplyResult) -> None:
        self.created += result.created
        self.replaced += result.replaced
        self.existing_left += result.skipped_existing
        self.skipped += [f"{label}: its kind is not served by the target cluster" for label in result.not_served]

    def to_markdown(self) -> str:
        icon = {"running": "⏳", "completed": "✅", "failed": "❌", "refused": "⛔", "dry-run": "🧪"}[self.status]
        title = "Disaster-recovery drill" if self.kind == "drill" else "Disaster recovery"
        lines = [
            f"# {title} of `{self.source_environment}` into `{self.recovery_environment}`: {icon} {self.status}",
            "",
            f"Backup `{self.backup_prefix}` ({self.backup_choice})" if self.backup_prefix else "No backup chosen",
            "",
            "| figure | value | objective |",
            "|---|---|---|",
            f"| RTA (start to verified) | {_s(self.rta_s)} | {_s(self.rta_objective_s)} |",
            f"| RPO (snapshot to start) | {_s(self.rpo_s)} | {_s(self.rpo_objective_s)} |",
            "",
        ]
        if self.error:
            lines += [f"**Error**: {self.error}", ""]
        if self.phases:
            lines += (
                ["| phase | seconds |", "|---|---|"] + [f"| {p} | {d:.1f} |" for p, d in self.phases.items()] + [""]
            )
        targets = [
            ("namespace", self.namespace),
            ("database", self.database),
            ("Redis", self.redis),
        ]
        lines += [f"- {name}: `{value}`" for name, value in targets if value] + [""]
        if self.checks:
            lines += [f"Checks run: {', '.join(self.checks)}", ""]
        for title_, items in (
            ("Created", self.created),
            ("Replaced (overwrite)", self.replaced),
            ("Existing, left as they were", self.existing_left),
            ("Skipped", self.skipped),
            ("Left out (controllers recreate them)", self.left_out),
            ("Verification failures", self.verification_failures),
            ("Torn down", self.torn_down),
            ("Teardown problems", self.teardown_problems),
            ("Notes", self.notes),
        ):
            if items:
                lines += [f"## {title_}", ""] + [f"- {i}" for i in items] + [""]
        if self.deployments:
            lines += ["## Deployments", ""] + [f"- {n}: {s}" for n, s in self.deployments.items()] + [""]
        if self.restored_rows:
            lines += [f"Row counts: {len(self.restored_rows)} table(s) checked against the manifest.", ""]
        if self.redis_keys is not None:
            expired = (
                f" ({self.redis_expired_keys} more had expired since the backup)" if self.redis_expired_keys else ""
            )
            lines += [f"Redis keys after the restore: {self.redis_keys}{expired}.", ""]
        if self.smoke:
            lines += [f"Smoke suite against the recovery environment: {self.smoke}", ""]
        if self.switch_approved is not None:
            lines += ["## Traffic switch", ""]
            lines.append("Approved in the UI." if self.switch_approved else "Not approved: no switch.")
            for s in self.switches:
                lines.append(
                    f"- Service `{s.namespace}/{s.service}` → pods {', '.join(s.endpoints)} in `{s.target_namespace}`"
                )
            if self.switch_smoke:
                lines.append(f"- smoke suite through the switched Service: {self.switch_smoke}")
            if self.switch_rolled_back:
                lines.append("- ⚠️ the smoke suite failed after the switch: the selectors were PUT BACK")
            lines.append("")
        return "\n".join(lines)

    def event_payload(self) -> dict[str, Any]:
        return {
            "backup": self.backup_prefix,
            "backup_choice": self.backup_choice,
            "recovery_environment": self.recovery_environment,
            "namespace": self.namespace,
            "database": self.database,
            "rta_s": self.rta_s,
            "rpo_s": self.rpo_s,
            "rta_objective_met": None
            if self.rta_s is None or self.rta_objective_s is None
            else self.rta_s <= self.rta_objective_s,
            "rpo_objective_met": None
            if self.rpo_s is None or self.rpo_objective_s is None
            else self.rpo_s <= self.rpo_objective_s,
            "phases": self.phases,
            "skipped": self.skipped + self.existing_left,
            "switched": [f"{s.namespace}/{s.service}" for s in self.switches] if not self.switch_rolled_back else [],
            "switch_rolled_back": self.switch_rolled_back,
            "torn_down": self.torn_down,
            "teardown_problems": self.teardown_problems,
            "error": self.error,
        }


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def emit_dr_event(report: DrReport) -> None:
    prefix = "dr.drill" if report.kind == "drill" else "dr"
    outcome = "completed" if report.status == "completed" else "failed"
    emit(f"{prefix}.{outcome}", dr_resource(report.source_environment), report.event_payload())


# ------------------------------------------------------------------------------------------ drill history
class DrillRow(BaseModel):
    week: str
    started_at: datetime
    backup_id: str | None
    status: str
    rta_s: float | None
    rpo_s: float | None


def history_key(environment: str) -> str:
    return f"dr-drills/{environment}/history.json"


@once_task
async def record_drill(bucket: S3Bucket, environment: str, report: DrReport) -> list[DrillRow]:
    """Append this drill to the environment's drill history (in its bucket) and return the newest rows."""
    key = history_key(environment)
    data = await asyncio.to_thread(get_bytes, bucket, key)
    rows = [DrillRow.model_validate(r) for r in json.loads(data)] if data else []
    iso = report.started_at.isocalendar()
    rows.append(
        DrillRow(
            week=f"{iso.year}-W{iso.week:02d}",
            started_at=report.started_at,
            backup_id=report.backup_id,
            status=report.status,
            rta_s=report.rta_s,
            rpo_s=report.rpo_s,
        )
    )
    rows = rows[-DRILL_HISTORY:]
    payload = json.dumps([r.model_dump(mode="json") for r in rows], indent=1).encode()
    await asyncio.to_thread(put_bytes, bucket, key, payload)
    return rows


def drill_table(rows: list[DrillRow]) -> list[dict[str, Any]]:
    return [
        {
            "week": r.week,
            "started": f"{r.started_at:%Y-%m-%d %H:%M}",
            "backup": r.backup_id,
            "status": r.status,
            "rta_s": None if r.rta_s is None else round(r.rta_s, 1),
            "rpo_s": None if r.rpo_s is None else round(r.rpo_s, 1),
        }
        for r in reversed(rows)
    ]
