"""The steps of ``renew-certificate`` (the seed's "Certificate Renewal") that are not a single Kubernetes call:
keeping an encrypted copy of the Secret before it is deleted, reading it back, and the two waits (the new
certificate in the Secret; the Ingress serving it), each trigger → wait with a timeout and a poll interval → result,
with a typed timeout error.

The copy is encrypted like the backups' Secrets (:mod:`tasks.backup.crypto`: a data key of its own, wrapped by the
environment's backup encryption key) and stored in the backup bucket under
``<copies_prefix>/<environment>/<namespace>/<secret>/<UTC time>.secret.json.enc``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel, SecretStr

from blocks.encryption import BackupEncryptionKey
from blocks.kubernetes import KubernetesCluster
from kernel.errors import CertificateError
from kernel.retry import idempotent_task, read_task
from tasks.backup.crypto import decrypt_secrets, encrypt_secrets
from tasks.kubernetes.secrets import SecretCopy, TLSSecret, read_tls_secret
from tasks.storage import get_bytes, put_bytes
from tasks.tls import ServedCertificate, parse_certificate_pem, read_served_certificate


class RenewalTimeoutError(CertificateError):
    """What was waited for did not come within the timeout."""


class SavedCopy(BaseModel):
    key: str
    key_id: str
    secret: str
    namespace: str
    resource_version: str


def copy_key(prefix: str, environment: str, namespace: str, secret: str, at: datetime | None = None) -> str:
    stamp = (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{prefix.strip('/')}/{environment}/{namespace}/{secret}/{stamp}.secret.json.enc"


@idempotent_task(persist_result=False)
async def save_secret_copy(
    bucket: S3Bucket, encryption: BackupEncryptionKey, copy: SecretCopy, key: str, environment: str
) -> SavedCopy:
    """Encrypt ``copy`` (AES-256-GCM under a fresh data key wrapped by ``encryption``) and store it at ``key``;
    then read it back and open it, so a copy that could not be restored is never taken for a kept one."""
    envelope = encrypt_secrets(
        copy.manifest,
        encryption,
        context={"environment": environment, "namespace": copy.namespace, "secret": copy.name,
                 "content": "kubectl get secret -o json"},
    )  # fmt: skip
    await asyncio.to_thread(put_bytes, bucket, key, envelope.to_bytes())
    stored = await asyncio.to_thread(get_bytes, bucket, key)
    if stored is None or decrypt_secrets(stored, encryption).get_secret_value() != copy.manifest.get_secret_value():
        raise CertificateError(
            f"the copy of Secret {copy.namespace}/{copy.name} at {key} does not read back as written",
            hint="check the backup bucket; nothing was deleted",
            transient=False,
        )
    return SavedCopy(
        key=key,
        key_id=encryption.key_id,
        secret=copy.name,
        namespace=copy.namespace,
        resource_version=copy.resource_version,
    )


@read_task(persist_result=False)
async def load_secret_copy(bucket: S3Bucket, encryption: BackupEncryptionKey, key: str) -> SecretStr:
    """The Secret's manifest from a copy :func:`save_secret_copy` stored."""
    stored = await asyncio.to_thread(get_bytes, bucket, key)
    if stored is None:
        raise CertificateError(
            f"no copy of the Secret at {key}", hint="list the bucket's copies prefix", transient=False
        )
    return decrypt_secrets(stored, encryption)


@read_task(retries=0)
async def wait_for_new_certificate(
    cluster: KubernetesCluster, secret: str, old_sha256: str | None, *, timeout_s: float, poll_s: float
) -> TLSSecret:
    """Wait until Secret ``secret`` exists with another certificate than ``old_sha256``; a
    :class:`RenewalTimeoutError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    seen = "no Secret"
    while True:
        found = await read_tls_secret.fn(cluster, secret)
        if found is not None:
            info = parse_certificate_pem(found.certificate_pem, f"tls.crt of Secret {secret}")
            if info.sha256 != old_sha256:
                return found
            seen = f"the old certificate (serial {info.serial})"
        if time.monotonic() >= deadline:
            raise RenewalTimeoutError(
                f"no new certificate in Secret {cluster.namespace}/{secret} within {timeout_s:.0f}s (found {seen})",
                hint="look at the Certificate's conditions and cert-manager's log (kubectl describe certificate)",
                transient=False,
            )
        await asyncio.sleep(poll_s)


@read_task(retries=0)
async def wait_until_served(
    hosts: list[str],
    address: str | None,
    sha256: str,
    *,
    port: int,
    handshake_timeout_s: float,
    timeout_s: float,
    poll_s: float,
) -> list[ServedCertificate]:
    """Wait until every host is served the certificate ``sha256`` (a TLS handshake each poll, as the seed's
    ``curl -I https://<host>/health``); a :class:`RenewalTimeoutError` naming the hosts that are not, after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        served: list[ServedCertificate] = []
        behind: list[str] = []
        for host in hosts:
            try:
                got = await read_served_certificate.fn(host, address, port=port, timeout_s=handshake_timeout_s)
            except CertificateError as err:
                behind.append(f"{host}: {err.message}")
                continue
            served.append(got)
            if got.certificate.sha256 != sha256:
                behind.append(f"{host}: still serial {got.certificate.serial}")
        if not behind:
            return served
        if time.monotonic() >= deadline:
            raise RenewalTimeoutError(
                f"the Ingress does not serve the new certificate within {timeout_s:.0f}s: " + "; ".join(behind),
                hint="the Secret is renewed: check that the Ingress controller reloads it",
                transient=False,
            )
        await asyncio.sleep(poll_s)
