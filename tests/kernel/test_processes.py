"""Child processes: own process group, and nothing left behind after a stop or a timeout."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
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


# ----------------------------------------------------------------------------------------------------------
# stream: stdout in chunks, the group killed on timeout, early close or stop

STREAMS_AND_SPAWNS = "import subprocess, sys, time; subprocess.Popen(['sleep', '301']); sys.stdout.write('x' * 10); sys.stdout.flush(); time.sleep(300)"  # noqa: E501


def _no_sleeper() -> bool:
    found = subprocess.run(["pgrep", "-f", "^sleep 301$"], capture_output=True, text=True, check=False)
    return found.stdout.strip() == ""


def test_stream_yields_stdout_and_reports_failure_with_stderr() -> None:
    code = "import sys; sys.stdout.buffer.write(b'a' * 300000); sys.stderr.write('boom: disk full\\n'); sys.exit(3)"
    received = bytearray()
    with pytest.raises(processes.ProcessError, match="exited 3: boom: disk full"):
        for chunk in processes.stream([sys.executable, "-c", code], timeout_s=30, chunk_size=65536):
            assert len(chunk) <= 65536
            received += chunk
    assert bytes(received) == b"a" * 300000


def test_stream_timeout_and_early_close_kill_the_group() -> None:
    with pytest.raises(processes.ProcessError, match="timed out"):
        for _ in processes.stream([sys.executable, "-c", STREAMS_AND_SPAWNS], timeout_s=1.5):
            pass
    assert _no_sleeper()
    with contextlib.closing(processes.stream([sys.executable, "-c", STREAMS_AND_SPAWNS], timeout_s=60)) as chunks:
        assert next(chunks) == b"x" * 10
    assert _no_sleeper()


def test_stream_should_stop_kills_a_silent_command() -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(processes.ProcessError, match="no longer wanted"):
        for _ in processes.stream([sys.executable, "-c", STREAMS_AND_SPAWNS], timeout_s=60, should_stop=stop.is_set):
            pass
    assert time.monotonic() - started < 5
    assert _no_sleeper()
