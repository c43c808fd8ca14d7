"""Tasks on PostgreSQL (psycopg 3)."""

from __future__ import annotations

import psycopg
from pydantic import BaseModel

from blocks.postgres import PostgresDatabase
from kernel.errors import PostgresError
from kernel.retry import read_task


class PostgresHealth(BaseModel):
    address: str
    server_version: str
    database_size_bytes: int
    connections_by_state: dict[str, int]


@read_task
async def check_postgres(db: PostgresDatabase) -> PostgresHealth:
    """``SELECT NOW(), COUNT(*) FROM pg_stat_activity`` and connections by state, as the runbook does."""
    async with db.get_client() as conn:
        try:
            version = await (await conn.execute("SELECT current_setting('server_version')")).fetchone()
            size = await (await conn.execute("SELECT pg_database_size(current_database())")).fetchone()
            states = await (
                await conn.execute("SELECT coalesce(state, 'background'), count(*) FROM pg_stat_activity GROUP BY 1")
            ).fetchall()
        except psycopg.Error as err:
            raise PostgresError(f"health query on {db.safe_address} failed: {err}") from err
    assert version is not None and size is not None
    return PostgresHealth(
        address=db.safe_address,
        server_version=version[0],
        database_size_bytes=size[0],
        connections_by_state={state: count for state, count in states},
    )
