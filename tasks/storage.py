"""Tasks on S3 (prefect-aws ``S3Bucket``; any S3 API: AWS, MinIO, moto)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel

from kernel.errors import ConfigurationError, StorageError
from kernel.retry import read_task


class BucketHealth(BaseModel):
    bucket: str
    endpoint: str
    newest_key: str | None
    newest_modified: datetime | None


#: botocore's own retries for every S3 request of this module. Standard mode retries connection errors, timeouts,
#: throttling and 5xx with exponential backoff and jitter, and re-sends the same request (for a multipart upload,
#: the same part with the same bytes), so a transient failure of one part upload is retried right where it
#: happened. A loop of our own on top of it would multiply the attempts (ours x botocore's) and the waits.
#: A ``retries`` entry in the block's ``aws_client_parameters.config`` takes precedence.
S3_RETRIES: dict[str, Any] = {"mode": "standard", "max_attempts": 4}


def s3_client(bucket: S3Bucket) -> Any:
    """The bucket's S3 client (prefect-aws caches it), with :data:`S3_RETRIES` unless the block sets its own."""
    credentials = bucket.credentials
    params = credentials.aws_client_parameters
    config = dict(params.config or {})
    if "retries" not in config:
        config["retries"] = dict(S3_RETRIES)
        params = params.model_copy(update={"config": config})
        credentials = credentials.model_copy(update={"aws_client_parameters": params})
    return credentials.get_s3_client()


def _endpoint(bucket: S3Bucket) -> str:
    params = getattr(bucket.credentials, "aws_client_parameters", None)
    return str(getattr(params, "endpoint_url", None) or "aws")


@read_task
async def check_bucket(bucket: S3Bucket, prefix: str = "") -> BucketHealth:
    """``aws s3api head-bucket`` and the newest object under ``prefix`` (the weekly check of the latest backup)."""

    def probe() -> BucketHealth:
        s3 = s3_client(bucket)
        s3.head_bucket(Bucket=bucket.bucket_name)
        newest = None
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket_name, Prefix=prefix):
            for obj in page.get("Contents", []):
                if newest is None or obj["LastModified"] > newest["LastModified"]:
                    newest = obj
        return BucketHealth(
            bucket=bucket.bucket_name,
            endpoint=_endpoint(bucket),
            newest_key=newest["Key"] if newest else None,
            newest_modified=newest["LastModified"] if newest else None,
        )

    try:
        return await asyncio.to_thread(probe)
    except EndpointConnectionError as err:
        raise ConfigurationError(
            "s3-bucket",
            "credentials.aws_client_parameters.endpoint_url",
            f"cannot reach {_endpoint(bucket)}",
            transient=True,
        ) from err
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in {"404", "NoSuchBucket"}:
            raise ConfigurationError(
                "s3-bucket", "bucket_name", f"bucket {bucket.bucket_name!r} does not exist"
            ) from err
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise ConfigurationError(
                "aws-credentials",
                "aws_secret_access_key",
                f"access to {bucket.bucket_name!r} refused ({code})",
            ) from err
        raise StorageError(f"S3 {code or 'error'} on {bucket.bucket_name!r}: {err}", status_code=status) from err
    except BotoCoreError as err:
        raise StorageError(f"S3 client error on {bucket.bucket_name!r}: {err}") from err


# --------------------------------------------------------------------------------------------------------------
# Streaming transfers for backups: multipart upload of a byte stream, streamed download, listing, deletion.
# Blocking (boto3) functions meant to run in a worker thread (``asyncio.to_thread``); keys are relative to the
# block's ``bucket_folder``.

#: S3 multipart part size of the first parts (S3's minimum is 5 MiB; 5 MiB parts made the sandbox's moto burn twice
#: the CPU on the same backup, and did not lower the flow's peak RSS: benchmarks/backup.py)
PART_SIZE = 8 * 2**20
#: every this many parts, parts grow by another PART_SIZE: S3 allows 10,000 parts per object, which then hold
#: 429 GiB (fixed 8 MiB parts would stop at 78 GiB) while a stream under 7.8 GiB never uses more than 8 MiB parts
PARTS_PER_STEP = 1000


def part_size_for(index: int, base: int = PART_SIZE) -> int:
    """Size of part ``index`` (0-based) of a streamed upload: ``base`` for the first 1,000, then one ``base`` more
    every 1,000 parts."""
    return base * (1 + index // PARTS_PER_STEP)


#: Error codes of S3 (and compatible servers) worth another try.
_TRANSIENT_S3_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "Throttling", "RequestTimeTooSkewed"}
)


