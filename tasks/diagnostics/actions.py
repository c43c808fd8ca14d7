"""Deciding and recording the actions of the diagnostics runbooks (``redis-maintenance``, ``high-memory``).

An action is planned with its reason, decided by the mode of the environment's kind (:class:`~tasks.diagnostics.
policy.Modes`: ``auto`` acts, ``approve`` pauses the run for a typed answer in the UI and no answer is a denial,
``observe`` describes), then applied by the flow, which records its outcome here and emits one event per action.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.input import RunInput
from pydantic import BaseModel, Field

from tasks.approval import ask_approval
from tasks.diagnostics.policy import Mode

Decision = Literal["auto", "approved", "denied", "observed", "refused"]
Outcome = Literal["done", "no-op", "not-done", "failed"]


class Approval(RunInput):
    approve: bool = Field(default=False, description="Carry out the action described above (true), or not (false)?")
    approver: str = Field(default="", description="Who decides (for the record).")


class NamedApproval(RunInput):
    """An approval that must name what it destroys (FLUSHALL: the server, as the description shows it)."""

    approve: bool = Field(default=False, description="Carry out the action described above?")
    target: str = Field(default="", description="Type the name shown in the description, exactly.")
    approver: str = Field(default="", description="Who decides (for the record).")


class ActionRecord(BaseModel):
    action: str
    target: str
    reason: str
    decision: Decision | None = None
    outcome: Outcome = "not-done"
    approver: str | None = None
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "decision": self.decision,
            "outcome": self.outcome,
            "approver": self.approver or "",
            "detail": self.detail,
        }


async def decide(
    record: ActionRecord,
    mode: Mode,
    *,
    description: str,
    timeout_s: int,
    always_ask: bool = False,
    name_to_type: str | None = None,
) -> bool:
    """Decide ``record`` (its ``decision`` and ``approver`` set); True when it may be carried out.

    ``always_ask`` pauses even in ``auto`` mode; ``name_to_type`` asks through :class:`NamedApproval` and denies an
    answer whose ``target`` is not exactly that name."""
    if mode == "observe":
        record.decision = "observed"
        return False
    if mode == "auto" and not always_ask:
        record.decision = "auto"
        return True
    if name_to_type is not None:
        named = await ask_approval(
            NamedApproval,
            description=f"{description}\n\nType `{name_to_type}` in **target** to confirm. No answer within "
            f"{timeout_s}s is a denial.",
            timeout_s=timeout_s,
            poll_s=2,
            approve=False,
        )
        ok = named is not None and named.approve and named.target.strip() == name_to_type
        record.decision = "approved" if ok else "denied"
        record.approver = (named.approver or "approver") if named is not None else None
        if named is not None and named.approve and not ok:
            record.detail = f"the answer named {named.target.strip()!r}, not {name_to_type!r}"
        return ok
    answer = await ask_approval(
        Approval,
        description=f"{description}\n\nNo answer within {timeout_s}s is a denial.",
        timeout_s=timeout_s,
        poll_s=2,
        approve=False,
    )
    ok = answer is not None and answer.approve
    record.decision = "approved" if ok else "denied"
    record.approver = (answer.approver or "approver") if answer is not None else None
    return ok


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)
