"""Tasks that prove a restored backup holds what its manifest says: Great Expectations suites run against the
scratch database (every table of the manifest present, its exact row count, its primary-key columns not null),
the Redis RDB loaded into a throwaway ``redis-server`` with its key count compared, and the ``verified.json``
marker written next to the manifest (:mod:`tasks.backup.retention` never deletes the newest backup that has
one).

Great Expectations is imported inside the task (it takes seconds to import): flows that do not verify do not
pay for it.
"""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis as sync_redis
import redis.exceptions
from prefect_aws.s3 import S3Bucket
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, Field

from blocks.postgres import PostgresDatabase
from kernel.errors import PostgresError, RedisError
from kernel.retry import idempotent_task, read_task
from tasks.backup.manifest import VERIFIED_NAME, BackupError, Manifest, RedisInfo
from tasks.backup.restore import check_database_name
from tasks.redis import rdb_server
from tasks.storage import put_bytes

#: Primary-key columns of every ordinary or partitioned table, in key order.
PRIMARY_KEYS_SQL = """
SELECT n.nspname, c.relname, a.attname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, k.position
"""

#: The tables of the restored database, as ``schema.table`` (what the manifest's row counts are keyed by).
CATALOG_SQL = """
SELECT n.nspname || '.' || c.relname AS table_name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
"""


class BackupVerificationError(BackupError):
    """The restored backup does not match its manifest."""

    def __init__(self, prefix: str, failures: list[str]) -> None:
        self.prefix = prefix
        self.failures = failures
        shown = "; ".join(failures[:6])
        more = f"; and {len(failures) - 6} more" if len(failures) > 6 else ""
        super().__init__(
            f"backup {prefix} failed verification ({len(failures)} check(s)): {shown}{more}",
            hint="do not rely on this backup: see the verify-backup artifact, then take and verify a new one",
            transient=False,
        )


class ExpectationOutcome(BaseModel):
    """One Great Expectations result, flattened for the report."""

    suite: str = Field(description="catalog, or the schema.table the expectation is about")
    expectation: str
    column: str | None = None
    expected: Any = None
    observed: Any = None
    success: bool
    error: str | None = None

    def describe(self) -> str:
        """One line for messages: what failed and how."""
        if self.error:
            return f"{self.suite}: {self.expectation} could not run: {self.error}"
        if self.expectation == "expect_table_row_count_to_equal":
            return f"{self.suite} row count expected {self.expected} (manifest) got {self.observed}"
        if self.expectation == "expect_column_values_to_not_be_null":
            return f"{self.suite}.{self.column} has {self.observed} null value(s) in a key column"
        if self.expectation == "expect_column_distinct_values_to_contain_set":
            return f"table(s) missing from the restored database: {', '.join(map(str, self.observed or []))}"
        return f"{self.suite}: {self.expectation} failed (observed {self.observed})"


class DatabaseValidation(BaseModel):
    database: str
    tables: int
    outcomes: list[ExpectationOutcome] = Field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


class RedisVerification(BaseModel):
    address: str = Field(description="the throwaway server that loaded the RDB")
    db: int
    expected_keys: int
    restored_keys: int
    keyspace: dict[int, int] = Field(default_factory=dict, description="keys per database in the RDB")
    tolerance: float = 0.0

    @property
    def success(self) -> bool:
        allowed = int(self.expected_keys * self.tolerance)
        return abs(self.restored_keys - self.expected_keys) <= allowed

    def describe(self) -> str:
        return (
            f"Redis db {self.db} holds {self.restored_keys} key(s) in the RDB, the manifest says {self.expected_keys}"
        )


class VerifiedRecord(BaseModel):
    """``verified.json``: its presence is what retention reads; its content says what was proven, when."""

    backup_id: str
    prefix: str
    verified_at: datetime
    flow_run_id: str | None = None
    database_tables: int = 0
    database_rows: int = 0
    expectations: int = 0
    redis_keys: int | None = None


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL


