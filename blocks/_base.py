"""Shared pieces of our blocks: documentation URL, and mapping connection failures to one clear line."""

from __future__ import annotations

import functools
import ssl
from typing import ClassVar

import httpx
from prefect.blocks.core import Block
from pydantic import model_validator

from kernel.redact import register_secrets_in

DOCS_URL = "https://docs.prefect.io/v3/develop/blocks"


class RunbookBlock(Block):
    """Base of every block of this project: it knows the name it was saved under, for error messages."""

    _documentation_url: ClassVar[str] = DOCS_URL  # type: ignore[assignment]

    @model_validator(mode="after")
    def _register_secrets(self) -> RunbookBlock:
        """Every secret value of a block built in this process is redacted from what leaves it (kernel.redact)."""
        register_secrets_in(self)
        return self

    @property
    def display_name(self) -> str:
        """``<block-type-slug>/<document-name>``, or the slug alone for an unsaved block."""
        name = getattr(self, "_block_document_name", None)
        slug = self.get_block_type_slug()
        return f"{slug}/{name}" if name else slug


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process for every HTTP client the blocks hand out.

    httpx builds a new one for each client, and loading the CA bundle costs 20 to 40 ms of CPU each time. A triage
    run creates a dozen clients; twenty triage runs at once in the in-process worker spent most of their CPU there.
    """
    return httpx.create_ssl_context()
