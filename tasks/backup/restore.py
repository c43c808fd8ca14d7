"""Tasks of the way back: find and read a manifest, download and verify its objects, create the scratch
database, ``pg_restore`` into it (never retried: a restore is not idempotent), and compare row counts."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psycopg
from prefect_aws.s3 import S3Bucket
from psycopg import sql

from blocks.postgres import PostgresDatabase
from kernel.errors import PostgresError
from kernel.retry import idempotent_task, once_task, read_task
from tasks import pgtools
from tasks.backup.manifest import (
    MANIFEST_NAME,
    BackupKind,
    BackupObject,
    IncompleteBackupError,
    Manifest,
    RowCountMismatchError,
    backup_prefix,
    environment_prefix,
    parse_backup_id,
)
from tasks.backup.pipeline import download_verified
from tasks.storage import get_bytes, list_stored, put_bytes

DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatabaseExistsError(PostgresError):
    def __init__(self, name: str, address: str) -> None:
        super().__init__(
            f"database {name!r} already exists on {address}",
            hint="drop it, or pass another scratch database name",
            transient=False,
        )


@idempotent_task
async def write_manifest(bucket: S3Bucket, manifest: Manifest) -> str:
    """Write ``manifest.json``: the last object of a backup, the one that makes it complete."""
    data = manifest.model_dump_json(indent=2).encode()
    await asyncio.to_thread(put_bytes, bucket, manifest.key, data)
    return manifest.key


async def read_manifest(bucket: S3Bucket, prefix: str) -> Manifest | None:
    data = await asyncio.to_thread(get_bytes, bucket, f"{prefix}{MANIFEST_NAME}")
    return Manifest.model_validate_json(data) if data is not None else None


@read_task
async def find_backup(bucket: S3Bucket, kind: BackupKind, environment: str, backup_id: str | None = None) -> Manifest:
    """The manifest of backup ``backup_id``, or of the newest completed backup when None. A backup without a
    completed manifest is an :class:`IncompleteBackupError`: it is never restored."""
    if backup_id is not None:
        prefix = backup_prefix(kind, environment, backup_id)
        manifest = await read_manifest(bucket, prefix)
        if manifest is None:
            raise IncompleteBackupError(prefix, "it has no manifest.json (the backup never completed)")
        if manifest.status != "completed":
            raise IncompleteBackupError(prefix, f"its manifest says {manifest.status}")
        return manifest
    root = environment_prefix(kind, environment)
    stored = await asyncio.to_thread(list_stored, bucket, root)
    ids = sorted(
        {o.key[len(root) :].split("/", 1)[0] for o in stored if o.key.endswith("/" + MANIFEST_NAME)},
        reverse=True,
    )
    for candidate in ids:
        if parse_backup_id(candidate) is None:
            continue
        manifest = await read_manifest(bucket, f"{root}{candidate}/")
        if manifest is not None and manifest.status == "completed":
            return manifest
    raise IncompleteBackupError(root, "there is no completed backup under it")


@read_task
async def download_objects(bucket: S3Bucket, objects: list[BackupObject], dest_dir: Path) -> list[Path]:
    """Download and verify every object (size and SHA-256 against the manifest, zstd checksum) before
    anything is restored; the first corrupt one raises :class:`CorruptObjectError` naming it."""
    paths = []
    for obj in objects:
        name = obj.key.rsplit("/", 1)[-1].removesuffix(".zst")
        paths.append(await asyncio.to_thread(download_verified, bucket, obj, dest_dir / name))
    return paths


def check_database_name(name: str) -> str:
    if not DATABASE_NAME.match(name):
        raise ValueError(f"{name!r} is not a plain database name (lowercase letters, digits, _; at most 63)")
    return name


def scratch_database_name(live: str, purpose: str, backup_id: str) -> str:
    """``<live>_<purpose>_<backup id>``, the live name cut so the whole fits PostgreSQL's 63 bytes."""
    suffix = f"_{purpose}_{backup_id.lower()}"
    return check_database_name(live[: 63 - len(suffix)] + suffix)


@once_task
async def create_database(db: PostgresDatabase, name: str) -> str:
    """``CREATE DATABASE <name> TEMPLATE template0`` on the block's server; an existing one is an error."""
    check_database_name(name)
    async with db.get_client() as conn:
        try:
            await conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase as err:
            raise DatabaseExistsError(name, db.safe_address) from err
        except psycopg.Error as err:
            raise PostgresError(
                f"CREATE DATABASE {name} on {db.safe_address} failed: {err}",
                hint="the block's user needs CREATEDB",
            ) from err
    return name


@once_task
async def restore_archive(
    db: PostgresDatabase,
    archive: Path,
    *,
    dbname: str,
    jobs: int = 2,
    clean: bool = False,
    timeout_s: float = 6 * 3600,
    no_owner: bool = False,
    no_privileges: bool = False,
) -> str:
    """``pg_restore -j <jobs>`` of ``archive`` into ``dbname``; not retried (a half-done restore must be looked
    at, not repeated blindly). ``no_owner`` / ``no_privileges``: see :func:`tasks.pgtools.restore_archive`."""
    return await asyncio.to_thread(
        pgtools.restore_archive,
        db,
        archive,
        dbname=dbname,
        jobs=jobs,
        clean=clean,
        timeout_s=timeout_s,
        no_owner=no_owner,
        no_privileges=no_privileges,
    )


@read_task
async def count_table_rows(db: PostgresDatabase, dbname: str, tables: list[str]) -> dict[str, int | None]:
    """Exact row count of each ``schema.table`` in ``dbname`` (None: the table does not exist there)."""
    target = PostgresDatabase(dsn=db.conninfo(dbname=dbname), connect_timeout_s=db.connect_timeout_s)
    counts: dict[str, int | None] = {}
    async with target.get_client() as conn:
        for table in tables:
            schema, _, name = table.partition(".")
            try:
                query = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, name))
                row = await (await conn.execute(query)).fetchone()
                counts[table] = int(row[0]) if row else 0
            except psycopg.errors.UndefinedTable:
                counts[table] = None
            except psycopg.Error as err:
                raise PostgresError(
                    f"counting rows of {table} in {dbname} failed: {err}",
                    transient=isinstance(err, psycopg.OperationalError),
                ) from err
    return counts


def check_row_counts(database: str, expected: dict[str, int], actual: dict[str, int | None]) -> None:
    """Raise :class:`RowCountMismatchError` unless every table of ``expected`` has exactly its rows."""
    mismatches = {t: (want, actual.get(t)) for t, want in expected.items() if actual.get(t) != want}
    if mismatches:
        raise RowCountMismatchError(database, mismatches)
