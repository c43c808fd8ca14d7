"""A PostgreSQL cluster the sandbox owns: ``initdb``, start, stop, from the machine's PostgreSQL binaries.

The sandbox needs servers it can configure: one that really loads ``pg_stat_statements`` (a server setting,
``shared_preload_libraries``, that needs a restart, so never something to change on a machine's shared server),
and a second, independent server as the disaster-recovery target. Each is a data directory under the sandbox's
home, a port of its own, and the machine's binaries (Debian's ``postgresql`` package carries the contrib
extensions). pgserver's embedded build has no ``pg_stat_statements``, so it stays the fallback of last resort.

PostgreSQL refuses to run as root: when the sandbox runs as root, the cluster runs as the ``postgres`` OS user
(Debian's package creates it), the data directory is handed to it, and its ancestors get search permission.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kernel import processes
from kernel.errors import SandboxError

#: the OS user a root sandbox runs its clusters as
CLUSTER_OS_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries on the machine (``initdb`` and ``pg_ctl``), or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = processes.run([pg_config, "--bindir"], timeout_s=10).stdout.strip()
        except processes.ProcessError:
            out = ""
        if out:
            candidates.append(Path(out))
    lib = Path("/usr/lib/postgresql")
    if lib.is_dir():

        def version(p: Path) -> tuple[int, ...]:
            return tuple(int(x) for x in re.findall(r"\d+", p.name)) or (0,)

        candidates += [v / "bin" for v in sorted(lib.iterdir(), key=version, reverse=True)]
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def has_extension(bin_dir: Path, name: str) -> bool:
    """Whether the server of ``bin_dir`` ships the extension ``name`` (its control file is installed)."""
    try:
        share = processes.run([str(bin_dir / "pg_config"), "--sharedir"], timeout_s=10).stdout.strip()
    except processes.ProcessError:
        share = ""
    roots = [Path(share)] if share else []
    roots.append(Path("/usr/share/postgresql") / bin_dir.parent.name)
    return any((root / "extension" / f"{name}.control").is_file() for root in roots)


@dataclass
class PostgresCluster:
    """One cluster: its binaries, data directory, address and server settings (``-c name=value``)."""

    bin_dir: Path
    pgdata: Path
    host: str
    port: int
    log_path: Path
    settings: Mapping[str, str] = field(default_factory=dict)
    superuser: str = "postgres"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/postgres"

    @property
    def socket_dir(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}-socket"

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["runuser", "-u", CLUSTER_OS_USER, "--", *argv]

    def _hand_over(self, path: Path) -> None:
        """Give ``path`` to the cluster's OS user and let it reach it (search permission on the ancestors)."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam(CLUSTER_OS_USER)
        except KeyError as err:
            raise SandboxError(
                f"postgres cluster: running as root and there is no {CLUSTER_OS_USER!r} OS user to run it as",
                hint="install Debian's postgresql package (it creates the user), or run the sandbox as a user",
            ) from err
        os.chown(path, user.pw_uid, user.pw_gid)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    def _run(self, argv: Sequence[str], *, timeout_s: float, what: str) -> str:
        result = processes.run(self._as_owner(argv), timeout_s=timeout_s, env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise SandboxError(
                f"postgres cluster on port {self.port}: {what} failed: {' | '.join(tail)}",
                hint=f"see {self.log_path}",
            )
        return result.stdout

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def ensure_initialized(self) -> None:
        """``initdb`` once (trust authentication on loopback, UTF-8); a second call does nothing."""
        if self.initialized():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        self._hand_over(self.pgdata)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]
        self._run(argv, timeout_s=120, what="initdb")

    def running(self) -> bool:
        """Whether the server runs: ``pg_ctl status`` exits 0 (running) or 3 (not running); anything else (4: the
        data directory is out of the OS user's reach) is an error, never "not running", which would leave a server
        behind."""
        if not self.initialized():
            return False
        result = processes.run(
            self._as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "status"]), timeout_s=10
        )
        if result.returncode in (0, 3):
            return result.returncode == 0
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise SandboxError(
            f"postgres cluster on port {self.port}: pg_ctl status failed ({result.returncode}): {' '.join(tail)}",
            hint=f"the {CLUSTER_OS_USER} OS user must reach {self.pgdata} (search permission on every parent)",
        )

    def start(self) -> None:
        """Start the server (waits until it accepts connections); a running one is left alone."""
        self.ensure_initialized()
        if self.running():
            return
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.socket_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        self._hand_over(self.log_path)
        options = {
            "port": str(self.port),
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",  # a sandbox: durability across power loss is not what it tests
            **self.settings,
        }
        server_opts = " ".join(f"-c {name}={value}" for name, value in options.items())
        argv = [
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_path),
            "-o",
            server_opts,
            "-w",
            "-t",
            "90",
            "start",
        ]
        self._run(argv, timeout_s=120, what="start")

    def stop(self) -> None:
        """Stop the server (fast mode); one that is not running is fine."""
        if not self.running():
            return
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            timeout_s=60,
            what="stop",
        )

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
