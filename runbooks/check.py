"""``runbooks check``: prove every block of an environment works, one line each; a wrong field is named."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from blocks.environment import RunbookEnvironment, load_environment
from kernel.errors import ConfigurationError, PlatformAPIError, PlatformAuthError, RunbookError
from tasks._http import platform_request


@dataclass(frozen=True)
class BlockCheck:
    block: str
    ok: bool
    detail: str


async def _platform(env: RunbookEnvironment) -> str:
    name = env.platform.display_name
    try:
        async with env.platform.get_client() as client:
            await platform_request(client, "GET", "/admin/models/config")
    except PlatformAuthError as err:
        raise ConfigurationError(
            name,
            "admin_token",
            f"refused by {env.platform.base_url} ({err.status_code})",
            hint="set the platform's current admin token",
        ) from err
    except PlatformAPIError as err:
        if err.status_code is None:
            raise ConfigurationError(
                name, "base_url", f"{env.platform.base_url} does not answer", transient=True
            ) from err
        raise
    return f"{env.platform.base_url} (admin token accepted)"


async def _postgres(env: RunbookEnvironment) -> str:
    async with env.postgres.get_client() as conn:
        await conn.execute("SELECT 1")
    return env.postgres.safe_address


async def _redis(env: RunbookEnvironment) -> str:
    from tasks.redis import check_redis

    health = await check_redis.fn(env.redis)
    return f"{health.address} (Redis {health.version})"


async def _s3(env: RunbookEnvironment) -> str:
    from tasks.storage import check_bucket

    bucket = await check_bucket.fn(env.backups)
    return f"s3://{bucket.bucket} at {bucket.endpoint}"


async def _kubernetes(env: RunbookEnvironment) -> str:
    from kubernetes_asyncio.client.exceptions import ApiException

    cluster = env.require_kubernetes()
    try:
        async with cluster.get_client("core") as core:
            pods = await core.list_namespaced_pod(cluster.namespace, limit=500)
    except ApiException as err:
        field = "credentials" if err.status in (401, 403) else "namespace"
        raise ConfigurationError(
            cluster.display_name,
            field,
            f"Kubernetes API answered {err.status} {err.reason}",
            hint="check the kubeconfig's token and its RBAC",
        ) from err
    except OSError as err:  # aiohttp's connection errors are OSErrors
        raise ConfigurationError(
            cluster.display_name, "credentials", f"API server unreachable: {err}", transient=True
        ) from err
    detail = f"namespace {cluster.namespace!r}: {len(pods.items)} pods"
    clear = cluster.clear_credentials_in_config()
    if clear:  # works, but the UI and the API show these in clear
        detail += f"; WARNING stored in clear: {', '.join(clear)} (move a token to the block's `token` field)"
    return detail


async def _backup_encryption(env: RunbookEnvironment) -> str:
    key = env.require_backup_encryption()  # none: a ConfigurationError naming the environment's field
    key.master_key()  # 32 bytes, or a ConfigurationError naming the field
    return f"key {key.key_id}, fingerprint {key.fingerprint}"


async def _url(block_name: str, field: str, url: str) -> str:
    """Notification endpoints: we must not send anything, so only check that the host answers."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.head(url)
    except httpx.TransportError as err:
        raise ConfigurationError(
            block_name, field, f"host does not answer: {type(err).__name__}", transient=True
        ) from err
    return "reachable"


def _probes(env: RunbookEnvironment) -> dict[str, Callable[[], Awaitable[str]]]:
    probes: dict[str, Callable[[], Awaitable[str]]] = {
        env.platform.display_name: lambda: _platform(env),
        env.postgres.display_name: lambda: _postgres(env),
        env.redis.display_name: lambda: _redis(env),
        env.backups.get_block_type_slug(): lambda: _s3(env),
    }
    if env.kubernetes is not None:
        probes[env.kubernetes.display_name] = lambda: _kubernetes(env)
    if env.kubernetes is not None or env.backup_encryption is not None:  # Secrets are backed up only encrypted
        name = env.backup_encryption.display_name if env.backup_encryption else f"{env.display_name} backup_encryption"
        probes[name] = lambda: _backup_encryption(env)
    slack, pagerduty, opsgenie = env.slack, env.pagerduty, env.opsgenie
    if slack is not None:
        probes[slack.display_name] = lambda: _url(slack.display_name, "api_url", str(slack.api_url))
    if pagerduty is not None:
        probes[pagerduty.display_name] = lambda: _url(pagerduty.display_name, "events_url", str(pagerduty.events_url))
    if opsgenie is not None:
        probes[opsgenie.display_name] = lambda: _url(opsgenie.display_name, "api_url", str(opsgenie.api_url))
    return probes


async def check_environment(name: str) -> list[BlockCheck]:
    env = await load_environment(name)
    probes = _probes(env)

    async def one(block: str, probe: Callable[[], Awaitable[str]]) -> BlockCheck:
        try:
            return BlockCheck(block, True, await probe())
        except RunbookError as err:
            return BlockCheck(block, False, str(err))

    return list(await asyncio.gather(*(one(block, probe) for block, probe in probes.items())))
