"""pg_restore through :mod:`tasks.pgtools` against the machine's PostgreSQL: a dump whose owner role and grantee are
missing on the server restores with ``no_owner`` / ``no_privileges`` (what disaster-recovery passes), and fails
without them. Databases and roles are named per run and dropped afterwards."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from blocks.postgres import PostgresDatabase
from tasks import pgtools
from tasks.pgtools import PgToolError

ADMIN_DSN = os.environ.get("RUNBOOKS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin(sql: str, dbname: str = "postgres") -> None:
    with psycopg.connect(ADMIN_DSN, dbname=dbname, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def test_a_dump_owned_by_a_missing_role_restores_with_no_owner(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    owner, reader, source, target = f"rb_owner_{run}", f"rb_reader_{run}", f"rb_src_{run}", f"rb_dst_{run}"
    archive = tmp_path / "db.dump"
    try:
        admin(f"CREATE ROLE {owner}")
        admin(f"CREATE ROLE {reader}")
        admin(f"CREATE DATABASE {source}")
        admin(
            f"CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 10); "
            f"ALTER TABLE orders OWNER TO {owner}; GRANT SELECT ON orders TO {reader}",
            source,
        )
        dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=source)
        subprocess.run([pgtools.pg_binary("pg_dump"), "-Fc", "-f", str(archive), dsn], check=True, timeout=60)
        admin(f"DROP DATABASE {source}")
        admin(f"DROP ROLE {owner}")  # the recovery server has neither role
        admin(f"DROP ROLE {reader}")
        admin(f"CREATE DATABASE {target}")
        db = PostgresDatabase(dsn=psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=target))  # type: ignore[arg-type]

        with pytest.raises(PgToolError):
            pgtools.restore_archive(db, archive, jobs=1)
        admin(f"DROP DATABASE {target}")
        admin(f"CREATE DATABASE {target}")
        pgtools.restore_archive(db, archive, jobs=1, no_owner=True, no_privileges=True)

        query = (
            "SELECT count(*), pg_get_userbyid(relowner) = current_user "
            "FROM orders, pg_class WHERE relname = 'orders' GROUP BY 2"
        )
        check = subprocess.run(
            ["psql", "-X", "-A", "-t", "-d", db.conninfo(), "-c", query],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert check.stdout.strip() == "10|t"  # every row, owned by the user that restored it
    finally:
        for name in (source, target):
            admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for role in (owner, reader):
            admin(f"DROP ROLE IF EXISTS {role}")
