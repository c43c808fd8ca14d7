"""Shared pieces of our blocks: documentation URL, and mapping connection failures to one clear line."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block

DOCS_URL = "https://docs.prefect.io/v3/develop/blocks"


class RunbookBlock(Block):
    """Base of every block of this project: it knows the name it was saved under, for error messages."""

    _documentation_url: ClassVar[str] = DOCS_URL  # type: ignore[assignment]

    @property
    def display_name(self) -> str:
        """``<block-type-slug>/<document-name>``, or the slug alone for an unsaved block."""
        name = getattr(self, "_block_document_name", None)
        slug = self.get_block_type_slug()
        return f"{slug}/{name}" if name else slug
