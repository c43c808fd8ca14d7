"""Deterministic, production-like data generators for the sandbox (PostgreSQL ``ai_multimodel`` and Redis).

Same seed and size -> same rows and keys. Text is composed from a precomputed corpus so that it is
fast to produce and compresses like real prompt/response traffic (zstd -3: about 4.5x).

    from sandbox.datagen import ensure_database, generate_postgres, generate_redis, parse_size

    dsn = ensure_database("postgresql://postgres@127.0.0.1:5432/postgres", "ai_multimodel")
    generate_postgres(dsn, parse_size("50MB"), seed=42)
    generate_redis("redis://127.0.0.1:6379/0", parse_size("20MB"), seed=42, flush=True)

CLI: ``python -m sandbox.datagen postgres --dsn DSN --size 50MB`` / ``... redis --url URL --size 20MB``.
"""

from sandbox.datagen.postgres import (
    ANCHOR,
    TABLES,
    create_schema,
    ensure_database,
    estimate_plan,
    generate_postgres,
    table_row_counts,
)
from sandbox.datagen.redis import KEY_PREFIXES, generate_redis, key_counts
from sandbox.datagen.sizes import format_size, parse_size
from sandbox.datagen.text import MODEL_NAMES, Composer, get_corpus

__all__ = [
    "ANCHOR",
    "KEY_PREFIXES",
    "MODEL_NAMES",
    "TABLES",
    "Composer",
    "create_schema",
    "ensure_database",
    "estimate_plan",
    "format_size",
    "generate_postgres",
    "generate_redis",
    "get_corpus",
    "key_counts",
    "parse_size",
    "table_row_counts",
]
