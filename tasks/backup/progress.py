"""The progress artifact of a running backup: created at 0 %, updated every few seconds while parts stream."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect import get_run_logger

from tasks.backup.pipeline import Progress
from tasks.reporting import describe_error, start_progress, update_progress

PROGRESS_INTERVAL_S = 2.0


class ProgressTracker:
    """``async with ProgressTracker(...)``: a progress artifact kept up to date from ``progress`` until the block
    ends. It is only a display: if the API refuses an update, tracking stops with a warning and the backup goes on."""

    def __init__(self, key: str, description: str, progress: Progress, parts: list[str]) -> None:
        self.key = key
        self.description = description
        self.progress = progress
        self.parts = parts
        self.artifact_id: UUID | None = None
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressTracker:
        self.artifact_id = await start_progress(key=self.key, description=self.description)
        self._task = asyncio.create_task(self._track(self.artifact_id))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        if self._task is not None:
            await self._task

    async def _track(self, artifact_id: UUID) -> None:
        last = -1.0
        while not self._done.is_set():
            value = self.progress.percent(self.parts)
            if value != last:
                try:
                    await update_progress(artifact_id, value)
                except Exception as err:  # noqa: BLE001 - logged; the backup's own outcome does not depend on it
                    get_run_logger().warning("Progress artifact not updated any more: %s", describe_error(err))
                    return
                last = value
            try:
                await asyncio.wait_for(self._done.wait(), timeout=PROGRESS_INTERVAL_S)
            except TimeoutError:
                pass

    async def finish(self, description: str, *, completed: bool) -> None:
        """The final figure: 100 % when ``completed``, else where the parts stopped."""
        if self.artifact_id is not None:
            percent = 100.0 if completed else self.progress.percent(self.parts)
            await update_progress(self.artifact_id, percent, description=description)
