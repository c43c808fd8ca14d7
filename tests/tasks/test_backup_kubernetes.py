"""The pure parts of the Kubernetes backup: envelope encryption of Secrets, the encryption key block, the log
records, and the bridge that lets the upload thread pull an async stream. No services needed."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from blocks.encryption import BackupEncryptionKey, new_key
from blocks.environment import RunbookEnvironment
from kernel.errors import ConfigurationError
from sandbox.config import SandboxState
from tasks.backup.crypto import DataKey, DecryptionError, EncryptedEnvelope, decrypt_secrets, encrypt_secrets
from tasks.backup.kubernetes import (
    ENCRYPTED_FORMAT_SUFFIX,
    LogStream,
    _pull,
    _record,
    _split_timestamp,
    _streams,
    is_encrypted,
)
from tasks.backup.manifest import BackupObject

PLAINTEXT = (
    "apiVersion: v1\nkind: List\nitems:\n- data:\n    ADMIN_TOKEN: aHVudGVyMg==\n  stringData: hunter2-in-clear\n"
)


@pytest.fixture()
def key() -> BackupEncryptionKey:
    return BackupEncryptionKey.generate("test-key-1")


# ------------------------------------------------------------------------------------------------- crypto
def test_round_trip_and_nothing_in_clear(key: BackupEncryptionKey) -> None:
    envelope = encrypt_secrets(SecretStr(PLAINTEXT), key, context={"namespace": "production", "backup_id": "b1"})
    stored = envelope.to_bytes()
    assert b"hunter2" not in stored and base64.b64encode(b"hunter2") not in stored
    assert b"aHVudGVyMg" not in stored and key.key.get_secret_value().encode() not in stored
    doc = json.loads(stored)
    assert doc["format"] == "runbooks-encrypted-envelope" and doc["cipher"] == "AES-256-GCM"
    assert doc["key_id"] == "test-key-1" and doc["key_fingerprint"] == key.fingerprint
    assert len(base64.b64decode(doc["nonce"])) == 12 and len(base64.b64decode(doc["wrapped_data_key"])) == 40
    assert doc["context"] == {"namespace": "production", "backup_id": "b1"}
    plain = decrypt_secrets(stored, key)
    assert isinstance(plain, SecretStr) and plain.get_secret_value() == PLAINTEXT
    assert "hunter2" not in repr(plain) and "hunter2" not in str(plain)
    # parsed or as text works too
    assert decrypt_secrets(EncryptedEnvelope.from_bytes(stored), key).get_secret_value() == PLAINTEXT
    assert decrypt_secrets(stored.decode(), key).get_secret_value() == PLAINTEXT


def test_one_data_key_per_backup_fresh_nonce_per_payload(key: BackupEncryptionKey) -> None:
    data_key = DataKey(key)
    a, b = data_key.seal(b"same"), data_key.seal(b"same")
    assert a.wrapped_data_key == b.wrapped_data_key and a.nonce != b.nonce and a.ciphertext != b.ciphertext
    assert decrypt_secrets(a, key).get_secret_value() == decrypt_secrets(b, key).get_secret_value() == "same"
    # another backup: another data key
    assert DataKey(key).wrapped != data_key.wrapped
    assert "test-key-1" in repr(data_key) and key.key.get_secret_value() not in repr(data_key)


def test_another_key_is_refused_naming_both(key: BackupEncryptionKey) -> None:
    stored = encrypt_secrets(b"x", key).to_bytes()
    other = BackupEncryptionKey.generate("test-key-2")
    with pytest.raises(DecryptionError, match="'test-key-1'.*'test-key-2'"):
        decrypt_secrets(stored, other)
    # same id, another key: the fingerprint tells them apart before anything is tried
    impostor = BackupEncryptionKey.generate("test-key-1")
    with pytest.raises(DecryptionError, match="fingerprint"):
        decrypt_secrets(stored, impostor)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrapped_data_key", "context", "key_wrap"])
def test_any_alteration_fails_authentication(key: BackupEncryptionKey, field: str) -> None:
    doc = json.loads(encrypt_secrets(SecretStr(PLAINTEXT), key, context={"namespace": "production"}).to_bytes())
    if field == "context":
        doc["context"]["namespace"] = "staging"
    elif field == "key_wrap":
        doc["key_wrap"] = "AES-128-KW"
    else:
        raw = bytearray(base64.b64decode(doc[field]))
        raw[0] ^= 1
        doc[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(DecryptionError):
        decrypt_secrets(json.dumps(doc), key)


def test_not_an_envelope(key: BackupEncryptionKey) -> None:
    with pytest.raises(DecryptionError, match="not a runbooks-encrypted-envelope"):
        decrypt_secrets(b'{"hello": "world"}', key)
    with pytest.raises(DecryptionError):
        decrypt_secrets(b"apiVersion: v1", key)


def test_encrypted_objects_are_recognised_by_format() -> None:
    fields: dict[str, Any] = {
        "key": "k",
        "part": "kubernetes",
        "size": 1,
        "sha256": "0" * 64,
        "raw_size": 1,
        "compression_level": 3,
        "s3_parts": 1,
        "started_at": "2026-01-01T00:00:00Z",
        "duration_s": 0.1,
    }
    assert is_encrypted(BackupObject(format="k8s-secrets-yaml" + ENCRYPTED_FORMAT_SUFFIX, **fields))
    assert not is_encrypted(BackupObject(format="k8s-yaml-list", **fields))


# --------------------------------------------------------------------------------------------- key block
def test_key_block_validates_and_hides_the_key() -> None:
    value = new_key()
    block = BackupEncryptionKey(key_id="prod-2026-01", key=SecretStr(value))
    assert len(block.master_key()) == 32 and len(block.fingerprint) == 16
    assert value not in repr(block) and value not in block.model_dump_json()
    with pytest.raises(ValidationError, match="32 bytes"):
        BackupEncryptionKey(key_id="k", key=SecretStr(base64.b64encode(b"short").decode()))
    with pytest.raises(ValidationError, match="base64"):
        BackupEncryptionKey(key_id="k", key=SecretStr("not base64 at all!"))
    with pytest.raises(ValidationError):
        BackupEncryptionKey(key_id="bad id with spaces", key=SecretStr(value))


def test_environment_without_key_refuses_naming_block_and_field() -> None:
    env = RunbookEnvironment.model_construct(kind="staging", backup_encryption=None)
    with pytest.raises(ConfigurationError, match="'runbooks-environment'.*'backup_encryption'") as err:
        env.require_backup_encryption()
    assert err.value.field == "backup_encryption"
    assert "Runbooks Backup Encryption Key" in str(err.value)


def test_sandbox_generates_and_keeps_a_valid_key(tmp_path: Path) -> None:
    state = SandboxState(tmp_path)
    first = state.secrets()["backup_encryption_key"]
    assert len(base64.b64decode(first)) == 32
    assert state.secrets()["backup_encryption_key"] == first  # generated once, kept
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    BackupEncryptionKey(key_id="sandbox-backups", key=SecretStr(first))


# -------------------------------------------------------------------------------------------------- logs
def test_log_records_are_ndjson_with_the_timestamp_split_off() -> None:
    stream = LogStream(namespace="production", deployment="api", pod="api-1", container="api")
    line = '2026-01-02T03:04:05.123456789Z INFO request model=gpt-4 note="ünïcode"'
    record = json.loads(_record(stream, line))
    assert record == {
        "time": "2026-01-02T03:04:05.123456789Z",
        "namespace": "production",
        "deployment": "api",
        "pod": "api-1",
        "container": "api",
        "previous": False,
        "message": 'INFO request model=gpt-4 note="ünïcode"',
    }
    assert _split_timestamp("no timestamp here") == (None, "no timestamp here")
    assert _record(stream, "x").endswith(b"\n") and _record(stream, "x").count(b"\n") == 1


def _pod(name: str, containers: list[str], restarts: dict[str, int], deleting: bool = False) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, annotations={}, deletion_timestamp="now" if deleting else None),
        spec=SimpleNamespace(containers=[SimpleNamespace(name=c) for c in containers]),
        status=SimpleNamespace(
            container_statuses=[SimpleNamespace(name=c, restart_count=n) for c, n in restarts.items()]
        ),
    )


def test_streams_cover_every_container_and_the_previous_run_of_restarted_ones() -> None:
    pods = [
        _pod("api-b", ["api", "sidecar"], {"api": 2, "sidecar": 0}),
        _pod("api-a", ["api"], {"api": 0}),
        _pod("api-c", ["api"], {"api": 0}, deleting=True),
    ]
    got = [(s.pod, s.container, s.previous) for s in _streams(pods, "production", "api")]
    assert got == [
        ("api-a", "api", False),
        ("api-b", "api", True),
        ("api-b", "api", False),
        ("api-b", "sidecar", False),
    ]


async def test_pull_consumes_an_async_stream_from_a_thread_in_order() -> None:
    loop = asyncio.get_running_loop()
    produced: list[int] = []
    closed = asyncio.Event()

    async def numbers() -> AsyncIterator[bytes]:
        try:
            for i in range(50):
                await asyncio.sleep(0)
                produced.append(i)
                yield f"{i}\n".encode()
        finally:
            closed.set()

    data = await asyncio.to_thread(lambda: b"".join(_pull(numbers(), loop, threading.Event())))
    assert data.decode().split() == [str(i) for i in range(50)]
    assert closed.is_set()

    # a consumer that stops early closes the producer; nothing is read ahead
    produced.clear()
    closed.clear()

    def first_three() -> list[bytes]:
        out = []
        for chunk in _pull(numbers(), loop, threading.Event()):
            out.append(chunk)
            if len(out) == 3:
                break
        return out

    assert len(await asyncio.to_thread(first_three)) == 3
    assert produced == [0, 1, 2] and closed.is_set()


async def test_pull_raises_the_producers_error_in_the_thread() -> None:
    loop = asyncio.get_running_loop()

    async def broken() -> AsyncIterator[bytes]:
        yield b"ok"
        raise RuntimeError("API server went away")

    with pytest.raises(RuntimeError, match="went away"):
        await asyncio.to_thread(lambda: list(_pull(broken(), loop, threading.Event())))
