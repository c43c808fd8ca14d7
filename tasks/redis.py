"""Tasks on Redis."""

from __future__ import annotations

import time

import redis.exceptions
from prefect import task
from pydantic import BaseModel

from blocks.redis import RedisDatabase
from runbooks.errors import ConfigurationError, RedisError
from runbooks.retry import retry_on_transient


class RedisHealth(BaseModel):
    address: str
    ping_ms: float
    version: str
    used_memory_bytes: int
    key_count: int


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_on_transient)
async def check_redis(cache: RedisDatabase) -> RedisHealth:
    """``redis-cli ping`` with its latency, plus version, memory and key count."""
    client = cache.get_client()
    try:
        started = time.perf_counter()
        await client.ping()
        ping_ms = (time.perf_counter() - started) * 1000
        info = await client.info()
        keys = await client.dbsize()
    except redis.exceptions.AuthenticationError as err:
        raise ConfigurationError(cache.display_name, "url", f"authentication refused by {cache.safe_address}") from err
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
        raise ConfigurationError(
            cache.display_name,
            "url",
            f"cannot reach {cache.safe_address}: {err}",
            hint="check the host and port, and that Redis is up",
            transient=True,
        ) from err
    except redis.exceptions.RedisError as err:
        raise RedisError(f"Redis at {cache.safe_address} failed: {err}") from err
    finally:
        await client.aclose()
    return RedisHealth(
        address=cache.safe_address,
        ping_ms=round(ping_ms, 2),
        version=info["redis_version"],
        used_memory_bytes=info["used_memory"],
        key_count=keys,
    )
