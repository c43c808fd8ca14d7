"""Quiet the application before a restore over its live database, and bring it back after.

A :data:`QuiesceHook` is called right before ``pg_restore`` runs over the live database; it may return a
coroutine function that undoes what it did once the restore is verified (run in reverse order). It is not undone
when the restore fails: the API stays down on a database that is not what it should be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from logging import Logger, LoggerAdapter
from typing import Any

from blocks.environment import RunbookEnvironment
from tasks.backup.manifest import BackupError

RunLogger = Logger | LoggerAdapter[Any]
ResumeApi = Callable[[], Awaitable[None]]
QuiesceHook = Callable[[RunbookEnvironment, RunLogger], Awaitable[ResumeApi | None]]


async def scale_api_to_zero(env: RunbookEnvironment, logger: RunLogger) -> ResumeApi | None:
    """The seed's ``kubectl scale deployment ai-multimodel-api --replicas=0`` (the environment's
    ``api_deployment``); returns what scales it back to the previous count (and waits for the rollout), run after
    the restore succeeded."""
    from tasks import kubernetes as k8s

    if env.kubernetes is None:
        logger.warning("No Kubernetes cluster configured: make sure nothing writes to the database during the restore")
        return None
    cluster = env.kubernetes
    api = env.api_deployment
    scaled = await k8s.scale_deployment(cluster, api, 0)
    logger.info("scaled %s from %d to 0 replicas", api, scaled.previous_replicas)
    deadline = time.monotonic() + 180
    while await k8s.list_pods(cluster, label_selector=f"app={api}"):
        if time.monotonic() > deadline:
            raise BackupError(
                f"{api} pods still running 180 s after scaling to 0",
                hint="find what keeps them (an HPA?) before restoring",
                transient=False,
            )
        await asyncio.sleep(1)

    async def resume() -> None:
        await k8s.scale_deployment(cluster, api, scaled.previous_replicas)
        await k8s.rollout_status(cluster, api, timeout_s=300)
        logger.info("scaled %s back to %d replicas", api, scaled.previous_replicas)

    return resume