@read_task
async def primary_key_columns(db: PostgresDatabase, dbname: str) -> dict[str, list[str]]:
    """``schema.table`` → its primary-key columns, read from the catalog of ``dbname``."""
    target = PostgresDatabase(dsn=db.conninfo(dbname=dbname), connect_timeout_s=db.connect_timeout_s)
    keys: dict[str, list[str]] = {}
    async with target.get_client() as conn:
        try:
            rows = await (await conn.execute(PRIMARY_KEYS_SQL)).fetchall()
        except psycopg.Error as err:
            raise PostgresError(
                f"reading primary keys of {dbname} failed: {err}", transient=isinstance(err, psycopg.OperationalError)
            ) from err
    for schema, table, column in rows:
        keys.setdefault(f"{schema}.{table}", []).append(str(column))
    return keys


@idempotent_task
async def drop_database(db: PostgresDatabase, name: str) -> bool:
    """``DROP DATABASE IF EXISTS <name> WITH (FORCE)``; True when there was one. Refuses the block's own."""
    check_database_name(name)
    if name == db.dbname:
        raise PostgresError(f"refusing to drop {name}: it is the environment's live database", transient=False)
    async with db.get_client() as conn:
        try:
            row = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.Error as err:
            raise PostgresError(
                f"DROP DATABASE {name} on {db.safe_address} failed: {err}",
                hint=f"drop it by hand: DROP DATABASE {name} WITH (FORCE)",
            ) from err
    return row is not None


def _outcome(suite: str, result: Any) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    details = result.result or {}
    exception = result.exception_info or {}
    if "raised_exception" not in exception and exception:  # one entry per metric when several failed
        exception = next(iter(exception.values()), {})
    observed = details.get("observed_value")
    if config.type == "expect_column_values_to_not_be_null":
        observed = details.get("unexpected_count", observed)
    elif config.type == "expect_column_distinct_values_to_contain_set":
        observed = _missing(details, kwargs)  # the whole catalog is noise: name what is missing
    return ExpectationOutcome(
        suite=suite,
        expectation=str(config.type),
        column=kwargs.get("column"),
        expected=kwargs.get("value", kwargs.get("value_set")),
        observed=observed,
        success=bool(result.success),
        error=str(exception.get("exception_message")) if exception.get("raised_exception") else None,
    )


def _missing(details: dict[str, Any], kwargs: dict[str, Any]) -> list[str]:
    observed = details.get("observed_value") or []
    return sorted(set(kwargs.get("value_set") or []) - set(observed))


