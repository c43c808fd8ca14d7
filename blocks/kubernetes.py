"""Kubernetes: prefect-kubernetes credentials plus the namespace the runbooks act on, and the bearer token kept
as a secret.

prefect-kubernetes' ``KubernetesClusterConfig`` stores the whole kubeconfig as a plain dict: a token in it would be
shown in clear by the UI and the API. So the token lives in this block's ``token`` (``SecretStr``) and is put
into the kubeconfig's user only in memory, when a client is built.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from pydantic import Field, SecretStr

from blocks._base import RunbookBlock

#: kubeconfig user fields that are credentials (their values must not sit in a plain dict of a saved block)
CREDENTIAL_FIELDS = ("token", "client-key-data", "password")


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
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the runbooks' service account; replaces any credential of the kubeconfig's user.",
    )

    def kubeconfig(self) -> dict[str, Any] | None:
        """The kubeconfig as a dict, with ``token`` put into its context's user (in memory only); None when the
        credentials have no cluster config (in-cluster or the default kubeconfig file)."""
        cluster_config = self.credentials.cluster_config
        if cluster_config is None:
            return None
        config = copy.deepcopy(cluster_config.config)
        if self.token is not None:
            user = _context_user(config, cluster_config.context_name)
            for field in CREDENTIAL_FIELDS + ("client-certificate-data", "username"):
                user.pop(field, None)
            user["token"] = self.token.get_secret_value()
        return config

    def clear_credentials_in_config(self) -> list[str]:
        """The kubeconfig's credential fields stored in clear (``users[].user.<field>``), for ``runbooks check``."""
        cluster_config = self.credentials.cluster_config
        if cluster_config is None:
            return []
        found = []
        for entry in cluster_config.config.get("users") or []:
            for field in CREDENTIAL_FIELDS:
                if (entry.get("user") or {}).get(field):
                    found.append(f"users[{entry.get('name')}].user.{field}")
        return found

    def get_client(self, client_type: Literal["apps", "batch", "core", "custom_objects"]) -> Any:
        """An async context manager yielding a kubernetes-asyncio API client of that type."""
        config = self.kubeconfig()
        if config is None or self.token is None:
            return self.credentials.get_client(client_type)
        assert self.credentials.cluster_config is not None
        in_memory = KubernetesClusterConfig(config=config, context_name=self.credentials.cluster_config.context_name)
        return KubernetesCredentials(cluster_config=in_memory).get_client(client_type)

    @classmethod
    def from_kubeconfig(
        cls, path: Any, *, namespace: str = "production", context_name: str | None = None
    ) -> KubernetesCluster:
        """A block from a kubeconfig file: a bearer token of the context's user moves into ``token``."""
        cluster_config = KubernetesClusterConfig.from_file(path, context_name=context_name)
        user = _context_user(cluster_config.config, cluster_config.context_name)
        token = user.pop("token", None)
        return cls(
            credentials=KubernetesCredentials(cluster_config=cluster_config),
            namespace=namespace,
            token=SecretStr(token) if token else None,
        )


def _context_user(config: dict[str, Any], context_name: str) -> dict[str, Any]:
    """The ``user`` mapping of the context's user in a kubeconfig dict (created empty when missing)."""
    context = next((c.get("context") or {} for c in config.get("contexts") or [] if c.get("name") == context_name), {})
    user_name = context.get("user")
    for entry in config.setdefault("users", []):
        if entry.get("name") == user_name:
            return entry.setdefault("user", {})
    entry = {"name": user_name, "user": {}}
    config["users"].append(entry)
    return entry["user"]
