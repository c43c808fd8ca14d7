"""Child processes: own process group, and nothing left behind after a stop or a timeout."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kernel import processes

SPAWNS_A_CHILD = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"


def test_stop_group_kills_children(tmp_path: Path) -> None:
    pid = processes.spawn_daemon([sys.executable, "-c", SPAWNS_A_CHILD], log_path=tmp_path / "log")
    deadline = time.monotonic() + 10
    while len(processes.group_members(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes.group_members(pid)) == 2
    processes.stop_group(pid, timeout_s=5)
    assert processes.group_members(pid) == []
    assert not processes.is_alive(pid)


def test_run_timeout_kills_the_group() -> None:
    # a grandchild with a command line of its own (no other process on the machine has it)
    marker = f"300.{uuid.uuid4().int % 10**9:09d}"
    spawns = f"import subprocess, time; subprocess.Popen(['sleep', '{marker}']); time.sleep(300)"
    with pytest.raises(processes.ProcessError, match="timed out"):
        processes.run([sys.executable, "-c", spawns], timeout_s=1)
    # the grandchild must be gone too (the kernel may take a moment to tear a killed process down)
    deadline = time.monotonic() + 5
    while True:
        leftover = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True, check=False)
        if not leftover.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert leftover.stdout.strip() == ""


def test_run_missing_binary_is_clear() -> None:
    with pytest.raises(processes.ProcessError, match="not found"):
        processes.run(["/nonexistent/tool"], timeout_s=5)
