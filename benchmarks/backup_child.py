"""The flow side of ``benchmarks.backup``, run in a child process of its own so that its peak RSS is the flow's.

    python -m benchmarks.backup_child backup --environment bench-backup [--parts postgres,redis]
    python -m benchmarks.backup_child restore --environment bench-backup --backup-id 20261101T020000Z \\
        --database rb_bench_flow_restore

Runs ``daily-backup`` (default parts) or ``restore-database`` (into a scratch database) in this process, against
the Prefect API in ``PREFECT_API_URL``, and prints one JSON line: the flow's wall time, this process's peak RSS
(``VmHWM``: the Python process only; pg_dump, pg_restore and moto are other processes), its RSS once everything
was imported (before the flow), and what the flow reported. Exit status 1 when the flow failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def peak_rss_bytes() -> int:
    """The process's high-water RSS (``VmHWM``), falling back to ``ru_maxrss`` where there is no /proc."""
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int:
    try:
        return _status_kib("VmRSS") * 1024
    except OSError:
        return 0


async def run_backup(environment: str, parts: list[str] | None, level: int | None = None) -> dict[str, Any]:
    from flows.backup import daily_backup
    from tasks.backup.registry import DEFAULT_PARTS

    imported_rss = rss_bytes()
    started = time.perf_counter()
    options: dict[str, Any] = {} if level is None else {"compression_level": level}
    report = await daily_backup(environment=environment, parts=parts, **options)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    rows = []
    for part in report.parts:
        rows.append(
            {
                "name": part.name,
                "duration_s": part.duration_s,
                "raw_bytes": sum(o.raw_size for o in part.objects),
                "stored_bytes": sum(o.size for o in part.objects),
                "objects": [
                    {"key": o.key, "raw_bytes": o.raw_size, "stored_bytes": o.size, "duration_s": o.duration_s}
                    for o in part.objects
                ],
                "bgsave_s": part.info.get("bgsave_duration_s"),
            }
        )
    return {
        "flow_s": round(elapsed, 3),
        "report_duration_s": report.duration_s,
        "parts_run": parts or list(DEFAULT_PARTS),
        "backup_id": report.backup_id,
        "prefix": report.prefix,
        "raw_bytes": report.raw_bytes,
        "stored_bytes": report.stored_bytes,
        "parts": rows,
        "imported_rss_bytes": imported_rss,
    }


async def run_restore(environment: str, backup_id: str, database: str, jobs: int) -> dict[str, Any]:
    from flows.restore import restore_database

    imported_rss = rss_bytes()
    started = time.perf_counter()
    report = await restore_database(
        environment=environment, backup_id=backup_id, target="scratch", scratch_database=database, jobs=jobs
    )
    elapsed = time.perf_counter() - started
    return {
        "flow_s": round(elapsed, 3),
        "report_duration_s": report.duration_s,
        "status": report.status,
        "database": report.database,
        "rows": sum(v for v in report.restored_rows.values() if v is not None),
        "tables": len(report.restored_rows),
        "imported_rss_bytes": imported_rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backup_child",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="flow", required=True)
    backup = sub.add_parser("backup")
    backup.add_argument("--environment", required=True)
    backup.add_argument("--parts", help="comma-separated parts, for a diagnosis (default: the flow's default parts)")
    backup.add_argument("--compression-level", type=int, help="zstd level (default: the flow's)")
    restore = sub.add_parser("restore")
    restore.add_argument("--environment", required=True)
    restore.add_argument("--backup-id", required=True)
    restore.add_argument("--database", required=True)
    restore.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        if args.flow == "backup":
            parts = args.parts.split(",") if args.parts else None
            result = asyncio.run(run_backup(args.environment, parts, args.compression_level))
        else:
            result = asyncio.run(run_restore(args.environment, args.backup_id, args.database, args.jobs))
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - reported to the parent as JSON, exit status 1
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
