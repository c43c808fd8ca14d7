"""The Kubernetes parts of a backup: the namespace's objects (Secrets encrypted client-side) and the application
logs of the last 24 hours, both streamed through :func:`~tasks.backup.pipeline.compress_and_upload`.

The seed's ``kubectl get all/configmaps/secrets -n production -o yaml`` and ``kubectl logs deployment/... --since=24h``,
through the Kubernetes API, for every namespace the runbooks cover. Keys (under the backup's prefix)::

    kubernetes/<namespace>/k8s-resources.yaml.zst     kubectl get all -o yaml (a v1 List)
    kubernetes/<namespace>/configmaps.yaml.zst        kubectl get configmaps -o yaml
    kubernetes/<namespace>/custom-resources.yaml.zst  custom resources `all` leaves out (cert-manager Certificates)
    kubernetes/<namespace>/secrets.yaml.enc.zst       the Secrets' List in an AES-256-GCM envelope (tasks.backup.crypto)
    logs/<namespace>/application.ndjson.zst           one JSON object per log line, every pod of every Deployment

Secrets are never written in clear: without a :class:`~blocks.encryption.BackupEncryptionKey` the part refuses them.
The encrypted object's ``format`` ends with :data:`ENCRYPTED_FORMAT_SUFFIX`, and the part's manifest entry
(``parts.kubernetes.encryption``) records the cipher, the key id and fingerprint and the encrypted keys.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import V1Pod
from kubernetes_asyncio.client.exceptions import ApiException
from prefect.context import TaskRunContext
from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel, Field, SecretStr

from blocks.encryption import BackupEncryptionKey
from blocks.kubernetes import KubernetesCluster
from kernel.errors import ConfigurationError
from kernel.retry import idempotent_task, read_task
from tasks.backup.crypto import CIPHER, KEY_WRAP, DataKey, decrypt_secrets
from tasks.backup.manifest import BackupObject, Manifest, PartResult
from tasks.backup.pipeline import UploadTarget, compress_and_upload, download_verified
from tasks.kubernetes._api import Kube, kube, list_metadata, run_logger, selector_string
from tasks.kubernetes.custom import CERTIFICATE, CustomResourceType
from tasks.kubernetes.export import export_custom_resources, export_resources
from tasks.kubernetes.logs import default_container

RESOURCES_FORMAT = "k8s-yaml-list"
#: custom resources backed up beside `kubectl get all` (a type whose CRD is not installed is skipped, and said)
DEFAULT_CUSTOM_RESOURCES = [CERTIFICATE]
SECRETS_FORMAT = "k8s-secrets-yaml"
ENCRYPTED_FORMAT_SUFFIX = "+aes-256-gcm-envelope"
LOGS_FORMAT = "k8s-pod-logs-ndjson"
LOG_WINDOW_S = 24 * 3600
CHUNK = 1 << 20
#: NDJSON is handed to the upload thread in batches of about this size (fewer thread hops, bounded memory)
LOG_BATCH = 256 * 1024
#: the upload thread waits at most this long for the API server's next chunk of a log
LOG_CHUNK_TIMEOUT_S = 300.0


def _attempt() -> int:
    ctx = TaskRunContext.get()
    return int(ctx.task_run.run_count) if ctx and ctx.task_run.run_count else 1


def is_encrypted(obj: BackupObject) -> bool:
    """Whether a stored object is an encrypted envelope (read it with :func:`read_encrypted`); manifests written
    before the ``encrypted`` field say it by their format only."""
    return obj.encrypted or obj.format.endswith(ENCRYPTED_FORMAT_SUFFIX)


def encrypted_objects(manifest: Manifest) -> list[BackupObject]:
    return [o for o in manifest.objects if is_encrypted(o)]


class NamespaceExport(BaseModel):
    namespace: str
    counts: dict[str, int] = Field(default_factory=dict, description="objects per kind, Secrets included")
    skipped: dict[str, str] = Field(default_factory=dict, description="kinds the server does not serve")
    objects: dict[str, str] = Field(default_factory=dict, description="resources/configmaps/secrets → key")


class EncryptionInfo(BaseModel):
    cipher: str = CIPHER
    key_wrap: str = KEY_WRAP
    key_id: str
    key_fingerprint: str
    objects: list[str] = Field(default_factory=list, description="keys of the encrypted objects")


class KubernetesInfo(BaseModel):
    namespaces: list[NamespaceExport]
    secrets: str = Field(description="'encrypted', or why they were left out")
    encryption: EncryptionInfo | None = None


class LogStream(BaseModel):
    namespace: str
    deployment: str
    pod: str
    container: str
    previous: bool = False
    lines: int = 0
    bytes: int = 0
    error: str | None = Field(default=None, description="why the API gave no log (e.g. container not started)")


class LogsInfo(BaseModel):
    namespaces: list[str]
    since_seconds: int
    since: datetime
    lines: int
    streams: list[LogStream]


def _chunks(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# ---------------------------------------------------------------------------------------- resources, secrets
@idempotent_task(name="backup-kubernetes", retries=1, retry_delay_seconds=[5], persist_result=False)
async def backup_kubernetes(
    cluster: KubernetesCluster,
    target: UploadTarget,
    prefix: str,
    encryption: BackupEncryptionKey | None,
    *,
    namespaces: list[str] | None = None,
    include_secrets: bool = True,
    custom_resources: list[CustomResourceType] | None = None,
    context: dict[str, str] | None = None,
) -> PartResult:
    """``kubectl get all``, ``configmaps``, the ``custom_resources`` (default: cert-manager Certificates) and
    ``secrets -o yaml`` of each of ``namespaces`` (default: the cluster block's) to
    ``<prefix>kubernetes/<namespace>/``. The Secrets are encrypted in this process under one random data key for
    the whole backup, wrapped by ``encryption``; with no key they are refused
    (:class:`ConfigurationError`), never written in clear. ``context`` (backup id, environment) is bound to the
    envelopes."""
    if include_secrets and encryption is None:
        raise ConfigurationError(
            "runbooks-environment",
            "backup_encryption",
            "no backup encryption key: Kubernetes Secrets are never backed up in clear",
            hint="reference a Runbooks Backup Encryption Key block from the environment",
        )
    logger = run_logger()
    started_at, started = datetime.now(UTC), time.perf_counter()
    names = list(dict.fromkeys(namespaces or [cluster.namespace]))
    data_key = DataKey(encryption) if include_secrets and encryption is not None else None
    exports: list[NamespaceExport] = []
    objects: list[BackupObject] = []
    target.progress.expect("kubernetes", len(names) * 3 * 64 * 1024)
    for ns in names:
        resources = await export_resources(cluster, ns, kinds=["all"], include_secrets=include_secrets)
        configmaps = await export_resources(cluster, ns, kinds=["configmaps"])
        custom = await export_custom_resources(
            cluster, DEFAULT_CUSTOM_RESOURCES if custom_resources is None else custom_resources, ns
        )
        info = NamespaceExport(
            namespace=ns,
            counts={**resources.counts, **configmaps.counts, **custom.counts},
            skipped={**resources.skipped, **configmaps.skipped, **custom.skipped},
        )
        base = f"{prefix}kubernetes/{ns}/"
        uploads: list[tuple[str, str, bytes, str]] = [
            ("resources", f"{base}k8s-resources.yaml.zst", resources.manifest.encode(), RESOURCES_FORMAT),
            ("configmaps", f"{base}configmaps.yaml.zst", configmaps.manifest.encode(), RESOURCES_FORMAT),
            ("custom", f"{base}custom-resources.yaml.zst", custom.manifest.encode(), RESOURCES_FORMAT),
        ]
        if data_key is not None and resources.secrets_manifest is not None:
            envelope = data_key.seal(
                resources.secrets_manifest,
                {**(context or {}), "namespace": ns, "content": "kubectl get secrets -o yaml"},
            )
            uploads.append(
                (
                    "secrets",
                    f"{base}secrets.yaml.enc.zst",
                    envelope.to_bytes(),
                    SECRETS_FORMAT + ENCRYPTED_FORMAT_SUFFIX,
                )
            )
        del resources
        for role, key, data, fmt in uploads:
            obj = await asyncio.to_thread(
                compress_and_upload, target, key, _chunks(data), part="kubernetes", format=fmt
            )
            if fmt.endswith(ENCRYPTED_FORMAT_SUFFIX):
                obj = obj.model_copy(update={"encrypted": True})
            objects.append(obj)
            info.objects[role] = key
        exports.append(info)
        logger.info(
            "Kubernetes namespace %s backed up: %s%s",
            ns,
            ", ".join(f"{n} {k}" for k, n in sorted(info.counts.items())),
            " (Secrets encrypted)" if "secrets" in info.objects else "",
        )
    target.progress.finish("kubernetes")
    encrypted = [o.key for o in objects if is_encrypted(o)]
    result = KubernetesInfo(
        namespaces=exports,
        secrets="encrypted" if data_key is not None else "not backed up (include_secrets=False)",
        encryption=(
            EncryptionInfo(key_id=data_key.key_id, key_fingerprint=data_key.key_fingerprint, objects=encrypted)
            if data_key is not None
            else None
        ),
    )
    return PartResult(
        name="kubernetes",
        objects=objects,
        info=result.model_dump(mode="json"),
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
        attempts=_attempt(),
    )


def read_encrypted(bucket: S3Bucket, obj: BackupObject, key: BackupEncryptionKey) -> SecretStr:
    """Download an encrypted object of a backup (size, SHA-256, zstd checked) and decrypt it: for a restore or
    an inspection. Blocking; the envelope touches disk only in a private temporary directory."""
    if not is_encrypted(obj):
        raise ValueError(f"{obj.key} is not an encrypted object (format {obj.format})")
    with tempfile.TemporaryDirectory(prefix="runbooks-envelope-") as tmp:
        path = download_verified(bucket, obj, Path(tmp) / "envelope.json")
        return decrypt_secrets(path.read_bytes(), key)


async def _count_metadata(k: Kube, path: str) -> int:
    """How many objects ``path`` lists, asking for their metadata only (a Secret's values are never fetched)."""
    return len((await list_metadata(k, path)).get("items") or [])


@read_task(name="plan-kubernetes-backup", retries=1, retry_delay_seconds=[2])
async def plan_kubernetes(cluster: KubernetesCluster, namespaces: list[str]) -> dict[str, dict[str, int]]:
    """For a dry run: per namespace, how many Deployments, pods, ConfigMaps and Secrets there are."""
    counts: dict[str, dict[str, int]] = {}
    async with kube(cluster, f"counting the objects of {', '.join(namespaces)}") as k:
        for ns in namespaces:
            counts[ns] = {
                "deployments": len((await k.apps.list_namespaced_deployment(ns)).items),
                "pods": len((await k.core.list_namespaced_pod(ns)).items),
                "configmaps": len((await k.core.list_namespaced_config_map(ns)).items),
                "secrets": await _count_metadata(k, f"/api/v1/namespaces/{ns}/secrets"),
            }
    return counts


# -------------------------------------------------------------------------------------------------- logs
def _streams(pods: list[V1Pod], namespace: str, deployment: str) -> list[LogStream]:
    streams: list[LogStream] = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        if pod.metadata.deletion_timestamp is not None:
            continue
        restarts = (
            {cs.name: cs.restart_count or 0 for cs in (pod.status.container_statuses or [])} if pod.status else {}
        )
        names = [default_container(pod)] + [c.name for c in pod.spec.containers if c.name != default_container(pod)]
        for container in names:
            common = {
                "namespace": namespace,
                "deployment": deployment,
                "pod": pod.metadata.name,
                "container": container,
            }
            if restarts.get(container, 0) > 0:  # the crashed run's last lines are what an incident needs
                streams.append(LogStream(**common, previous=True))
            streams.append(LogStream(**common))
    return streams


def _split_timestamp(line: str) -> tuple[str | None, str]:
    stamp, sep, rest = line.partition(" ")
    if sep and len(stamp) >= 20 and stamp[4] == "-" and stamp[10] == "T" and stamp.endswith("Z"):
        return stamp, rest
    return None, line


def _record(stream: LogStream, line: str) -> bytes:
    stamp, message = _split_timestamp(line)
    return (
        json.dumps(
            {
                "time": stamp,
                "namespace": stream.namespace,
                "deployment": stream.deployment,
                "pod": stream.pod,
                "container": stream.container,
                "previous": stream.previous,
                "message": message,
            },
            ensure_ascii=False,
        )
        + "\n"
    ).encode()


async def _log_ndjson(k: Kube, streams: list[LogStream], since_seconds: int) -> AsyncIterator[bytes]:
    """Each stream's log read from the API server in chunks, as NDJSON batches: never a whole log in memory."""
    batch = bytearray()
    for stream in streams:
        response = await k.api.call_api(
            f"/api/v1/namespaces/{stream.namespace}/pods/{stream.pod}/log",
            "GET",
            query_params=[
                ("container", stream.container),
                ("sinceSeconds", since_seconds),
                ("timestamps", "true"),
                *([("previous", "true")] if stream.previous else []),
            ],
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        async with response:
            if response.status >= 300:
                body = await response.read()
                if response.status in (400, 404):  # not started yet, no previous run, pod gone meanwhile
                    stream.error = f"{response.status}: {body.decode(errors='replace')[:200]}"
                    continue
                err = ApiException(status=response.status, reason=response.reason)
                err.body = body
                raise err
            pending = b""
            async for chunk in response.content.iter_chunked(64 * 1024):
                stream.bytes += len(chunk)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    batch += _record(stream, raw.decode(errors="replace"))
                    stream.lines += 1
                if len(batch) >= LOG_BATCH:
                    yield bytes(batch)
                    batch.clear()
            if pending:
                batch += _record(stream, pending.decode(errors="replace"))
                stream.lines += 1
    if batch:
        yield bytes(batch)


def _pull(agen: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, stop: threading.Event) -> Iterator[bytes]:
    """An async generator running on ``loop``, consumed from a worker thread (the upload's), chunk by chunk."""

    async def step() -> bytes:
        return await agen.__anext__()

    try:
        while not stop.is_set():
            future = asyncio.run_coroutine_threadsafe(step(), loop)
            try:
                yield future.result(timeout=LOG_CHUNK_TIMEOUT_S)
            except StopAsyncIteration:
                return
            except BaseException:
                future.cancel()
                raise
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=30)
            except Exception:  # noqa: BLE001 - cleanup of a stream that already failed or was cancelled
                pass


@idempotent_task(name="backup-application-logs", retries=1, retry_delay_seconds=[5], persist_result=False)
async def backup_application_logs(
    cluster: KubernetesCluster,
    target: UploadTarget,
    prefix: str,
    *,
    namespaces: list[str] | None = None,
    since_seconds: int = LOG_WINDOW_S,
    deployments: list[str] | None = None,
) -> PartResult:
    """The seed's ``kubectl logs deployment/ai-multimodel-api --since=24h``, for every pod (and the previous run of
    a restarted container) of every Deployment in ``namespaces`` (default: the cluster block's), streamed as
    NDJSON (``time``, ``namespace``, ``deployment``, ``pod``, ``container``, ``previous``, ``message``) to
    ``<prefix>logs/<namespace>/application.ndjson.zst``. ``deployments`` keeps only those Deployments' logs (the
    weekly maintenance archives the API's)."""
    logger = run_logger()
    started_at, started = datetime.now(UTC), time.perf_counter()
    names = list(dict.fromkeys(namespaces or [cluster.namespace]))
    all_streams: list[LogStream] = []
    objects: list[BackupObject] = []
    loop = asyncio.get_running_loop()
    for ns in names:
        async with kube(cluster, f"reading the application logs of namespace {ns}") as k:
            streams: list[LogStream] = []
            for dep in sorted((await k.apps.list_namespaced_deployment(ns)).items, key=lambda d: d.metadata.name):
                if deployments is not None and dep.metadata.name not in deployments:
                    continue
                selector = selector_string(dep.spec.selector)
                pods = (await k.core.list_namespaced_pod(ns, label_selector=selector)).items
                streams.extend(_streams(list(pods), ns, dep.metadata.name))
            target.progress.expect("logs", max(1, len(streams)) * 2**20)
            stop = threading.Event()
            upload = asyncio.ensure_future(
                asyncio.to_thread(
                    compress_and_upload,
                    target,
                    f"{prefix}logs/{ns}/application.ndjson.zst",
                    _pull(_log_ndjson(k, streams, since_seconds), loop, stop),
                    part="logs",
                    format=LOGS_FORMAT,
                    stop=stop,
                )
            )
            try:
                objects.append(await upload)
            except BaseException:
                stop.set()  # a cancelled run: the upload thread stops at its next chunk
                await asyncio.gather(upload, return_exceptions=True)
                raise
        all_streams.extend(streams)
        logger.info(
            "Application logs of %s backed up: %d lines from %d container log(s) of %d Deployment(s)%s",
            ns,
            sum(s.lines for s in streams),
            len(streams),
            len({s.deployment for s in streams}),
            f", {sum(1 for s in streams if s.error)} without a log" if any(s.error for s in streams) else "",
        )
    target.progress.finish("logs")
    info = LogsInfo(
        namespaces=names,
        since_seconds=since_seconds,
        since=datetime.fromtimestamp(started_at.timestamp() - since_seconds, UTC),
        lines=sum(s.lines for s in all_streams),
        streams=all_streams,
    )
    return PartResult(
        name="logs",
        objects=objects,
        info=info.model_dump(mode="json"),
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
        attempts=_attempt(),
    )


def read_log_records(path: Path) -> Iterable[dict[str, Any]]:
    """The records of a downloaded (decompressed) ``application.ndjson``."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
