"""Tasks on S3 (prefect-aws ``S3Bucket``; any S3 API: AWS, MinIO, moto)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from prefect import task
from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel

from runbooks.errors import ConfigurationError, StorageError
from runbooks.retry import retry_on_transient


class BucketHealth(BaseModel):
    bucket: str
    endpoint: str
    newest_key: str | None
    newest_modified: datetime | None


def _endpoint(bucket: S3Bucket) -> str:
    params = getattr(bucket.credentials, "aws_client_parameters", None)
    return str(getattr(params, "endpoint_url", None) or "aws")


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_on_transient)
async def check_bucket(bucket: S3Bucket, prefix: str = "") -> BucketHealth:
    """``aws s3api head-bucket`` and the newest object under ``prefix`` (the weekly check of the latest backup)."""

    def probe() -> BucketHealth:
        s3 = bucket.credentials.get_s3_client()
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
