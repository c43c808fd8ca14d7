"""Our block types, and saving an environment with its child blocks (the sandbox's, staging's, production's)."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from prefect_aws.s3 import S3Bucket
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from blocks.encryption import BackupEncryptionKey
from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.notify import OpsgenieNotifier, PagerDutyNotifier, SlackNotifier
from blocks.platform import PlatformAPI
from blocks.postgres import PostgresDatabase
from blocks.prometheus import PrometheusServer
from blocks.redis import RedisDatabase

BLOCK_TYPES: tuple[type[Block], ...] = (
    PlatformAPI,
    PostgresDatabase,
    RedisDatabase,
    PrometheusServer,
    KubernetesCluster,
    SlackNotifier,
    PagerDutyNotifier,
    OpsgenieNotifier,
    BackupEncryptionKey,
    RunbookEnvironment,
    AwsCredentials,
    S3Bucket,
    KubernetesCredentials,
    KubernetesClusterConfig,
)


async def register_block_types() -> list[str]:
    for block_type in BLOCK_TYPES:
        await block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


async def save_environment(env: RunbookEnvironment, name: str) -> list[str]:
    """Save every child block under ``name`` first, then the environment that references them."""
    saved = []
    k8s = env.kubernetes
    children: list[Block | None] = [
        env.platform,
        env.postgres,
        env.redis,
        env.backups.credentials,
        env.backups,
        k8s.credentials.cluster_config if k8s else None,
        k8s.credentials if k8s else None,
        k8s,
        env.slack,
        env.pagerduty,
        env.opsgenie,
        env.prometheus,
        env.backup_encryption,
    ]
    for child in children:
        if child is None:
            continue
        await child.save(name, overwrite=True)
        saved.append(f"{child.get_block_type_slug()}/{name}")
    await env.save(name, overwrite=True)
    saved.append(f"{env.get_block_type_slug()}/{name}")
    return saved
