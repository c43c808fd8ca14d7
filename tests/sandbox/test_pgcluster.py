"""The sandbox's own PostgreSQL cluster: initdb, start with server settings, stop, destroy (a real server)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sandbox.pgcluster import PostgresCluster, find_bin_dir, has_extension
from tests.conftest import free_port

BIN_DIR = find_bin_dir()
pytestmark = pytest.mark.skipif(BIN_DIR is None, reason="no PostgreSQL server binaries on this machine")


@pytest.fixture()
def cluster_home() -> Iterator[Path]:
    """Outside pytest's basetemp: every pytest start on the machine resets /tmp/pytest-of-<user> to 0700, and the
    cluster runs as the postgres user when the suite runs as root (tests/conftest.py does the same)."""
    home = Path(tempfile.mkdtemp(prefix="runbooks-pgcluster-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_cluster_loads_pg_stat_statements_and_goes_away(cluster_home: Path) -> None:
    assert BIN_DIR is not None
    assert has_extension(BIN_DIR, "pg_stat_statements")
    cluster = PostgresCluster(
        bin_dir=BIN_DIR,
        pgdata=cluster_home / "pg" / "main",
        host="127.0.0.1",
        port=free_port(),
        log_path=cluster_home / "logs" / "pg.log",
        settings={"shared_preload_libraries": "pg_stat_statements"},
    )
    cluster.start()
    cluster.start()  # a second start leaves the running server alone
    try:
        with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT 42")
            row = conn.execute("SELECT count(*) FROM pg_stat_statements WHERE query = 'SELECT $1'").fetchone()
        assert preload == ("pg_stat_statements",)
        assert row is not None and row[0] >= 1
    finally:
        cluster.destroy()
    assert not cluster.running()
    assert not cluster.pgdata.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.admin_dsn, connect_timeout=2)
