"""PostgreSQL client tools (pg_dump, pg_restore) run through :mod:`kernel.processes`.

Argument lists only; the password goes to the child in ``PGPASSWORD`` (never on its command line, where
``ps`` would show it); each run has a timeout and its own process group. The binaries come from
``$RUNBOOKS_PG_BIN_DIR`` when set (the embedded server's matching client tools), else from PATH. pg_dump
must be at least the server's major version.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Generator, Mapping
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from blocks.postgres import PostgresDatabase
from kernel import processes
from kernel.errors import PostgresError

PG_BIN_DIR_ENV = "RUNBOOKS_PG_BIN_DIR"

#: stderr fragments of pg_dump/pg_restore that mean the connection broke: another try may succeed.
_TRANSIENT = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection to server",
    "could not receive data",
    "could not send data",
    "connection refused",
    "ssl syscall",
    "the database system is starting up",
    "the database system is shutting down",
    "timeout expired",
    "canceling statement due to lock timeout",
)
#: ... unless one of these says trying again cannot help.
_PERMANENT = ("password authentication failed", "permission denied", "does not exist", "version mismatch")


class PgToolError(PostgresError):
    """pg_dump or pg_restore failed; ``str()`` carries the tool's own last lines."""


def pg_binary(tool: str) -> str:
    """Path of ``tool`` (pg_dump, pg_restore): ``$RUNBOOKS_PG_BIN_DIR/<tool>`` if that is set, else PATH."""
    bin_dir = os.environ.get(PG_BIN_DIR_ENV)
    if bin_dir:
        path = Path(bin_dir) / tool
        if not path.exists():
            raise PgToolError(f"{tool} not found in {PG_BIN_DIR_ENV}={bin_dir}", hint="point it at a PostgreSQL bin")
        return str(path)
    found = shutil.which(tool)
    if not found:
        raise PgToolError(
            f"{tool} not found on PATH",
            hint=f"install the PostgreSQL client tools (postgresql-client) or set {PG_BIN_DIR_ENV}",
        )
    return found


def tool_version(tool: str) -> str:
    """``pg_dump --version`` → ``"15.20"``."""
    result = processes.run([pg_binary(tool), "--version"], timeout_s=30)
    match = re.search(r"(\d+(?:\.\d+)+|\d+devel|\d+beta\d*)", result.stdout)
    if result.returncode != 0 or not match:
        raise PgToolError(f"{tool} --version failed: {(result.stdout + result.stderr).strip()[:200]}")
    return match.group(1)


def libpq_target(db: PostgresDatabase, **overrides: str | int) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, child environment with ``PGPASSWORD``) for ``db`` with ``overrides``."""
    info = conninfo_to_dict(db.conninfo(**overrides))
    password = info.pop("password", None)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = str(password)
    env.setdefault("PGCONNECT_TIMEOUT", str(db.connect_timeout_s))
    return make_conninfo("", **info), env


def _failure(tool: str, db: PostgresDatabase, err: processes.ProcessError) -> PgToolError:
    """One line from the tool's stderr: its ``error:`` lines and the server's own message, classified."""
    stderr = err.stderr or str(err)
    text = stderr.lower()
    transient = any(s in text for s in _TRANSIENT) and not any(s in text for s in _PERMANENT)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    server = [line.split("Error message from server:", 1)[1].strip() for line in lines if "from server:" in line]
    detail = "; ".join(dict.fromkeys(errors + server)) if errors else err.message
    hint = None
    if "version mismatch" in text:
        hint = f"use client tools at least as new as the server: set {PG_BIN_DIR_ENV}"
    elif transient:
        hint = f"the connection to {db.safe_address} broke; the step can be retried"
    return PgToolError(f"{tool} failed on {db.safe_address}: {detail}", hint=hint, transient=transient)


def dump_stream(
    db: PostgresDatabase,
    *,
    snapshot: str | None = None,
    schema_only: bool = False,
    timeout_s: float = 6 * 3600,
    lock_wait_timeout_s: int = 120,
    chunk_size: int = 2**20,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[bytes, None, None]:
    """``pg_dump`` of ``db`` streamed from its stdout: custom format, uncompressed (``-Fc -Z0``: we compress
    the stream ourselves), or plain SQL with ``schema_only`` (the seed's ``pg_dump -s``).

    ``snapshot`` (from ``pg_export_snapshot()``) makes the dump see exactly what that transaction sees.
    Close the generator (``contextlib.closing``) when stopping early, or make ``should_stop()`` true: pg_dump
    is then killed.
    """
    conninfo, env = libpq_target(db)
    argv = [pg_binary("pg_dump"), "--no-password", f"--lock-wait-timeout={lock_wait_timeout_s * 1000}"]
    if schema_only:
        argv += ["--format=plain", "--schema-only"]
    else:
        argv += ["--format=custom", "--compress=0"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    argv.append(f"--dbname={conninfo}")
    chunks = processes.stream(argv, timeout_s=timeout_s, env=env, chunk_size=chunk_size, should_stop=should_stop)
    try:
        yield from chunks
    except processes.ProcessError as err:
        raise _failure("pg_dump", db, err) from err
    finally:
        chunks.close()


def restore_archive(
    db: PostgresDatabase,
    archive: Path,
    *,
    dbname: str | None = None,
    jobs: int = 2,
    clean: bool = False,
    timeout_s: float = 6 * 3600,
    extra_env: Mapping[str, str] | None = None,
    no_owner: bool = False,
    no_privileges: bool = False,
) -> str:
    """``pg_restore -j <jobs> --exit-on-error`` of a custom-format ``archive`` into ``dbname`` (default: the
    block's database) on ``db``'s server; ``clean`` drops each object first (``--clean --if-exists``);
    ``no_owner`` / ``no_privileges`` leave out the dump's ALTER OWNER / GRANT and REVOKE (``--no-owner``,
    ``--no-privileges``: the objects belong to the block's user, for a server without the dump's roles).
    Returns pg_restore's stderr (warnings); a failure is a :class:`PgToolError` with its last lines."""
    overrides: dict[str, str | int] = {"dbname": dbname} if dbname else {}
    conninfo, env = libpq_target(db, **overrides)
    env.update(extra_env or {})
    argv = [pg_binary("pg_restore"), "--no-password", "--exit-on-error", f"--jobs={jobs}", f"--dbname={conninfo}"]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += [*(["--no-owner"] if no_owner else []), *(["--no-privileges"] if no_privileges else [])]
    argv.append(str(archive))
    try:
        result = processes.run(argv, timeout_s=timeout_s, env=env)
    except processes.ProcessError as err:
        raise _failure("pg_restore", db, err) from err
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        failure = processes.ProcessError(f"pg_restore exited {result.returncode}: " + " / ".join(lines[-3:]))
        raise _failure("pg_restore", db, failure)
    return result.stderr
