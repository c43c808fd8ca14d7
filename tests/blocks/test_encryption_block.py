"""The backup encryption key block passes Prefect's block standards, like every block of ours
(tests/blocks/test_block_standards.py), and is namespaced like them."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.encryption import BackupEncryptionKey
from blocks.environment import RunbookEnvironment
from blocks.registry import BLOCK_TYPES


class TestBackupEncryptionKeyAdheresToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return BackupEncryptionKey


def test_slug_is_namespaced_and_registered() -> None:
    assert BackupEncryptionKey.get_block_type_slug() == "runbooks-backup-encryption-key"
    assert BackupEncryptionKey in BLOCK_TYPES
    field = RunbookEnvironment.model_fields["backup_encryption"]
    assert field.default is None  # optional: environments without it refuse to back up Secrets
