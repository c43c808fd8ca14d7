"""Every block of ours passes Prefect's own block standards test suite."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.notify import OpsgenieNotifier, PagerDutyNotifier, SlackNotifier
from blocks.platform import PlatformAPI
from blocks.postgres import PostgresDatabase
from blocks.redis import RedisDatabase

OUR_BLOCKS = [
    PlatformAPI,
    PostgresDatabase,
    RedisDatabase,
    KubernetesCluster,
    SlackNotifier,
    PagerDutyNotifier,
    OpsgenieNotifier,
    RunbookEnvironment,
]


@pytest.mark.parametrize("block", OUR_BLOCKS, ids=lambda b: b.__name__)
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:
        return block


def test_block_type_slugs_are_unique_and_namespaced() -> None:
    slugs = [b.get_block_type_slug() for b in OUR_BLOCKS]
    assert len(set(slugs)) == len(slugs)
    assert all(slug.startswith("runbooks-") for slug in slugs)
