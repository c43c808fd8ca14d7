"""Micro-benchmark of the backup pipeline alone (stream → zstd → SHA-256 → S3 multipart) and of the way back,
with no database in the loop (the side-by-side benchmark against the raw tools is ``benchmarks.backup``).

    uv run python -m benchmarks.backup_pipeline                      # 256 MiB against a throwaway moto server
    uv run python -m benchmarks.backup_pipeline --size-mib 1024 --random-share 0.3
    uv run python -m benchmarks.backup_pipeline --environment sandbox  # the bucket of an environment block
    uv run python -m benchmarks.backup --pipeline ...                 # the same, through the main benchmark

The data is synthetic: lines of text (compressible, like a dump) mixed with random bytes (like compressed
blobs) in ``--random-share``. Memory is Python's peak allocation during the run (tracemalloc): it must stay
about ``part size x (parts in flight + 1)`` whatever ``--size-mib``; moto runs in its own process so its
storage does not count.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

from prefect_aws.s3 import S3Bucket
from pydantic import SecretStr

MiB = 2**20


def synthetic(total: int, random_share: float, chunk: int = MiB) -> Iterator[bytes]:
    line = b"2026-11-01T02:00:00Z|user 42|gpt-4|prompt: explain the retention policy of the backups|ok|0.0012\n"
    text = (line * (chunk // len(line) + 1))[:chunk]
    sent = 0
    n = 0
    while sent < total:
        size = min(chunk, total - sent)
        n += 1
        yield os.urandom(size) if (n * random_share) % 1 < random_share else text[:size]
        sent += size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_bucket(home: Path) -> tuple[S3Bucket, int]:
    import boto3
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from kernel import processes
    from sandbox.components import port_open, wait_until

    port = _free_port()
    pid = processes.spawn_daemon(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path=home / "moto.log"
    )
    wait_until(lambda: port_open("127.0.0.1", port), timeout_s=30, what="moto")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ).create_bucket(Bucket="bench")
    credentials = AwsCredentials(
        aws_access_key_id="x",
        aws_secret_access_key=SecretStr("x"),
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )
    return S3Bucket(bucket_name="bench", credentials=credentials), pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backup_pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--random-share", type=float, default=0.2)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--environment", help="use this environment block's bucket instead of a local moto")
    args = parser.parse_args(argv)

    from kernel import processes
    from tasks.backup.pipeline import UploadTarget, compress_and_upload, download_verified
    from tasks.storage import delete_stored

    with tempfile.TemporaryDirectory(prefix="rb-bench-") as tmp:
        home = Path(tmp)
        pid = None
        if args.environment:
            from blocks.environment import RunbookEnvironment

            env = RunbookEnvironment.load(args.environment)
            assert isinstance(env, RunbookEnvironment)
            bucket = env.backups
        else:
            bucket, pid = _moto_bucket(home)
        key = f"benchmarks/{uuid.uuid4().hex}/data.zst"
        try:
            target = UploadTarget(bucket=bucket, level=args.level, threads=args.threads)
            tracemalloc.start()
            started = time.perf_counter()
            obj = compress_and_upload(
                target, key, synthetic(args.size_mib * MiB, args.random_share), part="bench", format="synthetic"
            )
            up_s = time.perf_counter() - started
            _, up_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            started = time.perf_counter()
            download_verified(bucket, obj, home / "data")
            down_s = time.perf_counter() - started
            _, down_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"data            {obj.raw_size / MiB:10.1f} MiB raw, {obj.size / MiB:.1f} MiB stored ", end="")
            print(f"({obj.raw_size / max(obj.size, 1):.2f}x, zstd {args.level}, {obj.s3_parts} parts)")
            print(
                f"up              {up_s:10.2f} s   {obj.raw_size / MiB / up_s:8.1f} MiB/s raw   "
                f"peak {up_peak / MiB:.1f} MiB"
            )
            print(
                f"down + verify   {down_s:10.2f} s   {obj.raw_size / MiB / down_s:8.1f} MiB/s raw   "
                f"peak {down_peak / MiB:.1f} MiB"
            )
        finally:
            delete_stored(bucket, [key])
            if pid is not None:
                processes.stop_group(pid)


if __name__ == "__main__":
    main()
