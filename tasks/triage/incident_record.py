"""What the runs of one incident share, in Prefect Variables (storage every worker sees, unlike a local cache).

- ``incident-<id>``: the incident's Slack thread (channel and ``ts`` of its first message), written by the triage
  after its first notification, read back by ``incident-resolved`` to post in that thread;
- ``incident-<id>-resolved``: created once, by the ``incident-resolved`` run that posts RESOLVED. Creating a
  Variable whose name exists fails (409), so of two runs, even concurrent ones, exactly one posts.
"""

from __future__ import annotations

import hashlib
import re
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists
from pydantic import BaseModel


class IncidentThread(BaseModel):
    channel: str
    ts: str


def variable_name(incident_id: str, suffix: str = "") -> str:
    """``incident-<id>[-suffix]``, valid as a Variable name (letters, digits, dashes, underscores; a long id is
    hashed)."""
    slug = re.sub(r"[^a-z0-9_-]", "-", incident_id.lower())
    if len(slug) > 120:
        slug = slug[:100] + "-" + hashlib.sha256(incident_id.encode()).hexdigest()[:12]
    return f"incident-{slug}" + (f"-{suffix}" if suffix else "")


async def remember_thread(incident_id: str, thread: IncidentThread) -> None:
    """Keep the incident's Slack thread (a re-run of the triage moves it to its own first message)."""
    name = variable_name(incident_id)
    value = thread.model_dump()
    async with get_client() as client:
        existing = await client.read_variable_by_name(name)
        if existing is None:
            try:
                await client.create_variable(VariableCreate(name=name, value=value, tags=["incident"]))
                return
            except ObjectAlreadyExists:
                pass
        await client.update_variable(VariableUpdate(name=name, value=value))


async def read_thread(incident_id: str) -> IncidentThread | None:
    """The incident's Slack thread, or None when no triage recorded one."""
    async with get_client() as client:
        variable = await client.read_variable_by_name(variable_name(incident_id))
    if variable is None or not isinstance(variable.value, dict):
        return None
    try:
        return IncidentThread.model_validate(variable.value)
    except ValueError:
        return None


async def claim_resolved_notice(incident_id: str, run: str) -> str | None:
    """Claim the one RESOLVED message of the incident: None when this run claimed it, else who did it before."""
    name = variable_name(incident_id, "resolved")
    async with get_client() as client:
        try:
            await client.create_variable(
                VariableCreate(name=name, value={"run": run, "at": time.time()}, tags=["incident"])
            )
            return None
        except ObjectAlreadyExists:
            variable = await client.read_variable_by_name(name)
    value = variable.value if variable is not None else None
    return str(value.get("run", "another run")) if isinstance(value, dict) else "another run"
