"""The operator's CLI: bad configuration is one clear line naming the block and the field, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from blocks.environment import RunbookEnvironment
from blocks.postgres import PostgresDatabase
from blocks.registry import save_environment
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT


def runbooks(*args: str, sandbox: Sandbox) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "RUNBOOKS_SANDBOX_HOME": str(sandbox.settings.home),
    }
    return subprocess.run(
        [sys.executable, "-m", "runbooks.cli", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


async def _save_variant(name: str, **changes: object) -> None:
    env = await RunbookEnvironment.aload(TEST_ENVIRONMENT)
    env = env.model_copy(update=changes)
    await save_environment(env, name)


def test_check_passes_on_the_sandbox(sandbox: Sandbox) -> None:
    result = runbooks("check", "-e", TEST_ENVIRONMENT, sandbox=sandbox)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 9 and all(line.startswith("ok") for line in lines)  # 8 systems and the backup key


async def test_wrong_token_names_the_platform_block_and_field(sandbox: Sandbox) -> None:
    env = await RunbookEnvironment.aload(TEST_ENVIRONMENT)
    await _save_variant("bad-token", platform=env.platform.model_copy(update={"admin_token": SecretStr("wrong")}))
    result = runbooks("check", "-e", "bad-token", sandbox=sandbox)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1
    assert "'runbooks-platform-api/bad-token', field 'admin_token'" in failing[0]
    assert "401" in failing[0]


async def test_unreachable_dsn_names_the_postgres_block_and_field(sandbox: Sandbox) -> None:
    await _save_variant(
        "bad-dsn",
        postgres=PostgresDatabase(dsn=SecretStr("postgresql://postgres:pw@127.0.0.1:1/x"), connect_timeout_s=2),
    )
    result = runbooks("check", "-e", "bad-dsn", sandbox=sandbox)
    assert result.returncode == 2
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and "'runbooks-postgresql/bad-dsn', field 'dsn'" in failing[0]
    assert "pw@" not in result.stdout + result.stderr


def test_missing_block_is_one_line(sandbox: Sandbox) -> None:
    result = runbooks("check", "-e", "does-not-exist", sandbox=sandbox)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: block 'runbooks-environment/does-not-exist': no such block (run `runbooks blocks apply` for the "
        "sandbox, or create it in the Prefect UI)"
    ]


def test_prefect_unreachable_is_one_line(sandbox: Sandbox) -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    result = subprocess.run(
        [sys.executable, "-m", "runbooks.cli", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Prefect API")


def test_bad_param_syntax(sandbox: Sandbox) -> None:
    result = runbooks("run", "system-health-check", "-p", "novalue", sandbox=sandbox)
    assert result.returncode == 2 and "'--param'" in result.stderr
