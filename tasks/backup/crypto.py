"""Client-side envelope encryption of what a backup must not store in clear (Kubernetes Secrets).

Each backup draws a random 256-bit data key; every secret payload of that backup is encrypted with it
(AES-256-GCM, a random 96-bit nonce per payload), and the data key itself is stored wrapped by the master key of
the environment's :class:`~blocks.encryption.BackupEncryptionKey` (AES key wrap, RFC 3394). The stored envelope
holds the key id and fingerprint, the wrapped data key, the nonce and the ciphertext (GCM tag included); its
header (format, algorithms, key id, context) is authenticated as associated data, so changing any of it makes
decryption fail rather than succeed with other meaning.

Plaintext only ever lives in this process's memory: in, as a ``SecretStr``; out, as a ``SecretStr`` again.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from pydantic import BaseModel, Field, SecretStr, ValidationError

from blocks.encryption import BackupEncryptionKey
from tasks.backup.manifest import BackupError

ENVELOPE_FORMAT: Final = "runbooks-encrypted-envelope"
ENVELOPE_VERSION: Final = 1
CIPHER: Final = "AES-256-GCM"
KEY_WRAP: Final = "AES-256-KW"
NONCE_BYTES = 12


class DecryptionError(BackupError):
    """An envelope cannot be opened: not an envelope, another key, or altered since it was written."""

    def __init__(self, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"cannot decrypt the backup's encrypted object: {problem}", hint=hint, transient=False)


class EncryptedEnvelope(BaseModel):
    """What is stored for an encrypted payload (as JSON). Nothing in it reveals the plaintext or either key."""

    format: Literal["runbooks-encrypted-envelope"] = ENVELOPE_FORMAT
    version: Literal[1] = ENVELOPE_VERSION
    cipher: Literal["AES-256-GCM"] = CIPHER
    key_wrap: Literal["AES-256-KW"] = KEY_WRAP
    key_id: str = Field(description="id of the master key that wrapped the data key")
    key_fingerprint: str = Field(description="fingerprint of that master key (BackupEncryptionKey.fingerprint)")
    wrapped_data_key: str = Field(description="the data key wrapped by the master key (RFC 3394), base64")
    nonce: str = Field(description="AES-GCM nonce, base64")
    context: dict[str, str] = Field(default_factory=dict, description="authenticated, not secret: what is inside")
    ciphertext: str = Field(description="AES-256-GCM ciphertext with its 16-byte tag, base64")

    def associated_data(self) -> bytes:
        """The header, canonical JSON: authenticated by GCM along with the ciphertext."""
        header = self.model_dump(exclude={"wrapped_data_key", "nonce", "ciphertext"})
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> EncryptedEnvelope:
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise DecryptionError(
                f"not a {ENVELOPE_FORMAT} v{ENVELOPE_VERSION} ({err.error_count()} problem(s), first: "
                f"{err.errors()[0]['loc']} {err.errors()[0]['msg']})"
            ) from err


class DataKey:
    """One backup's random data key, and that key wrapped by the master key. Seal as many payloads as needed."""

    def __init__(self, master: BackupEncryptionKey) -> None:
        self.key_id = master.key_id
        self.key_fingerprint = master.fingerprint
        self._key = AESGCM.generate_key(bit_length=256)
        self.wrapped = base64.b64encode(aes_key_wrap(master.master_key(), self._key)).decode()

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, key_fingerprint={self.key_fingerprint!r})"

    def seal(self, plaintext: SecretStr | bytes, context: dict[str, str] | None = None) -> EncryptedEnvelope:
        """Encrypt ``plaintext`` into an envelope; ``context`` (e.g. backup id, namespace) is bound to it."""
        data = plaintext.get_secret_value().encode() if isinstance(plaintext, SecretStr) else plaintext
        nonce = secrets.token_bytes(NONCE_BYTES)
        envelope = EncryptedEnvelope(
            key_id=self.key_id,
            key_fingerprint=self.key_fingerprint,
            wrapped_data_key=self.wrapped,
            nonce=base64.b64encode(nonce).decode(),
            context=dict(context or {}),
            ciphertext="",
        )
        sealed = AESGCM(self._key).encrypt(nonce, data, envelope.associated_data())
        envelope.ciphertext = base64.b64encode(sealed).decode()
        return envelope


def encrypt_secrets(
    plaintext: SecretStr | bytes, key: BackupEncryptionKey, *, context: dict[str, str] | None = None
) -> EncryptedEnvelope:
    """Encrypt one payload under a fresh data key (a backup with several payloads shares one :class:`DataKey`)."""
    return DataKey(key).seal(plaintext, context)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DecryptionError(f"its {what} is not base64") from err


def decrypt_secrets(envelope: EncryptedEnvelope | bytes | str, key: BackupEncryptionKey) -> SecretStr:
    """The plaintext of an envelope (as stored: bytes/JSON, or parsed), as a ``SecretStr``.

    Raises :class:`DecryptionError` when ``key`` is not the key it was made with, or when the envelope was
    altered (ciphertext, nonce, wrapped key or header).
    """
    env = envelope if isinstance(envelope, EncryptedEnvelope) else EncryptedEnvelope.from_bytes(envelope)
    if env.key_id != key.key_id or env.key_fingerprint != key.fingerprint:
        raise DecryptionError(
            f"it was encrypted with key {env.key_id!r} (fingerprint {env.key_fingerprint}), "
            f"block {key.display_name!r} holds key {key.key_id!r} (fingerprint {key.fingerprint})",
            hint="load the Runbooks Backup Encryption Key block that holds that key",
        )
    try:
        data_key = aes_key_unwrap(key.master_key(), _b64(env.wrapped_data_key, "wrapped data key"))
    except InvalidUnwrap as err:
        raise DecryptionError("the wrapped data key does not unwrap with this key (altered, or another key)") from err
    try:
        plaintext = AESGCM(data_key).decrypt(
            _b64(env.nonce, "nonce"), _b64(env.ciphertext, "ciphertext"), env.associated_data()
        )
    except (InvalidTag, ValueError) as err:
        raise DecryptionError("authentication failed: the ciphertext or its header was altered") from err
    try:
        return SecretStr(plaintext.decode())
    except UnicodeDecodeError as err:
        raise DecryptionError("the plaintext is not UTF-8 text") from err
