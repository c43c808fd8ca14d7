"""Apply ``prefect.yaml`` to a Prefect server: the work pools it names, every deployment, then the automations
of :mod:`deployments.automations` (created, or updated in place by name: applying twice changes nothing).

``python -m deployments.apply automations`` applies the automations alone (``deploy_all`` runs it, with the
same environment as ``prefect deploy``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from kernel import processes
from kernel.errors import RunbookError

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


def entrypoints_of_pool(pool: str) -> list[str]:
    """The entrypoints of the deployments on work pool ``pool``, in prefect.yaml's order (what an in-process worker
    preloads, so that an alert's first run does not wait for its flow's import)."""
    out: list[str] = []
    for entry in load_spec().get("deployments") or []:
        if (entry.get("work_pool") or {}).get("name") == pool and entry["entrypoint"] not in out:
            out.append(str(entry["entrypoint"]))
    return out


def work_pool_types() -> dict[str, str]:
    """Pool name -> worker type: ``definitions.work_pool_types`` of prefect.yaml, ``process`` by default."""
    types = (load_spec().get("definitions") or {}).get("work_pool_types") or {}
    return {name: str(types.get(name, "process")) for name in work_pool_names()}


async def ensure_work_pools() -> list[str]:
    """Create the work pools prefect.yaml refers to, each of its worker type.

    A pool of another type (left by an older sandbox) is replaced: a worker only takes runs from a pool of its
    own type. The deployments that point at it are applied again right after (:func:`deploy_all`).
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    # every pool type of ours runs ProcessWorker's job configuration (runbooks-inprocess subclasses it)
    template = ProcessWorker.get_default_base_job_template()
    types = work_pool_types()
    async with get_client() as client:
        for name, pool_type in types.items():
            try:
                existing = await client.read_work_pool(name)
            except ObjectNotFound:
                existing = None
            if existing is not None and existing.type == pool_type:
                continue
            if existing is not None:
                await client.delete_work_pool(name)
            await client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
    return sorted(types)


def deploy_all(env: Mapping[str, str]) -> None:
    """``prefect deploy --all`` from the project directory, with ``env`` (PREFECT_API_URL, ...), then the
    automations (they refer to deployments by id, so they come after)."""
    result = processes.run([prefect_cli(), "--no-prompt", "deploy", "--all"], timeout_s=300, env=env, cwd=PROJECT_DIR)
    if result.returncode != 0:
        tail = " / ".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise RunbookError(f"prefect deploy --all failed: {tail}")
    result = processes.run(
        [sys.executable, "-m", "deployments.apply", "automations"], timeout_s=120, env=env, cwd=PROJECT_DIR
    )
    if result.returncode != 0:
        tail = " / ".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise RunbookError(f"applying the automations failed: {tail}")


def backup_environments() -> list[str]:
    """The environments ``prefect.yaml`` takes daily backups of (its ``daily-backup`` deployments)."""
    found = [
        str((entry.get("parameters") or {}).get("environment"))
        for entry in load_spec().get("deployments") or []
        if str(entry.get("entrypoint", "")).endswith(":daily_backup")
        and (entry.get("parameters") or {}).get("environment")
    ]
    return sorted(set(found))


async def apply_automations(
    environments: list[str] | None = None, *, within: timedelta | None = None
) -> dict[str, UUID]:
    """Create or update (by name) the ``backup-missing-<environment>`` automation of each environment (default:
    :func:`backup_environments`); ``within`` overrides the 26 h window (tests). Returns name → automation id.
    Needs the ``backup-missing`` deployment (``prefect deploy --all`` first)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from deployments.automations import BACKUP_MISSING_DEPLOYMENT, BACKUP_MISSING_WINDOW, backup_missing_automation

    applied: dict[str, UUID] = {}
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(BACKUP_MISSING_DEPLOYMENT)
        except ObjectNotFound as err:
            raise RunbookError(
                f"deployment {BACKUP_MISSING_DEPLOYMENT} not found: the backup-missing automations need it",
                hint="run `prefect deploy --all` (deploy_all) first",
            ) from err
        for environment in backup_environments() if environments is None else environments:
            automation = backup_missing_automation(environment, deployment.id, within=within or BACKUP_MISSING_WINDOW)
            existing = await client.read_automations_by_name(automation.name)
            if existing:
                await client.update_automation(existing[0].id, automation)
                for duplicate in existing[1:]:  # one automation per name: an older copy would alert twice
                    await client.delete_automation(duplicate.id)
                applied[automation.name] = existing[0].id
            else:
                applied[automation.name] = await client.create_automation(automation)
    return applied


async def deployed_names() -> set[str]:
    from prefect import get_client

    async with get_client() as client:
        return {d.name for d in await client.read_deployments()}


def main(argv: list[str]) -> int:
    if argv != ["automations"]:
        print("usage: python -m deployments.apply automations", file=sys.stderr)
        return 2
    for name, automation_id in asyncio.run(apply_automations()).items():
        print(f"automation {name}: {automation_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
