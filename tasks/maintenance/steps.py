"""A step of the weekly maintenance and what it found: :class:`StepResult` (pass / warn / fail / skipped, the
figure behind it), and :func:`run_step`, which runs one step as a task run of its own so that the UI shows each
step's state and a failing step never hides the others."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from kernel.errors import RunbookError
from kernel.retry import once_task
from tasks.reporting import describe_error

StepStatus = Literal["pass", "warn", "fail", "skipped"]
ICONS: dict[str, str] = {"pass": "✅", "warn": "⚠️", "fail": "❌", "skipped": "⏭️"}
Figure = float | int | str | None


class StepResult(BaseModel):
    """One step's verdict, the one line that says why (with its figure), and what the report shows of it."""

    number: int
    name: str
    title: str
    status: StepStatus
    summary: str = Field(description="the one line of the report, with the figure behind the verdict")
    figures: dict[str, Figure] = Field(default_factory=dict, description="this week's numbers, for next week's table")
    details: list[str] = Field(default_factory=list, description="markdown lines under the step")
    actions: list[str] = Field(default_factory=list, description="what the step changed (ANALYZE, deletions, ...)")
    rows: list[dict[str, Any]] = Field(default_factory=list, description="a table of what the step read")
    duration_s: float = 0.0

    @property
    def line(self) -> str:
        said = self.summary if self.summary.startswith(f"{self.status}:") else f"{self.status}: {self.summary}"
        return f"{ICONS[self.status]} **{self.title}** — {said}"


class StepFailedError(RunbookError):
    """A step judged ``fail``: raised inside the step's task run so that its state is Failed."""

    system = "maintenance"

    def __init__(self, result: StepResult) -> None:
        self.result = result
        super().__init__(f"step {result.number} {result.name}: {result.summary}", transient=False)


def worst(statuses: list[StepStatus]) -> StepStatus:
    for status in ("fail", "warn", "pass"):
        if status in statuses:
            return status
    return "skipped"


async def run_step(number: int, name: str, title: str, body: Callable[[], Awaitable[StepResult]]) -> StepResult:
    """Run ``body`` as the task run ``<number>-<name>``: Failed when the step fails (judged or raised), Completed
    otherwise. Never raises: an error inside a step becomes that step's ``fail`` with the error's text."""
    holder: list[StepResult] = []
    started = time.perf_counter()

    async def step() -> StepResult:
        result = await body()
        result.duration_s = round(time.perf_counter() - started, 3)
        holder.append(result)
        if result.status == "fail":
            raise StepFailedError(result)
        return result

    runner = once_task(step, name=f"{number:02d}-{name}")
    state = await runner(return_state=True)
    if holder:
        return holder[0]
    error = await state.aresult(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
    why = describe_error(error) if isinstance(error, BaseException) else (state.message or state.name or "failed")
    return StepResult(
        number=number,
        name=name,
        title=title,
        status="fail",
        summary=f"the step failed: {why}",
        duration_s=round(time.perf_counter() - started, 3),
    )