class UploadedObject(BaseModel):
    """An object written by :func:`upload_stream`: its size and the SHA-256 of exactly the stored bytes."""

    key: str
    size: int
    sha256: str
    parts: int
    etag: str


class StoredObject(BaseModel):
    key: str
    size: int
    last_modified: datetime


def object_key(bucket: S3Bucket, key: str) -> str:
    """``key`` inside the block's ``bucket_folder`` (if any)."""
    folder = (bucket.bucket_folder or "").strip("/")
    return f"{folder}/{key}" if folder else key


def _relative_key(bucket: S3Bucket, full_key: str) -> str:
    folder = (bucket.bucket_folder or "").strip("/")
    return full_key[len(folder) + 1 :] if folder and full_key.startswith(folder + "/") else full_key


def is_transient_s3(err: BaseException) -> bool:
    """Network trouble, timeouts, throttling and 5xx: another try may succeed."""
    from botocore.exceptions import HTTPClientError, ResponseStreamingError

    if isinstance(err, HTTPClientError | ResponseStreamingError):
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_S3_CODES or status >= 500
    return False


def storage_error(bucket: S3Bucket, action: str, err: BaseException) -> StorageError:
    """One actionable line for a boto3 failure while doing ``action`` (e.g. ``"upload of s3://b/k"``)."""
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", "") or "error")
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0) or None
        hint = None
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            hint = "check the AWS credentials block and the bucket policy"
        elif code in {"404", "NoSuchBucket"}:
            hint = f"does the bucket {bucket.bucket_name!r} exist?"
        return StorageError(
            f"{action} failed: S3 {code}: {err}", hint=hint, status_code=status, transient=is_transient_s3(err)
        )
    return StorageError(
        f"{action} failed: {type(err).__name__}: {err}",
        hint=f"is {_endpoint(bucket)} reachable?" if is_transient_s3(err) else None,
        transient=is_transient_s3(err),
    )


def _upload_part(
    s3: Any, bucket: S3Bucket, key: str, upload_id: str, number: int, data: bytes | bytearray
) -> dict[str, Any]:
    """One part; botocore retries it on transient errors (:data:`S3_RETRIES`)."""
    response = s3.upload_part(Bucket=bucket.bucket_name, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
    part = {"PartNumber": number, "ETag": response["ETag"]}
    for checksum in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256"):
        if response.get(checksum):
            part[checksum] = response[checksum]
    return part


def upload_stream(
    bucket: S3Bucket,
    key: str,
    chunks: Iterable[bytes],
    *,
    part_size: int = PART_SIZE,
    max_in_flight: int = 2,
    content_type: str = "application/octet-stream",
    metadata: Mapping[str, str] | None = None,
) -> UploadedObject:
    """S3 multipart upload of a byte stream of unknown length, with memory bounded by
    ``part_size * (max_in_flight + 2)`` for streams up to 1,000 parts (7.8 GiB at 8 MiB), whatever their size;
    parts then grow step by step (:func:`part_size_for`) so an object can reach 429 GiB within S3's 10,000 parts.

    Parts of ``part_size`` bytes are uploaded by ``max_in_flight`` threads while the stream is read; each part
    is retried on transient errors by botocore itself (:data:`S3_RETRIES`). On any failure (S3 or the stream itself) the
    multipart upload is aborted, so no object and no stored parts remain; the stream's own exception is
    re-raised as it is, S3 failures become :class:`StorageError` naming the object.
    """
    s3 = s3_client(bucket)
    full_key = object_key(bucket, key)
    where = f"s3://{bucket.bucket_name}/{full_key}"
    try:
        upload_id = s3.create_multipart_upload(
            Bucket=bucket.bucket_name, Key=full_key, ContentType=content_type, Metadata=dict(metadata or {})
        )["UploadId"]
    except (BotoCoreError, ClientError) as err:
        raise storage_error(bucket, f"upload of {where}", err) from err
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray()
    pending: deque[Future[dict[str, Any]]] = deque()
    done_parts: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="s3-part")

    def submit(data: bytes | bytearray) -> None:
        while len(pending) >= max_in_flight:
            done_parts.append(pending.popleft().result())
        number = len(done_parts) + len(pending) + 1
        pending.append(pool.submit(_upload_part, s3, bucket, full_key, upload_id, number, data))

    try:
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= (size_now := part_size_for(len(done_parts) + len(pending), part_size)):
                    # the buffer itself becomes the part (no 8 MiB copy): only the overshoot, less than one
                    # chunk, moves to a fresh buffer; the part is never touched again once submitted
                    rest = buffer[size_now:]
                    del buffer[size_now:]
                    part, buffer = buffer, rest
                    submit(part)
                    del part
            if buffer or not (done_parts or pending):
                submit(bytes(buffer))
            buffer.clear()
            while pending:
                done_parts.append(pending.popleft().result())
            response = s3.complete_multipart_upload(
                Bucket=bucket.bucket_name, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": done_parts}
            )
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
    except BaseException as err:
        abort_error = _abort(s3, bucket.bucket_name, full_key, upload_id)
        if isinstance(err, BotoCoreError | ClientError):
            failure = storage_error(bucket, f"upload of {where} (part {len(done_parts) + 1})", err)
            failure.transient = False  # botocore already tried the part as often as its retry config allows
            if abort_error is not None:
                failure = StorageError(
                    f"{failure.message}; the incomplete upload {upload_id} could not be aborted either "
                    f"({type(abort_error).__name__})",
                    hint="an AbortIncompleteMultipartUpload lifecycle rule on the bucket removes it",
                    transient=False,
                )
            raise failure from err
        raise
    return UploadedObject(
        key=key, size=size, sha256=digest.hexdigest(), parts=len(done_parts), etag=str(response.get("ETag", ""))
    )


