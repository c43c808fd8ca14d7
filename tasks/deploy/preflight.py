"""The seed's Pre-Deployment Checklist as checks: status page, smoke suite, node capacity, pods, a preventive backup.

Each function reads one system and returns :class:`~tasks.deploy.gates.Check` lines; a read that fails is a check
that failed with its one-line reason (the release does not go ahead on what nobody could read).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.platform import PlatformAPI
from tasks import kubernetes as k8s
from tasks.backup.orchestration import run_backup
from tasks.backup.report import BackupReport
from tasks.deploy.gates import Check, Phase
from tasks.deploy.policy import Preflight
from tasks.platform import get_status_page
from tasks.reporting import describe_error
from tasks.smoke import run_smoke_suite


async def guarded(name: str, phase: Phase, check: Callable[[], Awaitable[list[Check]]]) -> list[Check]:
    """Run ``check``; an exception is a failing check carrying its one-line message."""
    try:
        return await check()
    except Exception as err:  # noqa: BLE001 - reported as a failing check; the flow decides
        return [
            Check(
                phase=phase,
                name=name,
                value="unreadable",
                threshold="readable",
                verdict="fail",
                detail=describe_error(err),
            )
        ]


async def status_page_check(platform: PlatformAPI) -> list[Check]:
    """The seed's ``curl .../status``: no open incident."""
    page = await get_status_page(platform)
    return [
        Check(
            phase="preflight",
            name="status page",
            value=f"{page.open_incidents} open incident(s)",
            threshold="0 open incidents",
            verdict="pass" if page.open_incidents == 0 else "fail",
            detail=f"{page.indicator}: {page.description}",
        )
    ]


async def smoke_checks(platform: PlatformAPI, environment: str, phase: Phase) -> list[Check]:
    """The smoke suite (``tasks/smoke/suite.yaml``), one line per case; a skipped case is inconclusive."""
    report = await run_smoke_suite(platform, environment)
    checks = []
    for r in report.results:
        latency = f", {r.latency_ms:.0f} ms" if r.latency_ms is not None else ""
        status = f"{r.status_code}{latency}" if r.status_code is not None else ("skipped" if r.skipped else "no answer")
        checks.append(
            Check(
                phase=phase,
                name=f"smoke {r.name}",
                value=status,
                threshold="passes",
                verdict="inconclusive" if r.skipped else ("pass" if r.ok else "fail"),
                detail=r.detail,
            )
        )
    return checks


async def capacity_checks(cluster: KubernetesCluster, limits: Preflight) -> list[Check]:
    """The seed's ``kubectl top nodes``: every node under the policy's CPU and memory shares."""
    nodes = await k8s.top_nodes(cluster)
    checks: list[Check] = []
    for node in nodes:
        for what, value, limit in (
            ("CPU", node.cpu_percent, limits.max_node_cpu_percent),
            ("memory", node.memory_percent, limits.max_node_memory_percent),
        ):
            checks.append(
                Check(
                    phase="preflight",
                    name=f"node {node.name} {what}",
                    value="no metrics" if value is None else f"{value:.0f}%",
                    threshold=f"≤ {limit:.0f}%",
                    verdict="inconclusive" if value is None else ("pass" if value <= limit else "fail"),
                )
            )
    if not nodes:
        checks.append(
            Check(
                phase="preflight", name="node capacity", value="no nodes", threshold="metrics", verdict="inconclusive"
            )
        )
    return checks


async def pod_checks(cluster: KubernetesCluster, limits: Preflight) -> list[Check]:
    """The seed's ``kubectl get pods | grep -v Running``: no pod Pending, crash-looping or in error."""
    pods = await k8s.list_pods(cluster)
    bad = [p for p in pods if p.status in limits.bad_pod_statuses or (p.reason or "") in limits.bad_pod_statuses]
    return [
        Check(
            phase="preflight",
            name="pods",
            value=f"{len(bad)} of {len(pods)} failing",
            threshold=f"none {'/'.join(limits.bad_pod_statuses[:3])}/…",
            verdict="pass" if not bad else "fail",
            detail=", ".join(f"{p.name} {p.reason or p.status}" for p in bad[:5]),
        )
    ]


async def preventive_backup(
    env: RunbookEnvironment, environment: str, limits: Preflight
) -> tuple[list[Check], BackupReport | None]:
    """The seed's ``pre-deploy-backup-<time>``: the Kubernetes resources and the database schema, through the backup
    pipeline (kind ``pre-deploy``, manifest written last)."""
    report, failure = await run_backup(env, environment, "pre-deploy", list(limits.backup_parts))
    detail = describe_error(failure) if failure is not None else f"{report.prefix} ({report.stored_bytes} bytes)"
    check = Check(
        phase="preflight",
        name="preventive backup",
        value=report.backup_id,
        threshold="completed",
        verdict="pass" if failure is None else "fail",
        detail=detail,
    )
    return [check], report if failure is None else None
