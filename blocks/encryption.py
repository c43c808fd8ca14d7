"""The master key that wraps each backup's data key: what encrypts Kubernetes Secrets before they leave the process."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from pydantic import Field, SecretStr, field_validator

from blocks._base import RunbookBlock

KEY_BYTES = 32


def _decode(value: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("must be base64 (standard alphabet, padded)") from err


class BackupEncryptionKey(RunbookBlock):
    """A 256-bit master key (AES-256) and its id. Each backup encrypts its Secrets with a fresh random data key
    and stores that data key wrapped by this one; only a holder of this key can read them back.

    Keep the key somewhere the backup bucket's readers cannot reach; losing it makes the encrypted Secrets of
    every backup made with it unreadable. Rotate by saving a new key under a new ``key_id`` (keep the old
    block to read older backups).

    Example:
        ```python
        from blocks.encryption import BackupEncryptionKey
        key = BackupEncryptionKey.load("BLOCK_NAME")
        print(key.key_id, key.fingerprint)
        ```
    """

    _block_type_name = "Runbooks Backup Encryption Key"

    key_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="Name of the key, recorded in every backup it encrypts (e.g. production-2026-01).",
    )
    key: SecretStr = Field(description="The master key: 32 random bytes, base64 (e.g. `openssl rand -base64 32`).")

    @field_validator("key")
    @classmethod
    def _is_256_bits(cls, value: SecretStr) -> SecretStr:
        raw = _decode(value.get_secret_value())
        if len(raw) != KEY_BYTES:
            raise ValueError(f"must decode to {KEY_BYTES} bytes (AES-256), got {len(raw)}")
        return value

    @classmethod
    def generate(cls, key_id: str) -> BackupEncryptionKey:
        """A new random key (for the sandbox, or to print once and store elsewhere)."""
        return cls(key_id=key_id, key=SecretStr(new_key()))

    def master_key(self) -> bytes:
        """The 32 raw bytes. Never log them."""
        return _decode(self.key.get_secret_value())

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 over the key: tells keys apart without revealing them."""
        return hashlib.sha256(b"runbooks-backup-key:" + self.master_key()).hexdigest()[:16]


def new_key() -> str:
    """32 random bytes, base64: a value for :attr:`BackupEncryptionKey.key`."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
