"""``python -m sandbox.datagen {postgres,redis} ...``: fill a database with deterministic sandbox data."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import redis

from sandbox.datagen.postgres import (
    admin_dsn_for,
    database_name,
    database_size,
    ensure_database,
    generate_postgres,
    tables_size,
)
from sandbox.datagen.redis import generate_redis
from sandbox.datagen.sizes import format_size, parse_size
from sandbox.datagen.text import get_corpus


def _size_arg(value: str) -> int:
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {value!r}")
    return size


def _progress_printer(label: str, quiet: bool) -> Callable[[int, int], None] | None:
    if quiet:
        return None
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        step = pct // 10
        if step != last[0]:
            last[0] = step
            print(f"{label}: {pct:3d}%", file=sys.stderr, flush=True)

    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox.datagen", description=__doc__)
    sub = parser.add_subparsers(dest="target", required=True)

    pg = sub.add_parser("postgres", help="fill a PostgreSQL database (users, api_keys, ai_queries, ...)")
    pg.add_argument("--dsn", required=True, help="DSN of the target database")
    pg.add_argument("--size", required=True, type=_size_arg, help="approx. pg_database_size, e.g. 50MB, 2GB")
    pg.add_argument("--seed", type=int, default=42)
    pg.add_argument("--no-reset", action="store_true", help="keep existing (empty) tables instead of recreating")
    pg.add_argument("--create-db", action="store_true", help="create the database if it does not exist")
    pg.add_argument("--quiet", action="store_true", help="no progress on stderr")

    rd = sub.add_parser("redis", help="fill a Redis database (session:*, cache:model:*, ratelimit:*)")
    rd.add_argument("--url", required=True, help="redis://host:port/db")
    rd.add_argument("--size", required=True, type=_size_arg, help="approx. used_memory growth, e.g. 20MB")
    rd.add_argument("--seed", type=int, default=42)
    rd.add_argument("--flush", action="store_true", help="FLUSHDB the selected database first")
    rd.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _print_counts(counts: dict[str, int]) -> None:
    width = max(len(k) for k in counts)
    for name, count in counts.items():
        print(f"  {name:<{width}}  {count:>12,}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    get_corpus()  # build the text corpus outside the timed section
    if args.target == "postgres":
        dsn = args.dsn
        if args.create_db and database_name(dsn):
            dsn = ensure_database(admin_dsn_for(dsn), database_name(dsn))
        t0 = time.perf_counter()
        counts = generate_postgres(
            dsn,
            args.size,
            seed=args.seed,
            reset=not args.no_reset,
            progress=_progress_printer("postgres", args.quiet),
        )
        elapsed = time.perf_counter() - t0
        size = database_size(dsn)
        data = tables_size(dsn)
        print(f"postgres: {sum(counts.values()):,} rows in {elapsed:.1f}s")
        _print_counts(counts)
        print(
            f"database size {format_size(size)} (target {format_size(args.size)}); "
            f"table data {format_size(data)} at {data / 1e6 / elapsed:.1f} MB/s"
        )
    else:
        client = redis.Redis.from_url(args.url)
        try:
            if args.flush:
                client.flushdb()
            before = int(client.info("memory")["used_memory"])
            t0 = time.perf_counter()
            counts = generate_redis(
                args.url, args.size, seed=args.seed, flush=False, progress=_progress_printer("redis", args.quiet)
            )
            elapsed = time.perf_counter() - t0
            grown = int(client.info("memory")["used_memory"]) - before
        finally:
            client.close()
        print(f"redis: {sum(counts.values()):,} keys in {elapsed:.1f}s")
        _print_counts(counts)
        print(
            f"used_memory grew {format_size(grown)} (target {format_size(args.size)}), {grown / 1e6 / elapsed:.1f} MB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
