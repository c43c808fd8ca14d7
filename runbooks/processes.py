"""Every child process of the project starts here: argument lists (never a shell string), its own process
group (so stopping it leaves nothing behind), a timeout, and output streamed to a log or a callback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from runbooks.errors import RunbookError


class ProcessError(RunbookError):
    system = "process"


def spawn_daemon(
    argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start a long-running child in its own session; stdout and stderr go to ``log_path``. Returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as err:
            raise ProcessError(f"cannot start {argv[0]!r}: not found", hint="is it installed and on PATH?") from err
    return proc.pid


def is_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def stop_group(pid: int, *, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left after ``timeout_s``."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pid, os.WNOHANG)
            if not group_members(pid):
                return
            time.sleep(0.1)
    if group_members(pid):
        raise ProcessError(f"process group {pid} survived SIGKILL", hint="inspect it with `ps -g {pid}`")


def run(
    argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion in its own process group; on timeout the whole group is killed."""
    try:
        proc = subprocess.Popen(  # noqa: S603
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as err:
        raise ProcessError(f"cannot run {argv[0]!r}: not found", hint="is it installed and on PATH?") from err
    try:
        out, err_out = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        stop_group(proc.pid, timeout_s=2)
        proc.communicate()
        raise ProcessError(f"{argv[0]} timed out after {timeout_s:.0f}s") from err
    except BaseException:
        stop_group(proc.pid, timeout_s=2)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err_out)
