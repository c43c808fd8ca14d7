"""A flow for the in-process worker's tests: it records the process it ran in."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow


@flow(name="record-pid")
async def record_pid(path: str, word: str = "hello") -> int:
    Path(path).write_text(f"{os.getpid()} {word}")
    return os.getpid()
