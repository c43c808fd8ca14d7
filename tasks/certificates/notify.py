"""Who hears about a certificate: by the triage policy's escalation matrix (``tasks/triage/policy.yaml``), at the
severity the certificate policy gives a warning (``escalation.warn``, under ``expiry.warn_days`` or the sources
disagreeing) or a page (``escalation.page``, under ``expiry.page_days``): Slack, and PagerDuty and Opsgenie where
that row names them. The page's dedup key names the environment and the Secret, so a daily re-check pages once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment
from tasks.certificates.check import CertificateCheck
from tasks.certificates.policy import CertificatePolicy
from tasks.notify import create_opsgenie_alert, post_slack_message, post_slack_webhook, send_pagerduty_event
from tasks.triage.policy import load_policy as load_triage_policy


class Notified(BaseModel):
    severity: str | None = None
    channels: list[str] = Field(default_factory=list)
    dedup_key: str | None = None


def dedup_key(check: CertificateCheck) -> str:
    return f"certificate-{check.environment}-{check.namespace}-{check.secret}"


async def notify_certificate(env: RunbookEnvironment, check: CertificateCheck, policy: CertificatePolicy) -> Notified:
    """Tell people what the check found; nothing when it is ``ok``."""
    if check.level == "ok":
        return Notified()
    severity = policy.escalation.page if check.level == "page" else policy.escalation.warn
    row = load_triage_policy().escalation[severity]
    left = check.days_left
    headline = (
        f"{severity}: certificate {check.namespace}/{check.certificate} of {check.environment}: "
        + (f"expires in {left:.1f} days" if left is not None else "expiry unreadable")
        + (f"; {len(check.disagreements)} disagreement(s)" if check.disagreements else "")
    )
    lines = [headline] + [f"- {r.source} {r.target}: {r.row()['not_after'] or r.detail}" for r in check.readings]
    lines += [f"- ⚠️ {d}" for d in check.disagreements]
    text = "\n".join(lines)
    key = dedup_key(check)
    jobs: list[Awaitable[Any]] = []
    channels: list[str] = []
    if env.slack is not None:
        if env.slack.bot_token is not None:
            jobs.append(post_slack_message(env.slack, env.slack.channel_for(row.slack), text))
        else:
            jobs.append(post_slack_webhook(env.slack, text))
        channels.append(f"slack:{row.slack}")
    if env.pagerduty is not None and row.pagerduty:
        details = {r.target: r.row()["not_after"] or r.detail for r in check.readings}
        jobs.append(
            send_pagerduty_event(env.pagerduty, "trigger", key, headline, severity=row.pagerduty, details=details)
        )
        channels.append("pagerduty")
    if env.opsgenie is not None and row.opsgenie:
        jobs.append(create_opsgenie_alert(env.opsgenie, headline, alias=key, priority=row.opsgenie, description=text))
        channels.append("opsgenie")
    await asyncio.gather(*jobs)
    return Notified(severity=severity, channels=channels, dedup_key=key)
