"""A compromised key's replacement, issued exactly once however often the rotation is re-run.

The new key's value goes from the platform's answer straight into a Prefect ``Secret`` block
(``replacement-key-<old key id>``, JSON ``{"api_key_id", "api_key"}``) for the key's owner to collect; it is
registered with :mod:`kernel.redact` the moment it arrives, and never logged, returned, put in an artifact or an
event. Re-running is safe at every step, because the platform and the block are the record:

- a live replacement (named ``<name> (replaces <old id>)``) whose id the block holds: done, nothing issued;
- live replacements the block does not hold (a run died between the platform's answer and the block): their value
  is lost, so they are revoked, and one key is issued and stored;
- none: one key is issued and stored.

Two runs never rotate one key at once: a lock in the environment's Redis (``SET NX EX``, so a dead worker's lock
ends by itself) is held around the read-issue-store steps.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, Field, SecretStr

from blocks.platform import PlatformAPI
from blocks.redis import RedisDatabase
from kernel.errors import RunbookError
from kernel.redact import register_secret
from kernel.retry import idempotent_task, read_task
from tasks import platform as api

LOCK_PREFIX = "runbooks:lock:rotate:"


class Rotation(BaseModel):
    """What the rotation did (never the key's value)."""

    old_key_id: str
    new_key_id: str
    block: str
    issued: bool = Field(description="False when a re-run found the rotation already done")
    orphans_revoked: list[str] = Field(default_factory=list)


def replacement_name(name: str, old_key_id: str) -> str:
    return f"{name} (replaces {old_key_id})"


def secret_block_name(old_key_id: str) -> str:
    """A block name Prefect accepts (lowercase letters, digits, dashes)."""
    return "replacement-key-" + re.sub(r"[^a-z0-9-]+", "-", old_key_id.lower()).strip("-")


@asynccontextmanager
async def rotation_lock(
    redis: RedisDatabase, old_key_id: str, *, ttl_s: int = 60, wait_s: float = 120
) -> AsyncIterator[None]:
    """Hold ``runbooks:lock:rotate:<old id>`` (SET NX EX ``ttl_s``), waiting up to ``wait_s`` for another run."""
    name, token = LOCK_PREFIX + old_key_id, uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    async with redis.get_client() as client:
        while not await client.set(name, token, nx=True, ex=ttl_s):
            if time.monotonic() > deadline:
                raise RunbookError(
                    f"another run has been rotating key {old_key_id} for more than {wait_s:.0f}s",
                    hint="let it finish, or delete the Redis key " + name + " if no run is alive",
                    transient=True,
                )
            await asyncio.sleep(0.5)
        try:
            yield
        finally:
            held = await client.get(name)
            if held is not None and (held.decode() if isinstance(held, bytes) else held) == token:
                await client.delete(name)


@read_task
async def read_stored_key_id(block: str) -> str | None:
    """The key id the Secret block holds, or None when there is no such block."""
    from prefect.blocks.system import Secret

    try:
        secret: Secret[Any] = await Secret.aload(block)
    except ValueError:
        return None
    value: Any = secret.get()
    return str(value.get("api_key_id")) if isinstance(value, dict) else None


@idempotent_task
async def store_key(block: str, key_id: str, value: SecretStr) -> str:
    """Save the new key in the Secret block ``block`` (overwriting): what the owner collects."""
    from prefect.blocks.system import Secret

    secret: Secret[Any] = Secret(value={"api_key_id": key_id, "api_key": value.get_secret_value()})
    await secret.asave(block, overwrite=True)
    return block


async def rotate_key(
    platform: PlatformAPI, redis: RedisDatabase, old_key_id: str, user_id: str, name: str, permissions: list[str]
) -> Rotation:
    """Exactly one live replacement of ``old_key_id`` for ``user_id``, its value in the Secret block."""
    block, wanted = secret_block_name(old_key_id), replacement_name(name, old_key_id)
    async with rotation_lock(redis, old_key_id):
        live = [k for k in await api.list_api_keys(platform, user_id) if k.name == wanted and k.revoked_at is None]
        stored = await read_stored_key_id(block)
        kept = next((k for k in live if k.id == stored), None)
        orphans = [k.id for k in live if kept is None or k.id != kept.id]
        for orphan in orphans:  # issued by a run that died before storing it: nobody can collect its value
            await api.revoke_api_key(platform, orphan)
        if kept is not None:
            return Rotation(
                old_key_id=old_key_id, new_key_id=kept.id, block=block, issued=False, orphans_revoked=orphans
            )
        issued = await api.create_api_key(platform, user_id, wanted, permissions)
        register_secret(issued.secret.get_secret_value())
        await store_key(block, issued.key.id, issued.secret)
        return Rotation(
            old_key_id=old_key_id, new_key_id=issued.key.id, block=block, issued=True, orphans_revoked=orphans
        )