def run_expectations(
    dsn: str, expected_rows: dict[str, int], key_columns: dict[str, list[str]]
) -> list[ExpectationOutcome]:
    """The Great Expectations suites against the database ``dsn`` names: one on the catalog (every table of
    ``expected_rows`` exists), then one per present table (row count, key columns not null). Blocking."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    # connection parameters as keywords: the password never sits in a URL GE could print
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    outcomes: list[ExpectationOutcome] = []
    with warnings.catch_warnings():  # the generic SQL datasource is on purpose: it takes keyword connect_args
        warnings.filterwarnings("ignore", message="You are using a generic SQLDatasource")
        source = context.data_sources.add_sql(  # type: ignore[call-arg]  # the generated stub lacks kwargs
            name="scratch", connection_string="postgresql+psycopg://", kwargs={"connect_args": params}
        )
        try:
            _validate_all(context, source, expected_rows, key_columns, outcomes)
        finally:
            source.get_engine().dispose()
    return outcomes


def _validate_all(
    context: Any,
    source: Any,
    expected_rows: dict[str, int],
    key_columns: dict[str, list[str]],
    outcomes: list[ExpectationOutcome],
) -> None:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def validate(name: str, asset: Any, expectations: list[Any]) -> None:
        suite = context.suites.add(gx.ExpectationSuite(name=f"suite-{name}", expectations=expectations))
        batch = asset.add_batch_definition_whole_table("whole")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate-{name}", data=batch, suite=suite)
        )
        result = definition.run()
        outcomes.extend(_outcome(name, r) for r in result.results)

    catalog = source.add_query_asset(name="catalog", query=CATALOG_SQL)
    tables = sorted(expected_rows)
    validate("catalog", catalog, [gxe.ExpectColumnDistinctValuesToContainSet(column="table_name", value_set=tables)])
    present = set(_present_tables(source, tables))
    for table in tables:
        if table not in present:
            continue
        schema, _, name = table.partition(".")
        asset = source.add_table_asset(name=table, table_name=name, schema_name=schema)
        expectations: list[Any] = [gxe.ExpectTableRowCountToEqual(value=expected_rows[table])]
        expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in key_columns.get(table, [])]
        validate(table, asset, expectations)


def _present_tables(source: Any, tables: list[str]) -> list[str]:
    import sqlalchemy

    with source.get_engine().connect() as conn:
        found = {str(row[0]) for row in conn.execute(sqlalchemy.text(CATALOG_SQL))}
    return [t for t in tables if t in found]


@read_task
async def validate_database(
    db: PostgresDatabase, dbname: str, expected_rows: dict[str, int], key_columns: dict[str, list[str]]
) -> DatabaseValidation:
    """Run the expectations on the restored database ``dbname``; the failures are in the result, not raised
    (the flow reports every one of them before it fails)."""
    outcomes = await asyncio.to_thread(run_expectations, db.conninfo(dbname=dbname), expected_rows, key_columns)
    return DatabaseValidation(database=dbname, tables=len(expected_rows), outcomes=outcomes)


# --------------------------------------------------------------------------------------------------------------
# Redis


def count_rdb_keys(rdb_path: Path, db: int) -> tuple[int, dict[int, int]]:
    """(DBSIZE of database ``db``, keys per database) of the RDB, loaded into a throwaway server that keeps the
    keys whose TTL passed since the backup (:func:`tasks.redis.rdb_server` with ``keep_expired``)."""
    with rdb_server(rdb_path, keep_expired=True) as url:
        client = sync_redis.Redis.from_url(url, db=db, socket_timeout=30)
        try:
            size = int(client.dbsize())
            keyspace = {
                int(name[2:]): int(value["keys"])
                for name, value in client.info("keyspace").items()
                if name.startswith("db") and isinstance(value, dict)
            }
        except redis.exceptions.RedisError as err:
            raise RedisError(f"reading the restored RDB failed: {err}", transient=False) from err
        finally:
            client.close()
    return size, keyspace


@read_task
async def verify_redis(rdb_path: Path, expected: RedisInfo, *, tolerance: float = 0.0) -> RedisVerification:
    """Load the RDB into a throwaway server and compare its key count in the block's database with the
    manifest's. ``tolerance`` (a fraction) allows for writes between the manifest's count and the BGSAVE on a
    busy server."""
    size, keyspace = await asyncio.to_thread(count_rdb_keys, rdb_path, expected.db)
    return RedisVerification(
        address="127.0.0.1 (throwaway)",
        db=expected.db,
        expected_keys=expected.key_count,
        restored_keys=size,
        keyspace=keyspace,
        tolerance=tolerance,
    )


# --------------------------------------------------------------------------------------------------------------
# The marker


@idempotent_task
async def write_verified(bucket: S3Bucket, manifest: Manifest, record: VerifiedRecord) -> str:
    """Write ``verified.json`` next to the manifest; returns its key."""
    key = f"{manifest.prefix}{VERIFIED_NAME}"
    await asyncio.to_thread(put_bytes, bucket, key, record.model_dump_json(indent=2).encode())
    return key


def new_verified_record(
    manifest: Manifest,
    validation: DatabaseValidation | None,
    redis_check: RedisVerification | None,
    flow_run_id: str | None = None,
) -> VerifiedRecord:
    return VerifiedRecord(
        backup_id=manifest.backup_id,
        prefix=manifest.prefix,
        verified_at=datetime.now(UTC),
        flow_run_id=flow_run_id,
        database_tables=validation.tables if validation else 0,
        database_rows=sum(manifest.postgres.row_counts.values()) if manifest.postgres else 0,
        expectations=len(validation.outcomes) if validation else 0,
        redis_keys=redis_check.restored_keys if redis_check else None,
    )
