"""``runbooks blocks apply``: register our block types and save the sandbox environment's blocks."""

from __future__ import annotations

from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from prefect_aws.s3 import S3Bucket
from pydantic import SecretStr

from blocks.encryption import BackupEncryptionKey
from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.notify import OpsgenieNotifier, PagerDutyNotifier, SlackNotifier
from blocks.platform import PlatformAPI
from blocks.postgres import PostgresDatabase
from blocks.prometheus import PrometheusServer
from blocks.redis import RedisDatabase
from blocks.registry import register_block_types, save_environment
from sandbox.config import SandboxSettings, SandboxState


def sandbox_environment(settings: SandboxSettings, state: SandboxState) -> RunbookEnvironment:
    """The sandbox's environment block, built from the running components' addresses and secrets."""
    from sandbox.components import PostgresComponent, RedisComponent

    secrets = state.secrets()
    platform_url = settings.url(settings.platform_port)
    receivers = settings.url(settings.receivers_port)
    credentials = AwsCredentials(
        aws_access_key_id=secrets["aws_access_key_id"],
        aws_secret_access_key=SecretStr(secrets["aws_secret_access_key"]),
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=settings.url(settings.s3_port)),
    )
    return RunbookEnvironment(
        kubernetes=_kubernetes(settings, state),
        ingress_address=_ingress_address(state),
        prometheus=_prometheus(settings, state),
        kind="sandbox",
        platform=PlatformAPI(
            base_url=platform_url,
            admin_token=secrets["platform_admin_token"],
            status_page_url=platform_url,
            frontend_url=settings.url(settings.platform_port, "/frontend"),  # the double serves the frontend too
        ),
        postgres=PostgresDatabase(dsn=PostgresComponent(settings, state).app_dsn()),
        redis=RedisDatabase(url=RedisComponent(settings, state).url()),
        backups=S3Bucket(bucket_name=settings.bucket, credentials=credentials),
        slack=SlackNotifier(
            webhook_url=f"{receivers}/slack/webhook/{secrets['slack_webhook_token']}",
            bot_token=secrets["slack_bot_token"],
            api_url=f"{receivers}/slack/api",
        ),
        pagerduty=PagerDutyNotifier(
            routing_key=secrets["pagerduty_routing_key"],
            events_url=f"{receivers}/pagerduty/v2/enqueue",
        ),
        opsgenie=OpsgenieNotifier(
            api_key=secrets["opsgenie_api_key"],
            api_url=f"{receivers}/opsgenie",
        ),
        backup_encryption=BackupEncryptionKey(
            key_id=f"{settings.environment}-backups", key=SecretStr(secrets["backup_encryption_key"])
        ),
    )


def _prometheus(settings: SandboxSettings, state: SandboxState) -> PrometheusServer | None:
    """The sandbox's Prometheus, where it runs (the enrichers then read error rate and p95 from it)."""
    from kernel import processes

    pid = state.get("prometheus").get("pid")
    if not (pid and processes.is_alive(int(pid))):
        return None
    return PrometheusServer(url=settings.url(settings.prometheus_port))


def _ingress_address(state: SandboxState) -> str | None:
    """The Ingress stand-in's HTTPS address (sandbox/certificates.py), where it runs."""
    from kernel import processes

    record = state.get("ingress")
    if not (record.get("pid") and processes.is_alive(int(record["pid"]))):
        return None
    return str(record["address"])


def _kubernetes(settings: SandboxSettings, state: SandboxState) -> KubernetesCluster | None:
    """The cluster the sandbox started (or the user's, via KUBECONFIG), if the component is up."""
    from pathlib import Path

    kubeconfig = state.get("kubernetes").get("kubeconfig")
    if not kubeconfig or not Path(kubeconfig).exists():
        return None
    # the flows' bearer token goes into the block's SecretStr, not into the kubeconfig dict that is stored in clear
    return KubernetesCluster.from_kubeconfig(Path(kubeconfig), namespace="production")


def recovery_environment_name(settings: SandboxSettings) -> str:
    """The recovery environment's block name: ``<environment>-recovery`` (``sandbox-recovery``)."""
    return f"{settings.environment}-recovery"


def recovery_environment(settings: SandboxSettings, state: SandboxState) -> RunbookEnvironment | None:
    """The ``recovery`` environment: the sandbox's, with PostgreSQL and Redis on the recovery target's servers and
    Kubernetes in the recovery namespace; None when the recovery target is not up. (The seed deploys those
    servers into the recovery namespace; here they are real servers on loopback. In production this block names
    whatever the recovery site runs.)"""
    from sandbox.components import RecoveryPostgresComponent, RecoveryRedisComponent

    if not state.get(RecoveryPostgresComponent.name) or not state.get(RecoveryRedisComponent.name):
        return None
    env = sandbox_environment(settings, state)
    kubernetes = (
        env.kubernetes.model_copy(update={"namespace": settings.recovery_namespace}) if env.kubernetes else None
    )
    return env.model_copy(
        update={
            "postgres": PostgresDatabase(dsn=RecoveryPostgresComponent(settings, state).app_dsn()),
            "redis": RedisDatabase(url=RecoveryRedisComponent(settings, state).url()),
            "kubernetes": kubernetes,
        }
    )


async def apply_blocks(settings: SandboxSettings, state: SandboxState) -> list[str]:
    await register_block_types()
    saved = await save_environment(sandbox_environment(settings, state), settings.environment)
    recovery = recovery_environment(settings, state)
    if recovery is not None:
        saved += await save_environment(recovery, recovery_environment_name(settings))
    return saved
