"""Kubernetes: prefect-kubernetes credentials plus the namespace the runbooks act on."""

from __future__ import annotations

from typing import Literal

from prefect_kubernetes.credentials import KubernetesCredentials
from pydantic import Field

from blocks._base import RunbookBlock


class KubernetesCluster(RunbookBlock):
    """A Kubernetes cluster and the namespace the platform runs in.

    Example:
        ```python
        from blocks.kubernetes import KubernetesCluster
        cluster = KubernetesCluster.load("BLOCK_NAME")
        async with cluster.get_client("core") as core:
            await core.list_namespaced_pod(cluster.namespace)
        ```
    """

    _block_type_name = "Runbooks Kubernetes"

    credentials: KubernetesCredentials
    namespace: str = Field(
        default="production",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the platform's workloads.",
    )

    def get_client(self, client_type: Literal["apps", "batch", "core", "custom_objects"]):
        """An async context manager yielding a kubernetes-asyncio API client of that type."""
        return self.credentials.get_client(client_type)
