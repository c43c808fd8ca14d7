"""The sandbox data generators against the real PostgreSQL and Redis of this machine.

PostgreSQL: only databases created here (``rb_test_datagen_<random>``), dropped afterwards.
Redis: only the run's spare database (``spare_redis_url``, leased to this run), flushed before and after.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest
import redis
import zstandard

from sandbox.datagen import (
    ANCHOR,
    KEY_PREFIXES,
    MODEL_NAMES,
    TABLES,
    Composer,
    create_schema,
    ensure_database,
    estimate_plan,
    format_size,
    generate_postgres,
    generate_redis,
    key_counts,
    parse_size,
    table_row_counts,
)
from sandbox.datagen.__main__ import main as cli_main

PG_ADMIN_DSN = os.environ.get("RUNBOOKS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

PG_SIZE = 30 * 1000 * 1000
REDIS_SIZE = 10 * 1000 * 1000

# (table, ORDER BY) for content checksums
_ORDER = {
    "users": "id",
    "api_keys": "id",
    "ai_models": "name",
    "ai_queries": "id",
    "usage_daily": "day, user_id, model",
    "audit_events": "id",
}


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


def _drop_database(dbname: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(scope="module")
def new_database() -> Iterator[Callable[[], str]]:
    """Factory of fresh scratch databases (their DSNs); all dropped at the end of the module."""
    with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):  # a missing server fails the tests, never skips them
        pass
    created: list[str] = []

    def make() -> str:
        name = f"rb_test_datagen_{uuid.uuid4().hex[:10]}"
        created.append(name)
        return ensure_database(PG_ADMIN_DSN, name)

    try:
        yield make
    finally:
        for name in created:
            _drop_database(name)


@pytest.fixture(scope="module")
def pg_pair(new_database: Callable[[], str]) -> tuple[str, str, dict[str, int], dict[str, int]]:
    """Two databases generated with the same seed and size: (dsn_a, dsn_b, counts_a, counts_b)."""
    dsn_a, dsn_b = new_database(), new_database()
    seen: list[tuple[int, int]] = []
    counts_a = generate_postgres(dsn_a, PG_SIZE, seed=42, progress=lambda d, t: seen.append((d, t)))
    counts_b = generate_postgres(dsn_b, PG_SIZE, seed=42)
    assert seen and seen[-1][0] == seen[-1][1] == counts_a["ai_queries"]
    return dsn_a, dsn_b, counts_a, counts_b


@pytest.fixture()
def redis_db(spare_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(spare_redis_url)
    client.ping()  # a missing server fails the tests, never skips them
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def _checksums(dsn: str) -> dict[str, str]:
    sums = {}
    with psycopg.connect(dsn) as conn:
        for table, order in _ORDER.items():
            row = conn.execute(f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY {order})) FROM {table} t").fetchone()
            assert row is not None
            sums[table] = row[0]
    return sums


def _scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# ---------------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50MB", 50_000_000),
        ("2GB", 2_000_000_000),
        ("512KiB", 524_288),
        ("1.5 GB", 1_500_000_000),
        ("20mb", 20_000_000),
        ("3MiB", 3 * 1024 * 1024),
        ("1G", 1_000_000_000),
        ("4096", 4096),
        ("100 B", 100),
        (" 7kB ", 7000),
        (12345, 12345),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "   ", "MB", "-5MB", "5XB", "five MB", "1.2.3GB", "nan", "inf", "5 M B", -1, True])
def test_parse_size_rejects_bad_input(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_format_size() -> None:
    assert format_size(52_400_000) == "52.4 MB"
    assert format_size(999) == "999 B"


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------


def test_composer_is_deterministic() -> None:
    a, b, c = Composer(42), Composer(42), Composer(43)
    first = [a.prompt_response() for _ in range(200)]
    assert first == [b.prompt_response() for _ in range(200)]
    assert first != [c.prompt_response() for _ in range(200)]
    kinds = {kind for kind, _, _ in first}
    assert len(kinds) >= 6  # a mix of code, prose, sql, email, json...
    prompts = [p for _, p, _ in first]
    assert len(set(prompts)) > 190  # not a handful of repeated texts


def test_text_compresses_like_production() -> None:
    comp = Composer(42)
    parts: list[str] = []
    size = 0
    while size < 4_000_000:
        _, prompt, response = comp.prompt_response()
        parts.append(prompt)
        parts.append(response)
        size += len(prompt) + len(response)
    sample = "\n".join(parts).encode()
    ratio = len(sample) / len(zstandard.ZstdCompressor(level=3).compress(sample))
    print(f"zstd -3 ratio on {len(sample) / 1e6:.1f} MB of prompt+response text: {ratio:.2f}")
    assert 2.5 <= ratio <= 8.0
    # English-ish prose with code: mostly printable ASCII words, not padding or random bytes
    words = re.findall(rb"[A-Za-z]{3,}", sample[:200_000])
    assert len(set(words)) > 500


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def test_estimate_plan_scales() -> None:
    small, big = estimate_plan(parse_size("20MB")), estimate_plan(parse_size("2GB"))
    assert big["ai_queries"] > 50 * small["ai_queries"]
    assert big["users"] > small["users"]
    with pytest.raises(ValueError):
        estimate_plan(0)


def test_postgres_counts_match(pg_pair: tuple[str, str, dict[str, int], dict[str, int]]) -> None:
    dsn_a, _, counts_a, _ = pg_pair
    assert tuple(counts_a) == TABLES
    assert table_row_counts(dsn_a) == counts_a
    assert counts_a["ai_models"] == len(MODEL_NAMES)
    assert counts_a["ai_queries"] > 10 * counts_a["users"] > 0
    assert counts_a["usage_daily"] > 0 and counts_a["audit_events"] > 0


def test_postgres_size_within_tolerance(pg_pair: tuple[str, str, dict[str, int], dict[str, int]]) -> None:
    dsn_a = pg_pair[0]
    size = int(_scalar(dsn_a, "SELECT pg_database_size(current_database())"))  # type: ignore[call-overload]
    print(f"target {PG_SIZE / 1e6:.1f} MB, pg_database_size {size / 1e6:.1f} MB")
    assert 0.75 * PG_SIZE <= size <= 1.25 * PG_SIZE
    bulk = int(_scalar(dsn_a, "SELECT pg_total_relation_size('ai_queries')"))  # type: ignore[call-overload]
    assert bulk > 0.6 * size  # ai_queries is the bulk of the data


def test_postgres_is_deterministic(pg_pair: tuple[str, str, dict[str, int], dict[str, int]]) -> None:
    dsn_a, dsn_b, counts_a, counts_b = pg_pair
    assert counts_a == counts_b
    assert _checksums(dsn_a) == _checksums(dsn_b)


def test_postgres_integrity(pg_pair: tuple[str, str, dict[str, int], dict[str, int]]) -> None:
    dsn = pg_pair[0]
    with psycopg.connect(dsn) as conn:

        def one(query: str) -> object:
            row = conn.execute(query).fetchone()
            assert row is not None
            return row[0]

        fks = one("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text = 'ai_queries'")
        assert fks == 3
        indexes = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")}
        for expected in ("ai_queries USING btree (created_at)", "ai_queries USING btree (user_id)",
                         "api_keys USING btree (user_id)"):  # fmt: skip
            assert any(expected in d for d in indexes), expected
        # referential integrity, also for the (not declared) key-belongs-to-user relation
        assert one("SELECT count(*) FROM ai_queries q LEFT JOIN users u ON u.id = q.user_id WHERE u.id IS NULL") == 0
        assert one("SELECT count(*) FROM ai_queries q JOIN api_keys k ON k.id = q.api_key_id "
                   "WHERE k.user_id <> q.user_id OR k.revoked_at IS NOT NULL") == 0  # fmt: skip
        assert one("SELECT count(*) FROM ai_queries WHERE model NOT IN (SELECT name FROM ai_models)") == 0
        assert one("SELECT count(*) FROM api_keys k JOIN users u ON u.id = k.user_id "
                   "WHERE k.created_at < u.created_at") == 0  # fmt: skip
        # usage_daily is the exact roll-up of ai_queries
        assert one("SELECT sum(requests) FROM usage_daily") == one("SELECT count(*) FROM ai_queries")
        assert one("SELECT sum(cost_usd) FROM usage_daily") == one("SELECT sum(cost_usd) FROM ai_queries")
        # timestamps: the 30 days before the fixed anchor, never now()
        lo, hi = conn.execute("SELECT min(created_at), max(created_at) FROM ai_queries").fetchone() or (None, None)
        assert lo is not None and hi is not None
        assert ANCHOR - timedelta(days=30) <= lo < hi < ANCHOR
        assert set(r[0] for r in conn.execute("SELECT DISTINCT status FROM ai_queries")) == {"ok", "error", "timeout"}
        assert one("SELECT count(*) FROM ai_queries WHERE status <> 'ok' AND error IS NULL") == 0
        # key material is a sha256 hex of a non-secret, ids look like production
        assert one("SELECT count(*) FROM api_keys WHERE key_hash !~ '^[0-9a-f]{64}$' OR id !~ '^key_'") == 0
        assert one("SELECT count(DISTINCT email) = count(*) FROM users") is True
        # realistic text with newlines / code survived COPY escaping
        code = one("SELECT count(*) FROM ai_queries WHERE response LIKE '%```%' AND response LIKE E'%\\n%'")
        assert isinstance(code, int) and code > 0


def test_postgres_reset_false_and_other_seed(
    new_database: Callable[[], str], pg_pair: tuple[str, str, dict[str, int], dict[str, int]]
) -> None:
    dsn = new_database()
    with psycopg.connect(dsn) as conn:
        create_schema(conn)
        create_schema(conn)  # idempotent
        conn.commit()
    small = parse_size("12MB")
    counts = generate_postgres(dsn, small, seed=7, reset=False)
    assert table_row_counts(dsn) == counts
    with pytest.raises(RuntimeError, match="already has rows"):
        generate_postgres(dsn, small, seed=7, reset=False)
    first = "SELECT md5(prompt || response) FROM ai_queries WHERE id = 1"
    assert _scalar(dsn, first) != _scalar(pg_pair[0], first)  # another seed, other text


def test_cli_postgres(new_database: Callable[[], str], capsys: pytest.CaptureFixture[str]) -> None:
    dsn = new_database()
    assert cli_main(["postgres", "--dsn", dsn, "--size", "10MB", "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ai_queries" in out and "MB/s" in out
    with pytest.raises(SystemExit):
        cli_main(["postgres", "--dsn", dsn, "--size", "lots"])


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


def _snapshot(client: redis.Redis) -> dict[bytes, str]:
    """key -> digest of its value (type-aware), for every key of the database."""
    keys = sorted(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if key.startswith(b"session:"):
            pipe.hgetall(key)
        else:
            pipe.get(key)
    snap = {}
    for key, value in zip(keys, pipe.execute(), strict=True):
        data = repr(sorted(value.items())) if isinstance(value, dict) else repr(value)
        snap[key] = hashlib.sha1(data.encode()).hexdigest()
    return snap


def test_redis_generate(redis_db: redis.Redis, spare_redis_url: str) -> None:
    before = int(redis_db.info("memory")["used_memory"])
    counts = generate_redis(spare_redis_url, REDIS_SIZE, seed=42)
    grown = int(redis_db.info("memory")["used_memory"]) - before
    print(f"target {REDIS_SIZE / 1e6:.1f} MB, used_memory grew {grown / 1e6:.2f} MB, keys {counts}")
    assert 0.7 * REDIS_SIZE <= grown <= 1.3 * REDIS_SIZE
    assert tuple(counts) == KEY_PREFIXES
    assert key_counts(spare_redis_url) == counts
    assert redis_db.dbsize() == sum(counts.values())
    assert counts["session"] > 0 and counts["cache:model"] > 0 and counts["ratelimit"] > 0

    keys = list(redis_db.scan_iter(count=1000))
    pipe = redis_db.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
        pipe.memory_usage(key, samples=0)
    results = pipe.execute()
    bytes_by_prefix = dict.fromkeys(KEY_PREFIXES, 0)
    cache_re = re.compile(r"^cache:model:(?P<model>[^:]+):[0-9a-f]{40}$")
    for key, ttl, mem in zip(keys, results[::2], results[1::2], strict=True):
        name = key.decode()
        if name.startswith("session:"):
            assert 3_600 - 60 <= ttl <= 86_400, name
            bytes_by_prefix["session"] += mem
        elif name.startswith("cache:model:"):
            match = cache_re.match(name)
            assert match and match["model"] in MODEL_NAMES, name
            assert 600 - 60 <= ttl <= 21_600, name
            bytes_by_prefix["cache:model"] += mem
        else:
            assert name.startswith("ratelimit:key_"), name
            assert 0 < ttl <= 300, name
            bytes_by_prefix["ratelimit"] += mem
    share = bytes_by_prefix["session"] / sum(bytes_by_prefix.values())
    assert 0.2 <= share <= 0.4, share

    session = next(k for k in keys if k.startswith(b"session:"))
    fields = redis_db.hgetall(session)
    for field in (b"user_id", b"created_at", b"ip", b"user_agent", b"preferred_model"):
        assert fields.get(field), field


def test_redis_is_deterministic_and_flush(redis_db: redis.Redis, spare_redis_url: str) -> None:
    size = 3 * 1000 * 1000
    counts = generate_redis(spare_redis_url, size, seed=5, flush=True)
    first = _snapshot(redis_db)
    redis_db.set("unrelated", "x")
    again = generate_redis(spare_redis_url, size, seed=5, flush=True)  # flush drops "unrelated" too
    assert again == counts
    assert _snapshot(redis_db) == first
    other = generate_redis(spare_redis_url, size, seed=6, flush=True)
    assert sum(other.values()) > 0
    assert set(_snapshot(redis_db)).isdisjoint(k for k in first if not k.startswith(b"cache:"))


def test_cli_redis(redis_db: redis.Redis, spare_redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["redis", "--url", spare_redis_url, "--size", "2MB", "--flush", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cache:model" in out and "MB/s" in out
    assert redis_db.dbsize() > 0
    with pytest.raises(SystemExit):
        cli_main(["redis", "--url", spare_redis_url, "--size", "0"])
