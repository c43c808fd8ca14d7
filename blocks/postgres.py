"""PostgreSQL: a DSN (psycopg 3) held as a secret."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr, field_validator

from blocks._base import RunbookBlock
from kernel.errors import ConfigurationError


class PostgresDatabase(RunbookBlock):
    """A PostgreSQL database reached through a libpq DSN (the password, if any, lives in the DSN).

    Example:
        ```python
        from blocks.postgres import PostgresDatabase
        db = PostgresDatabase.load("BLOCK_NAME")
        async with db.get_client() as conn:
            await conn.execute("SELECT 1")
        ```
    """

    _block_type_name = "Runbooks PostgreSQL"

    dsn: SecretStr = Field(
        description="libpq connection string or URL, e.g. postgresql://user:pass@host:5432/ai_multimodel."
    )
    connect_timeout_s: int = Field(default=5, ge=1, le=120, description="Connection timeout in seconds.")

    @field_validator("dsn")
    @classmethod
    def _parse(cls, value: SecretStr) -> SecretStr:
        try:
            conninfo_to_dict(value.get_secret_value())
        except psycopg.ProgrammingError as err:
            raise ValueError("not a valid libpq DSN or postgresql:// URL") from err
        return value

    def conninfo(self, **overrides: str | int) -> str:
        """The DSN with overrides applied (e.g. another ``dbname``); contains the password: never log it."""
        return make_conninfo(self.dsn.get_secret_value(), **overrides)

    @property
    def dbname(self) -> str:
        return str(conninfo_to_dict(self.dsn.get_secret_value()).get("dbname") or "postgres")

    @property
    def safe_address(self) -> str:
        """``user@host:port/dbname``: what logs and messages may show."""
        info = conninfo_to_dict(self.dsn.get_secret_value())
        host = info.get("host") or "localhost"
        return f"{info.get('user') or ''}@{host}:{info.get('port') or 5432}/{self.dbname}"

    @asynccontextmanager
    async def get_client(self, *, autocommit: bool = True) -> AsyncIterator[psycopg.AsyncConnection]:
        """An open async connection, closed on exit. Unreachable server → ConfigurationError naming ``dsn``."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn.get_secret_value(), autocommit=autocommit, connect_timeout=self.connect_timeout_s
            )
        except psycopg.OperationalError as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise ConfigurationError(
                self.display_name,
                "dsn",
                f"cannot connect to {self.safe_address}: {reason}",
                hint="check the host, port, user and that the server is up",
                transient=not any(word in reason for word in ("authentication", "does not exist", "role")),
            ) from err
        try:
            yield conn
        finally:
            await conn.close()
