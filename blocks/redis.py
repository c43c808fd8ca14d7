"""Redis: a URL held as a secret (it may carry a password)."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from pydantic import Field, SecretStr, field_validator

from blocks._base import RunbookBlock


class RedisDatabase(RunbookBlock):
    """A Redis server (one logical database) reached by URL.

    Example:
        ```python
        from blocks.redis import RedisDatabase
        cache = RedisDatabase.load("BLOCK_NAME")
        client = cache.get_client()
        await client.ping()
        ```
    """

    _block_type_name = "Runbooks Redis"

    url: SecretStr = Field(description="Redis URL, e.g. redis://:password@host:6379/0.")
    socket_timeout_s: float = Field(default=5.0, gt=0, le=120, description="Socket timeout in seconds.")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def safe_address(self) -> str:
        """``host:port/db``: what logs may show."""
        parts = urlsplit(self.url.get_secret_value())
        return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"

    def get_client(self) -> aioredis.Redis:
        """An asyncio Redis client; close it with ``await client.aclose()``."""
        return aioredis.Redis.from_url(
            self.url.get_secret_value(),
            socket_timeout=self.socket_timeout_s,
            socket_connect_timeout=self.socket_timeout_s,
        )
