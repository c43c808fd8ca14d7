"""Every child process of the project starts here: argument lists (never a shell string), its own process
group (so stopping it leaves nothing behind), a timeout, and output streamed to a log or a callback.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path

import psutil

from kernel.errors import RunbookError


class ProcessError(RunbookError):
    system = "process"
    #: the end of the child's stderr, when it ran and failed (:func:`stream`)
    stderr: str = ""


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
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) pids whose process group is ``pgid``. psutil rather than parsing /proc by hand."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
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


def stream(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    chunk_size: int = 1 << 20,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[bytes, None, None]:
    """Run a command in its own process group and yield its stdout as it comes, in chunks of at most
    ``chunk_size`` bytes (nothing is held in memory beyond one chunk).

    The command must finish within ``timeout_s``. A timeout, a non-zero exit (the message carries the last
    lines of stderr), or the consumer stopping early (an exception while iterating, ``close()`` on the
    generator) stops the whole process group, and so does ``should_stop()`` turning true (checked at least
    every second, even while the command is silent). Close the generator deterministically with
    ``contextlib.closing(stream(...))`` when you may stop before its end.
    """
    name = Path(argv[0]).name
    try:
        proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            bufsize=0,
        )
    except FileNotFoundError as err:
        raise ProcessError(f"cannot run {argv[0]!r}: not found", hint="is it installed and on PATH?") from err
    assert proc.stdout is not None and proc.stderr is not None
    stderr_tail = bytearray()

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for block in iter(lambda: proc.stderr.read(8192), b""):  # type: ignore[union-attr]
            stderr_tail.extend(block)
            del stderr_tail[:-65536]

    drainer = threading.Thread(target=drain_stderr, name=f"{name}-stderr", daemon=True)
    drainer.start()
    deadline = time.monotonic() + timeout_s
    finished = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessError(f"{name} timed out after {timeout_s:.0f}s")
                if should_stop is not None and should_stop():
                    raise ProcessError(f"{name} stopped: its output is no longer wanted")
                if not selector.select(timeout=min(remaining, 1.0)):
                    continue
                chunk = os.read(proc.stdout.fileno(), chunk_size)
                if not chunk:
                    break
                yield chunk
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired as err:
            raise ProcessError(f"{name} timed out after {timeout_s:.0f}s") from err
        finished = True
        drainer.join(timeout=5)
        if proc.returncode != 0:
            lines = stderr_tail.decode(errors="replace").strip().splitlines()
            detail = " / ".join(lines[-3:]) if lines else "no output on stderr"
            how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
            failure = ProcessError(f"{name} {how}: {detail}")
            failure.stderr = "\n".join(lines)
            raise failure
    finally:
        if not finished:
            stop_group(proc.pid, timeout_s=2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        proc.stdout.close()
        drainer.join(timeout=5)
        proc.stderr.close()
