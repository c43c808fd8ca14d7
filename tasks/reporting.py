"""What a runbook tells the world: artifacts, events and error texts, each redacted on the way out.

Every flow and task writes its artifacts and emits its events through these functions, never through
Prefect's directly, so that no secret reaches the UI, the event stream or a notification
(:mod:`kernel.redact`). Slack, PagerDuty and Opsgenie payloads are redacted in :mod:`tasks.notify`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.events import emit_event

from kernel.redact import redact, redact_obj


def describe_error(err: BaseException) -> str:
    """One redacted line for an error: what a notification, an artifact or an event may say about it."""
    text = str(err) or type(err).__name__
    ours = type(err).__module__.split(".")[0] in {"kernel", "blocks", "tasks"}  # our messages name the system
    return redact(text if ours else f"{type(err).__name__}: {text}")


async def publish_markdown(key: str, markdown: str, description: str | None = None) -> UUID:
    """A markdown artifact with a stable key (``incident-<id>``, ``backup-report-<env>``)."""
    return await acreate_markdown_artifact(
        key=key, markdown=redact(markdown), description=redact(description) if description else None
    )


async def publish_table(key: str, table: list[dict[str, Any]], description: str | None = None) -> UUID:
    """A table artifact (findings with their figures, the deploy gates)."""
    return await acreate_table_artifact(
        key=key, table=redact_obj(table), description=redact(description) if description else None
    )


async def start_progress(key: str | None, description: str | None = None) -> UUID:
    """A progress artifact at 0 % for long work (backups, restores)."""
    return await acreate_progress_artifact(
        progress=0.0, key=key, description=redact(description) if description else None
    )


async def update_progress(artifact_id: UUID, percent: float, description: str | None = None) -> None:
    await aupdate_progress_artifact(artifact_id, percent, description=redact(description) if description else None)


def emit(
    event: str,
    resource: dict[str, str],
    payload: dict[str, Any] | None = None,
    related: list[dict[str, str]] | None = None,
) -> None:
    """A Prefect event for every action the automation takes (``backup.completed``, ``runbooks.action.applied``)."""
    emit_event(
        event=event,
        resource=redact_obj(resource),
        payload=redact_obj(payload) if payload is not None else None,
        related=[redact_obj(r) for r in related] if related else None,
    )