def _abort(s3: Any, bucket_name: str, key: str, upload_id: str) -> BaseException | None:
    """Abort a multipart upload (its stored parts are deleted); the error if that failed too."""
    try:
        s3.abort_multipart_upload(Bucket=bucket_name, Key=key, UploadId=upload_id)
    except (BotoCoreError, ClientError) as err:
        return err
    return None


def read_object(bucket: S3Bucket, key: str, *, chunk_size: int = 2**20) -> Iterator[bytes]:
    """Stream an object's bytes; a missing object or a broken connection is a :class:`StorageError`."""
    s3 = s3_client(bucket)
    where = f"s3://{bucket.bucket_name}/{object_key(bucket, key)}"
    try:
        body = s3.get_object(Bucket=bucket.bucket_name, Key=object_key(bucket, key))["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()
    except (BotoCoreError, ClientError) as err:
        raise storage_error(bucket, f"download of {where}", err) from err


def get_bytes(bucket: S3Bucket, key: str) -> bytes | None:
    """A small object's content, or None when there is no such object."""
    s3 = s3_client(bucket)
    try:
        return bytes(s3.get_object(Bucket=bucket.bucket_name, Key=object_key(bucket, key))["Body"].read())
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise storage_error(bucket, f"read of s3://{bucket.bucket_name}/{object_key(bucket, key)}", err) from err
    except BotoCoreError as err:
        raise storage_error(bucket, f"read of s3://{bucket.bucket_name}/{object_key(bucket, key)}", err) from err


def put_bytes(bucket: S3Bucket, key: str, data: bytes, *, content_type: str = "application/json") -> None:
    s3 = s3_client(bucket)
    try:
        s3.put_object(Bucket=bucket.bucket_name, Key=object_key(bucket, key), Body=data, ContentType=content_type)
    except (BotoCoreError, ClientError) as err:
        raise storage_error(bucket, f"write of s3://{bucket.bucket_name}/{object_key(bucket, key)}", err) from err


def list_stored(bucket: S3Bucket, prefix: str) -> list[StoredObject]:
    """Every object under ``prefix`` (keys relative to the bucket folder)."""
    s3 = s3_client(bucket)
    found = []
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket.bucket_name, Prefix=object_key(bucket, prefix)
        )
        for page in pages:
            for obj in page.get("Contents", []):
                found.append(
                    StoredObject(
                        key=_relative_key(bucket, obj["Key"]), size=obj["Size"], last_modified=obj["LastModified"]
                    )
                )
    except (BotoCoreError, ClientError) as err:
        raise storage_error(bucket, f"listing of s3://{bucket.bucket_name}/{object_key(bucket, prefix)}", err) from err
    return found


def delete_stored(bucket: S3Bucket, keys: Sequence[str]) -> None:
    """Delete objects (in the given order, batches of 1000); any per-key error is a :class:`StorageError`."""
    s3 = s3_client(bucket)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": object_key(bucket, key)} for key in keys[start : start + 1000]]
        try:
            response = s3.delete_objects(Bucket=bucket.bucket_name, Delete={"Objects": batch, "Quiet": True})
        except (BotoCoreError, ClientError) as err:
            raise storage_error(bucket, f"deletion in s3://{bucket.bucket_name}", err) from err
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"deletion in s3://{bucket.bucket_name} failed for {len(errors)} object(s), "
                f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
