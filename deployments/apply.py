"""Apply ``prefect.yaml`` to a Prefect server: the work pools it names, then every deployment."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from runbooks import processes
from runbooks.errors import RunbookError

PROJECT_DIR = Path(__file__).resolve().parent.parent


def prefect_cli() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    return spec


def deployment_names() -> list[str]:
    return [str(entry["name"]) for entry in load_spec().get("deployments") or []]


def work_pool_names() -> list[str]:
    pools = (load_spec().get("definitions") or {}).get("work_pools") or {}
    return sorted({str(pool["name"]) for pool in pools.values()})


async def ensure_work_pools() -> list[str]:
    """Create the process work pools prefect.yaml refers to (existing ones are left as they are)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    names = work_pool_names()
    async with get_client() as client:
        for name in names:
            try:
                await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                pass
    return names


def deploy_all(env: Mapping[str, str]) -> None:
    """``prefect deploy --all`` from the project directory, with ``env`` (PREFECT_API_URL, ...)."""
    result = processes.run([prefect_cli(), "--no-prompt", "deploy", "--all"], timeout_s=300, env=env, cwd=PROJECT_DIR)
    if result.returncode != 0:
        tail = " / ".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise RunbookError(f"prefect deploy --all failed: {tail}")


async def deployed_names() -> set[str]:
    from prefect import get_client

    async with get_client() as client:
        return {d.name for d in await client.read_deployments()}
