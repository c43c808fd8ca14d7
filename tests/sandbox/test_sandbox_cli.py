"""The whole sandbox through its CLI, as an operator runs it: up, status, a real flow run, down, nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbooks import processes
from sandbox.components import port_open
from sandbox.manager import COMPONENTS
from tests.conftest import drop_database, make_settings


def _processes_holding(path: Path) -> list[int]:
    """Pids with a file open under ``path`` (every sandbox daemon logs there) or it in their environment."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(path) in (proc / "environ").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
                continue
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd).startswith(str(path)):
                    found.append(int(proc.name))
                    break
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_up_status_run_down(tmp_path: Path) -> None:
    import redis

    # its own Redis database: the session-wide sandbox fixture keeps its data in db 13 while this test runs
    session_redis = os.environ.get("RUNBOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    settings = make_settings(tmp_path / "home", redis_url=session_redis.rsplit("/", 1)[0] + "/11")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "RUNBOOKS_"))}
    for field in (
        "home",
        "environment",
        "postgres_admin_dsn",
        "postgres_db",
        "postgres_size",
        "redis_url",
        "redis_size",
        "s3_port",
        "platform_port",
        "receivers_port",
        "prefect_port",
        "k8s_api_port",
        "k8s_etcd_port",
        "k8s_kubelet_port",
        "k8s_metrics_port",
    ):
        env[f"RUNBOOKS_SANDBOX_{field.upper()}"] = str(getattr(settings, field))

    def runbooks(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runbooks.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    redis.Redis.from_url(settings.redis_url).flushdb()
    pids: list[int] = []
    try:
        up = runbooks("sandbox", "up")
        assert up.returncode == 0, up.stderr[-3000:]

        status = runbooks("sandbox", "status", "--json")
        assert status.returncode == 0, status.stdout
        listed = json.loads(status.stdout)
        assert [s["name"] for s in listed] == [c.name for c in COMPONENTS]
        assert all(s["healthy"] and s["address"] for s in listed)

        exports = runbooks("sandbox", "env").stdout
        assert f"export PREFECT_API_URL=http://127.0.0.1:{settings.prefect_port}/api" in exports
        assert settings.home.as_posix() in exports

        # the main job, end to end through the worker, as the README's first command runs it
        run = runbooks("run", "system-health-check", "-p", f"environment={settings.environment}")
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Completed" in run.stderr and f":{settings.prefect_port}/runs/flow-run/" in run.stderr

        records = json.loads((settings.home / "state.json").read_text()).values()
        pids = [int(r["pid"]) for r in records if r.get("pid")]
        pids += [int(pid) for r in records for pid in (r.get("pids") or {}).values()]
        assert len(pids) >= 10  # moto, 2 uvicorns, prefect, worker, etcd, 3 control-plane binaries, node agent
        assert "export KUBECONFIG=" in exports
    finally:
        down = runbooks("sandbox", "down")
        drop_database(settings.postgres_admin_dsn, settings.postgres_db)
        redis.Redis.from_url(settings.redis_url).flushdb()
    assert down.returncode == 0, down.stderr
    assert not any(processes.is_alive(pid) for pid in pids)
    assert _processes_holding(settings.home) == []
    for port in (settings.s3_port, settings.platform_port, settings.receivers_port, settings.prefect_port):
        assert not port_open("127.0.0.1", port)
