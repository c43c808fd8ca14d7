"""Blocks against the real services: clients work, secrets stay secret, bad values are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks.environment import RunbookEnvironment, load_environment
from blocks.platform import PlatformAPI
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase
from kernel.errors import ConfigurationError
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT


async def test_environment_loads_with_every_system(sandbox: Sandbox) -> None:
    env = await load_environment(TEST_ENVIRONMENT)
    assert env.kind == "sandbox" and not env.dry_run_by_default
    assert env.slack is not None and env.pagerduty is not None and env.opsgenie is not None
    async with env.platform.get_client() as client:
        assert (await client.get("/admin/models/config")).status_code == 200
    async with env.postgres.get_client() as conn:
        row = await (await conn.execute("SELECT count(*) FROM users")).fetchone()
        assert row is not None and row[0] > 0
    client = env.redis.get_client()
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    s3 = env.backups.credentials.get_s3_client()
    s3.head_bucket(Bucket=env.backups.bucket_name)


async def test_missing_environment_is_one_clear_error(sandbox: Sandbox) -> None:
    with pytest.raises(ConfigurationError) as info:
        await load_environment("no-such-env")
    assert "runbooks-environment/no-such-env" in str(info.value)
    assert "runbooks blocks apply" in str(info.value)


async def test_unreachable_dsn_names_block_and_field() -> None:
    db = PostgresDatabase(dsn="postgresql://postgres:hunter2@127.0.0.1:1/ai_multimodel", connect_timeout_s=2)
    with pytest.raises(ConfigurationError) as info:
        async with db.get_client():
            pass
    message = str(info.value)
    assert "runbooks-postgresql" in message and "'dsn'" in message and "127.0.0.1:1" in message
    assert "hunter2" not in message
    assert info.value.transient  # a server that does not answer may come back


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        PostgresDatabase(dsn="this is = not a dsn = at all")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        RedisDatabase(url="http://127.0.0.1:6379")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        PlatformAPI(base_url="not-a-url", admin_token="x", status_page_url="http://x")  # type: ignore[arg-type]


def test_secrets_never_in_repr_or_safe_address() -> None:
    db = PostgresDatabase(dsn="postgresql://u:s3cr3t-pw@db:5432/x")  # type: ignore[arg-type]
    cache = RedisDatabase(url="redis://:r3d1s-pw@cache:6379/2")  # type: ignore[arg-type]
    for text in (repr(db), str(db), db.safe_address, repr(cache), cache.safe_address):
        assert "s3cr3t-pw" not in text and "r3d1s-pw" not in text
    assert db.safe_address == "u@db:5432/x"
    assert cache.safe_address == "cache:6379/2"


async def test_saved_environment_keeps_secrets_out_of_the_api(sandbox: Sandbox) -> None:
    from prefect import get_client

    token = sandbox.state.secrets()["platform_admin_token"]
    async with get_client() as client:
        doc = await client.read_block_document_by_name(TEST_ENVIRONMENT, "runbooks-platform-api", include_secrets=False)
    assert token not in str(doc.data)
    env = await RunbookEnvironment.aload(TEST_ENVIRONMENT)
    assert env.platform.admin_token.get_secret_value() == token


async def test_saved_kubernetes_block_keeps_the_token_out_of_the_api(sandbox: Sandbox) -> None:
    """prefect-kubernetes stores the kubeconfig as a plain dict: the flows' bearer token must not be in it."""
    from prefect import get_client

    env = await RunbookEnvironment.aload(TEST_ENVIRONMENT)
    assert env.kubernetes is not None and env.kubernetes.token is not None
    token = env.kubernetes.token.get_secret_value()
    async with get_client() as client:
        for block_type in ("kubernetes-cluster-config", "runbooks-kubernetes"):
            doc = await client.read_block_document_by_name(TEST_ENVIRONMENT, block_type, include_secrets=False)
            assert token not in str(doc.data), block_type
    assert env.kubernetes.clear_credentials_in_config() == []
