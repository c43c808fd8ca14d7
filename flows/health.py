"""System health check: the seed's first step of every procedure (incident detection, pre-deployment
checklist, weekly maintenance step 1, post-recovery verification), as one flow.

Every check runs concurrently; a failing check is reported, not hidden, and makes the run Failed after the
report artifact, the event and (optionally) the Slack message have gone out. The error-rate and latency limits are
the triage policy's (``tasks/triage/policy.yaml``, read at each run): the health check passes exactly when a triage
would call the platform's figures resolved.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.notify import post_slack_webhook
from tasks.platform import check_health, check_model_health, fetch_metrics, get_status_page, list_models
from tasks.postgres import check_postgres
from tasks.redis import check_redis
from tasks.reporting import describe_error, emit, publish_markdown
from tasks.storage import check_bucket
from tasks.triage.policy import load_policy


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class HealthReport(BaseModel):
    environment: str
    healthy: bool
    checks: list[Check] = Field(default_factory=list)

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_markdown(self) -> str:
        lines = [
            f"# Health of `{self.environment}`: {'✅ healthy' if self.healthy else '❌ unhealthy'}",
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        for c in self.checks:
            lines.append(f"| {c.name} | {'✅' if c.ok else '❌'} | {c.detail.replace('|', '/')} |")
        return "\n".join(lines)


async def _run(name: str, coro: Any, judge: Any) -> list[Check]:
    """Await one check; an exception becomes a failing check carrying its one-line message."""
    try:
        result = await coro
    except Exception as err:  # noqa: BLE001 - reported as a failing check and fails the run
        return [Check(name=name, ok=False, detail=describe_error(err))]
    judged = judge(result)
    return judged if isinstance(judged, list) else [judged]


@flow(name="system-health-check", log_prints=False)
@redact_errors
async def system_health_check(environment: str = "sandbox", notify_on_failure: bool = True) -> State:
    """Check the platform's health endpoints, metrics, models, status page, PostgreSQL, Redis and the backup
    bucket of ``environment``; publish a report artifact (key ``health-<environment>``) and an event."""
    logger = get_run_logger()
    env = await load_environment(environment)
    platform = env.platform
    limits = load_policy().thresholds  # the same numbers the triage calls an incident resolved with

    def metrics_checks(m: Any) -> list[Check]:
        return [
            Check(
                name="error rate",
                ok=limits.error_rate_ok(m.error_rate),
                detail=f"{m.error_rate} (max {limits.error_rate})",
            ),
            Check(
                name="response time p95",
                ok=limits.response_time_ok(m.response_time_p95_s),
                detail=f"{m.response_time_p95_s}s (max {limits.response_time_p95_s}s)",
            ),
        ]

    async def models_checks() -> list[Check]:
        models = await list_models(platform)
        healths = await asyncio.gather(
            *(check_model_health(platform, m.name) for m in models if m.status != "disabled")
        )
        return [
            Check(name=f"model {h.name}", ok=h.healthy, detail=str(h.detail.get("status", h.status_code)))
            for h in healths
        ]

    results = await asyncio.gather(
        _run(
            "platform /health",
            check_health(platform),
            lambda h: Check(
                name="platform /health", ok=h.healthy, detail=f"{h.status_code} {h.status}, {h.latency_ms} ms"
            ),
        ),
        _run("platform metrics", fetch_metrics(platform), metrics_checks),
        _run("models", models_checks(), lambda checks: checks),
        _run(
            "status page",
            get_status_page(platform),
            lambda s: Check(
                name="status page",
                ok=s.open_incidents == 0,
                detail=f"{s.indicator}: {s.description}; {s.open_incidents} open incident(s)",
            ),
        ),
        _run(
            "postgres",
            check_postgres(env.postgres),
            lambda p: Check(
                name="postgres",
                ok=True,
                detail=f"{p.address} v{p.server_version}, "
                f"{p.database_size_bytes // 2**20} MiB, "
                f"connections {p.connections_by_state}",
            ),
        ),
        _run(
            "redis",
            check_redis(env.redis),
            lambda r: Check(
                name="redis", ok=True, detail=f"{r.address} v{r.version}, ping {r.ping_ms} ms, {r.key_count} keys"
            ),
        ),
        _run(
            "backup bucket",
            check_bucket(env.backups),
            lambda b: Check(
                name="backup bucket",
                ok=True,
                detail=f"{b.bucket} at {b.endpoint}, newest {b.newest_key or '(empty)'}",
            ),
        ),
    )
    checks = [check for group in results for check in group]
    report = HealthReport(environment=environment, healthy=all(c.ok for c in checks), checks=checks)
    await publish_markdown(f"health-{environment}", report.to_markdown(), f"System health of {environment}")
    emit(
        "runbooks.health.checked" if report.healthy else "runbooks.health.failed",
        {"prefect.resource.id": f"runbooks.environment.{environment}", "prefect.resource.name": environment},
        {"healthy": report.healthy, "failing": [c.name for c in report.failing]},
    )
    for c in checks:
        (logger.info if c.ok else logger.warning)("%s %s: %s", "OK  " if c.ok else "FAIL", c.name, c.detail)
    if report.healthy:
        return Completed(message="all checks passed", data=report)
    if notify_on_failure and env.slack is not None:
        failing = "\n".join(f"• *{c.name}*: {c.detail}" for c in report.failing)
        await post_slack_webhook(
            env.slack,
            f"❌ Health check failed on {environment}",
            [
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": f"*Health check failed* on `{environment}`\n{failing}",
                    },
                }
            ],
        )
    return Failed(
        message=f"{len(report.failing)} check(s) failing: " + ", ".join(c.name for c in report.failing),
        data=report,
    )
