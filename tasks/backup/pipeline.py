"""The streaming path every part of a backup takes, and the way back.

Up: a stream of bytes (pg_dump's stdout, the RDB, ...) → zstd (streaming, frame checksum on) → SHA-256 and
size of the compressed bytes → S3 multipart upload in 8 MiB parts. Down: the object → SHA-256 and size
checked against the manifest → zstd decompression (its frame checksum checked too) → a local file. Memory
stays bounded by a few parts whatever the size of the data; both directions are blocking and meant for a
worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Generator, Iterable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zstandard
from prefect_aws.s3 import S3Bucket

from tasks.backup.manifest import BackupCancelledError, BackupObject, CorruptObjectError
from tasks.storage import PART_SIZE, read_object, upload_stream

ZSTD_LEVEL = 3


@dataclass
class Progress:
    """Bytes read per part against an estimate, shared by the worker threads and the progress artifact."""

    estimates: dict[str, int] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def expect(self, part: str, size: int) -> None:
        with self._lock:
            self.estimates[part] = max(size, 1)
            self.read[part] = 0
            self.finished.discard(part)

    def add(self, part: str, size: int) -> None:
        with self._lock:
            self.read[part] = self.read.get(part, 0) + size

    def finish(self, part: str) -> None:
        with self._lock:
            self.finished.add(part)

    def percent(self, parts: Iterable[str]) -> float:
        """0-100 over ``parts``: a finished part counts fully, a running one up to 95% of its estimate."""
        names = list(parts)
        if not names:
            return 100.0
        with self._lock:
            total = 0.0
            for name in names:
                if name in self.finished:
                    total += 1.0
                elif name in self.estimates:
                    total += min(self.read.get(name, 0) / self.estimates[name], 0.95)
        return round(100.0 * total / len(names), 1)


@dataclass
class UploadTarget:
    """Where a part's stream goes and how: the bucket, the backup's cancel switch and progress."""

    bucket: S3Bucket
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)
    level: int = ZSTD_LEVEL
    #: zstd worker threads (0: compress in the part's own thread; level 3 outruns the upload, and
    #: multithreaded zstd holds several MiB more per part)
    threads: int = 0
    part_size: int = PART_SIZE
    #: S3 part uploads in flight per object while the next part is read and compressed (memory: about
    #: ``part_size x (uploads_in_flight + 1)`` per part being backed up)
    uploads_in_flight: int = 2


def compress_and_upload(
    target: UploadTarget,
    key: str,
    source: Iterable[bytes],
    *,
    part: str,
    format: str,
    stop: threading.Event | None = None,
) -> BackupObject:
    """Stream ``source`` through zstd into ``key``; returns the manifest entry (size and SHA-256 of the stored
    bytes). ``source`` is closed in every case (a child process behind it is stopped on failure); the upload
    stops with :class:`BackupCancelledError` as soon as another part of the backup failed (``target.cancel``)
    or the caller gave up on it (``stop``)."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    raw_size = 0
    compressor = zstandard.ZstdCompressor(level=target.level, threads=target.threads, write_checksum=True)

    def stopped() -> bool:
        return target.cancel.is_set() or (stop is not None and stop.is_set())

    def compressed() -> Generator[bytes, None, None]:
        nonlocal raw_size
        zstd = compressor.compressobj()
        try:
            for chunk in source:
                if stopped():
                    raise BackupCancelledError(part)
                raw_size += len(chunk)
                target.progress.add(part, len(chunk))
                out = zstd.compress(chunk)
                if out:
                    yield out
        except BackupCancelledError:
            raise
        except Exception as err:
            if stopped():  # the source noticed the stop first (a child process killed on purpose)
                raise BackupCancelledError(part) from err
            raise
        if stopped():
            raise BackupCancelledError(part)
        yield zstd.flush()

    with ExitStack() as stack:
        close = getattr(source, "close", None)
        if close is not None:
            stack.callback(close)
        stream = stack.enter_context(closing(compressed()))
        uploaded = upload_stream(
            target.bucket,
            key,
            stream,
            part_size=target.part_size,
            max_in_flight=target.uploads_in_flight,
            content_type="application/zstd",
            metadata={"runbooks-part": part, "runbooks-format": format},
        )
    return BackupObject(
        key=key,
        part=part,
        format=format,
        size=uploaded.size,
        sha256=uploaded.sha256,
        raw_size=raw_size,
        compression_level=target.level,
        s3_parts=uploaded.parts,
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
    )


#: downloaded chunks (of 1 MiB) waiting for the decompression: the download runs ahead by at most this many
DOWNLOAD_AHEAD = 8


def download_verified(bucket: S3Bucket, obj: BackupObject, dest: Path) -> Path:
    """Download ``obj`` into ``dest`` decompressed, checking size and SHA-256 of the stored bytes against the
    manifest and zstd's own frame checksum. Any mismatch: :class:`CorruptObjectError` naming the object, and
    ``dest`` removed.

    Two stages in two threads, so that they overlap on two cores: this one reads the object and hashes it, a second
    one decompresses and writes the file (both release the GIL), :data:`DOWNLOAD_AHEAD` chunks apart at most."""
    digest = hashlib.sha256()
    size = 0
    problem: str | None = None
    broken: list[BaseException] = []
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=DOWNLOAD_AHEAD)

    def unpack() -> None:
        nonlocal problem
        try:
            with open(dest, "wb") as out:
                while (chunk := pending.get()) is not None:
                    if problem is None:
                        try:
                            out.write(decompressor.decompress(chunk))
                        except zstandard.ZstdError as err:
                            problem = f"zstd cannot decompress it ({err})"
        except BaseException as err:  # noqa: BLE001 - raised by the caller's thread below
            broken.append(err)
            while pending.get() is not None:  # the reader never blocks on a full queue
                pass

    worker = threading.Thread(target=unpack, name=f"unpack-{dest.name}", daemon=True)
    worker.start()
    try:
        try:
            for chunk in read_object(bucket, obj.key):
                if broken:
                    break
                digest.update(chunk)
                size += len(chunk)
                pending.put(chunk)
        finally:
            pending.put(None)
            worker.join()
        if broken:
            raise broken[0]
        if size != obj.size:
            raise CorruptObjectError(obj.key, f"{size} bytes stored, the manifest says {obj.size}")
        if digest.hexdigest() != obj.sha256:
            raise CorruptObjectError(obj.key, f"SHA-256 {digest.hexdigest()} differs from the manifest's {obj.sha256}")
        if problem is None and not decompressor.eof:
            problem = "the zstd stream is truncated"
        if problem is not None:
            raise CorruptObjectError(obj.key, f"{problem}, although it matches the manifest (corrupt when written)")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest
