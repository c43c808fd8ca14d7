"""tasks/storage.py against the sandbox's S3 (moto): streamed multipart uploads, their retries and failures."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect_aws.s3 import S3Bucket

from blocks.environment import RunbookEnvironment
from kernel import processes
from kernel.errors import StorageError
from sandbox.manager import Sandbox
from tasks.storage import PART_SIZE, S3_RETRIES, get_bytes, object_key, part_size_for, s3_client, upload_stream
from tests.conftest import TEST_ENVIRONMENT
from tests.faults import FaultProxy

MiB = 2**20


def proxied_bucket(bucket: S3Bucket, proxy: FaultProxy, max_attempts: int | None = None) -> S3Bucket:
    """The same bucket and credentials, reached through ``proxy``; botocore's retries as :func:`s3_client` sets them
    unless ``max_attempts`` says otherwise."""
    credentials = bucket.credentials.model_copy(deep=True)
    params = credentials.aws_client_parameters
    params.endpoint_url = proxy.url
    params.config = {"connect_timeout": 2, "read_timeout": 10}
    if max_attempts is not None:
        params.config["retries"] = {"mode": "standard", "max_attempts": max_attempts}
    return S3Bucket(bucket_name=bucket.bucket_name, credentials=credentials)


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    return RunbookEnvironment.load(TEST_ENVIRONMENT)


@pytest.fixture()
def s3_proxy(env: RunbookEnvironment) -> Iterator[FaultProxy]:
    endpoint = str(env.backups.credentials.aws_client_parameters.endpoint_url)
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    yield proxy
    proxy.release.set()
    proxy.kill()


def random_chunks(total: int, chunk: int = MiB) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sent += size
        yield os.urandom(size)


def pending_uploads(bucket: S3Bucket, key: str) -> list[str]:
    s3 = s3_client(bucket)
    uploads = s3.list_multipart_uploads(Bucket=bucket.bucket_name, Prefix=object_key(bucket, key)).get("Uploads", [])
    return [u["UploadId"] for u in uploads]


def exists(bucket: S3Bucket, key: str) -> bool:
    return get_bytes(bucket, key) is not None


# ----------------------------------------------------------------------------------------------------------
# multipart upload


def test_upload_stream_multipart_size_and_sha256(env: RunbookEnvironment) -> None:
    key = f"rb-test/{uuid.uuid4().hex}/blob"
    data = os.urandom(20 * MiB + 123)
    uploaded = upload_stream(env.backups, key, (data[i : i + MiB] for i in range(0, len(data), MiB)), part_size=8 * MiB)
    assert uploaded.parts == 3 and uploaded.size == len(data)
    assert uploaded.sha256 == hashlib.sha256(data).hexdigest()
    assert get_bytes(env.backups, key) == data


def test_parts_grow_only_past_a_thousand() -> None:
    sizes = [part_size_for(i) for i in range(10_000)]
    assert sizes[0] == sizes[999] == PART_SIZE == 8 * MiB  # memory stays flat for the first 7.8 GiB
    assert sizes[1000] == 2 * PART_SIZE and sizes[9999] == 10 * PART_SIZE
    assert sum(sizes) >= 429 * 2**30  # S3's 10,000 parts hold a 429 GiB object (78 GiB with fixed parts)


def test_upload_part_cut_once_is_retried(env: RunbookEnvironment, s3_proxy: FaultProxy) -> None:
    s3_proxy.cut_up_after, s3_proxy.cuts_left = 2 * MiB, 1
    key = f"rb-test/{uuid.uuid4().hex}/blob"
    bucket = proxied_bucket(env.backups, s3_proxy)  # the module's own retry configuration (S3_RETRIES)
    sent: list[int] = []  # every UploadPart request botocore sends, retries included

    def count(request: Any, **_: Any) -> None:
        sent.append(int(request.headers.get("Content-Length") or 0))

    s3_client(bucket).meta.events.register("before-send.s3.UploadPart", count)
    uploaded = upload_stream(bucket, key, random_chunks(10 * MiB))
    assert s3_proxy.cut_count == 1
    assert len(sent) == 3  # two parts, one of them sent twice: botocore retried the part the proxy cut
    assert uploaded.parts == 2
    assert exists(env.backups, key)


def test_upload_failing_for_good_aborts_and_leaves_nothing(env: RunbookEnvironment, s3_proxy: FaultProxy) -> None:
    s3_proxy.cut_up_after = 2 * MiB  # every request bigger than that (every part) is reset
    key = f"rb-test/{uuid.uuid4().hex}/blob"
    with pytest.raises(StorageError, match=f"upload of s3://{env.backups.bucket_name}/{key}") as info:
        upload_stream(proxied_bucket(env.backups, s3_proxy), key, random_chunks(10 * MiB))
    assert s3_proxy.cut_count >= S3_RETRIES["max_attempts"]  # the first part, tried as often as botocore may
    assert not info.value.transient
    assert not exists(env.backups, key)
    assert pending_uploads(env.backups, key) == []  # aborted: no stored parts left behind


def test_server_dying_mid_upload_fails_clearly(env: RunbookEnvironment, s3_proxy: FaultProxy) -> None:
    s3_proxy.die_after_up = 3 * MiB
    key = f"rb-test/{uuid.uuid4().hex}/blob"
    started = time.monotonic()
    with pytest.raises(StorageError, match="could not be aborted either") as info:
        upload_stream(proxied_bucket(env.backups, s3_proxy, max_attempts=2), key, random_chunks(12 * MiB))
    assert "upload of s3://" in str(info.value) and key in str(info.value)
    assert time.monotonic() - started < 30
    assert not exists(env.backups, key)


def test_failing_source_aborts_the_upload(env: RunbookEnvironment) -> None:
    key = f"rb-test/{uuid.uuid4().hex}/blob"

    def source() -> Iterator[bytes]:
        yield from random_chunks(9 * MiB)
        raise processes.ProcessError("pg_dump exited 1: connection lost")

    with pytest.raises(processes.ProcessError, match="connection lost"):
        upload_stream(env.backups, key, source())
    assert not exists(env.backups, key)
    assert pending_uploads(env.backups, key) == []
