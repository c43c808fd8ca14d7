"""A private sandbox for a benchmark: ``runbooks sandbox up``'s components from a temporary home, on free ports
(below the ephemeral range, as the suite picks them), so that nothing of a developer's sandbox or of other runs on
the machine is touched; and its tear-down, which also removes the PostgreSQL clusters' data directories (they live
outside the home: a cluster runs as the postgres user)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.components import free_port

if TYPE_CHECKING:
    from sandbox.config import SandboxSettings
    from sandbox.manager import Sandbox


def private_settings(prefix: str, *, recovery_cluster: bool = False, **overrides: Any) -> SandboxSettings:
    """Settings with a temporary home named ``prefix…``, every port free, an embedded Redis, small start sizes, the
    recovery target's cluster (``recovery_cluster``) outside the home too; ``overrides`` on top (e.g.
    ``environment``, ``startup_timeout_s``)."""
    from sandbox.config import SandboxSettings

    home = Path(tempfile.mkdtemp(prefix=prefix))
    redis_port = free_port()
    fields: dict[str, Any] = {
        "home": home,
        "postgres_port": free_port(),
        "postgres_data_dir": Path(tempfile.gettempdir()) / f"runbooks-pg-{home.name}" / "main",
        "postgres_size": "3MB",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",  # nothing answers there: an embedded one starts on it
        "redis_port": redis_port,
        "redis_size": "1MB",
        "recovery_postgres_port": free_port(),
        "recovery_redis_port": free_port(),
        "s3_port": free_port(),
        "platform_port": free_port(),
        "receivers_port": free_port(),
        "prefect_port": free_port(),
        "k8s_api_port": free_port(),
        "k8s_etcd_port": free_port(span=12),  # etcd client/peer, controller-manager +10, scheduler +11
        "k8s_kubelet_port": free_port(),
        "k8s_metrics_port": free_port(),
        "ingress_port": free_port(),
        "gateway_port": free_port(),
        "prometheus_port": free_port(),
        "alertmanager_port": free_port(),
    }
    if recovery_cluster:
        fields["recovery_postgres_dir"] = Path(tempfile.gettempdir()) / f"runbooks-recovery-pg-{home.name}"
    return SandboxSettings(**{**fields, **overrides})


def up(box: Sandbox, services: Sequence[str], progress: Callable[[str], None] | None = None) -> None:
    box.up(list(services), progress=progress or (lambda m: print(m, flush=True)))


def destroy(box: Sandbox, services: Sequence[str]) -> None:
    """Stop ``services`` and remove everything the private sandbox wrote: the clusters and the home."""
    from sandbox.components import PostgresComponent

    settings = box.settings
    record = box.state.get("postgres")
    try:
        box.down(list(services))
    finally:
        component = PostgresComponent(settings, box.state)
        if component.kind(record) == "cluster":
            component.cluster(Path(str(record["bin_dir"]))).destroy()
        if settings.postgres_data_dir is not None:
            shutil.rmtree(settings.postgres_data_dir.parent, ignore_errors=True)
        if settings.recovery_postgres_dir is not None:
            shutil.rmtree(settings.recovery_postgres_dir, ignore_errors=True)
        shutil.rmtree(settings.home, ignore_errors=True)
