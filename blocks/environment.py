"""One block per environment (sandbox, staging, production) that references every system's block.

A flow takes ``environment: str`` and calls :func:`load_environment` once; everything else comes from it.
"""

from __future__ import annotations

from typing import Literal

from prefect_aws.s3 import S3Bucket
from pydantic import Field

from blocks._base import RunbookBlock
from blocks.encryption import BackupEncryptionKey
from blocks.kubernetes import KubernetesCluster
from blocks.notify import OpsgenieNotifier, PagerDutyNotifier, SlackNotifier
from blocks.platform import PlatformAPI
from blocks.postgres import PostgresDatabase
from blocks.prometheus import PrometheusServer
from blocks.redis import RedisDatabase
from kernel.errors import ConfigurationError

EnvironmentKind = Literal["sandbox", "staging", "production"]


class RunbookEnvironment(RunbookBlock):
    """Everything a runbook needs to act on one environment of the platform.

    Example:
        ```python
        from blocks.environment import RunbookEnvironment
        env = RunbookEnvironment.load("BLOCK_NAME")
        async with env.platform.get_client() as client:
            await client.get("/health")
        ```
    """

    _block_type_name = "Runbooks Environment"

    kind: EnvironmentKind = Field(
        description="Which kind of environment this is; the triage policy's modes are per kind (sandbox acts, "
        "staging and production ask for approval)."
    )
    platform: PlatformAPI
    postgres: PostgresDatabase
    redis: RedisDatabase
    backups: S3Bucket
    kubernetes: KubernetesCluster | None = None
    slack: SlackNotifier | None = None
    pagerduty: PagerDutyNotifier | None = None
    opsgenie: OpsgenieNotifier | None = None
    backup_encryption: BackupEncryptionKey | None = None
    prometheus: PrometheusServer | None = Field(
        default=None, description="Where the platform's metrics are queried; without it, enrichers read /metrics."
    )
    api_deployment: str = Field(
        default="ai-multimodel-api",
        description="The platform API's Kubernetes Deployment (also its pods' `app` label): what triage diagnoses, "
        "rolls back, restarts and scales out.",
    )
    frontend_deployment: str = Field(
        default="ai-multimodel-frontend",
        description="The platform frontend's Kubernetes Deployment (also its pods' `app` label).",
    )
    ingress_address: str | None = Field(
        default=None,
        description="Where the Ingress controller answers TLS (`host:port`): certificate checks connect there with "
        "each Ingress host as SNI, as `curl --resolve` does. None: each host's own DNS name, port 443.",
    )

    @property
    def dry_run_by_default(self) -> bool:
        """Changes are dry-run unless asked otherwise everywhere but the sandbox."""
        return self.kind != "sandbox"

    def require_kubernetes(self) -> KubernetesCluster:
        if self.kubernetes is None:
            raise ConfigurationError(
                self.display_name,
                "kubernetes",
                "no Kubernetes cluster is configured",
                hint="add a Runbooks Kubernetes block to this environment",
            )
        return self.kubernetes

    def require_backup_encryption(self, what: str = "Kubernetes Secrets") -> BackupEncryptionKey:
        """The key that encrypts ``what`` in backups; none configured: nothing is written in clear, it fails."""
        if self.backup_encryption is None:
            raise ConfigurationError(
                self.display_name,
                "backup_encryption",
                f"no backup encryption key is configured, so {what} are not backed up (never in clear)",
                hint=(
                    f"save a {BackupEncryptionKey.get_block_type_name()!r} block (key: `openssl rand -base64 32`) "
                    "and reference it from this environment's backup_encryption field"
                ),
            )
        return self.backup_encryption


async def load_environment(name: str) -> RunbookEnvironment:
    """Load the environment block ``name``; a missing block is one clear ConfigurationError."""
    slug = RunbookEnvironment.get_block_type_slug()
    try:
        env = await RunbookEnvironment.aload(name)
    except ValueError as err:
        if "Unable to find block document" in str(err):
            raise ConfigurationError(
                f"{slug}/{name}",
                None,
                "no such block",
                hint="run `runbooks blocks apply` for the sandbox, or create it in the Prefect UI",
            ) from err
        raise ConfigurationError(f"{slug}/{name}", None, f"cannot be loaded: {err}") from err
    return env
