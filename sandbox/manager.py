"""Bring the whole sandbox up or down, report its status, print its environment."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable

from kernel.errors import SandboxError
from sandbox.certificates import CertManagerComponent, IngressComponent
from sandbox.components import (
    AlertmanagerComponent,
    Component,
    ComponentStatus,
    GatewayComponent,
    PlatformComponent,
    PostgresComponent,
    PrefectServerComponent,
    PrefectWorkerComponent,
    PrometheusComponent,
    ReceiversComponent,
    RecoveryPostgresComponent,
    RecoveryRedisComponent,
    RedisComponent,
    S3Component,
)
from sandbox.config import SandboxSettings, SandboxState
from sandbox.k8s.controlplane import KubernetesComponent

#: In start order; they stop in reverse. The Kubernetes control plane slots in before the worker; the alerting
#: chain comes last, receiver first (gateway, then Alertmanager, then Prometheus, which sends to it).
COMPONENTS: tuple[type[Component], ...] = (
    PostgresComponent,
    RedisComponent,
    RecoveryPostgresComponent,
    RecoveryRedisComponent,
    S3Component,
    PlatformComponent,
    ReceiversComponent,
    KubernetesComponent,
    # the TLS edge of the cluster: cert-manager issues the Ingress's Secret, the Ingress stand-in serves it
    CertManagerComponent,
    IngressComponent,
    PrefectServerComponent,
    # the alerting chain before the worker: the worker saves the environment's blocks, and they name the
    # Prometheus that is up (sandbox.blocks.sandbox_environment)
    GatewayComponent,
    AlertmanagerComponent,
    PrometheusComponent,
    PrefectWorkerComponent,
)


class Sandbox:
    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings()
        self.state = SandboxState(self.settings.home)

    def components(self, only: Iterable[str] | None = None) -> list[Component]:
        wanted = set(only) if only else None
        known = {c.name for c in COMPONENTS}
        if wanted and (unknown := wanted - known):
            raise SandboxError(
                f"unknown component(s): {', '.join(sorted(unknown))}",
                hint=f"choose from {', '.join(c.name for c in COMPONENTS)}",
            )
        return [c(self.settings, self.state) for c in COMPONENTS if wanted is None or c.name in wanted]

    def up(
        self, only: Iterable[str] | None = None, progress: Callable[[str], None] = lambda _: None
    ) -> list[ComponentStatus]:
        statuses = []
        for component in self.components(only):
            progress(f"starting {component.name} ...")
            component.up()
            status = component.status()
            if not status.healthy:
                raise SandboxError(f"{component.name} is up but unhealthy: {status.detail}")
            statuses.append(status)
        return statuses

    def down(self, only: Iterable[str] | None = None, progress: Callable[[str], None] = lambda _: None) -> None:
        errors = []
        for component in reversed(self.components(only)):
            progress(f"stopping {component.name} ...")
            try:
                component.down()
            except Exception as err:  # noqa: BLE001 - keep stopping the others, then report all
                errors.append(f"{component.name}: {err}")
        if errors:
            raise SandboxError("; ".join(errors))

    def status(self, only: Iterable[str] | None = None) -> list[ComponentStatus]:
        return [component.status() for component in self.components(only)]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {"RUNBOOKS_ENVIRONMENT": self.settings.environment}
        for component in self.components():
            out.update(component.env())
        return out

    def export_lines(self) -> list[str]:
        return [f"export {key}={shlex.quote(value)}" for key, value in self.env().items()]
