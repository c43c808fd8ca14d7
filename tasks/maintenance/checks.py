"""The ten steps of the seed's Weekly Maintenance Checklist, each a function of a :class:`MaintenanceContext` that
returns a :class:`~tasks.maintenance.steps.StepResult` measured from the system itself: a status line is never
fixed text. The flow (``flows/maintenance.py``) runs each as a task run of its own
(:func:`tasks.maintenance.steps.run_step`); the thresholds are the policy's (``tasks/maintenance/policy.yaml``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from blocks.environment import RunbookEnvironment
from tasks import kubernetes as k8s
from tasks import postgres as pg
from tasks import trivy
from tasks.backup.manifest import VERIFIED_NAME
from tasks.backup.orchestration import run_backup
from tasks.backup.restore import read_manifest
from tasks.backup.retention import StoredBackup, list_backups
from tasks.backup.verification import run_verification
from tasks.backup.verify import VerifiedRecord
from tasks.certificates.check import check_certificates
from tasks.certificates.policy import load_certificate_policy
from tasks.maintenance.policy import MaintenancePolicy
from tasks.maintenance.steps import Figure, StepResult, StepStatus, worst
from tasks.platform import get_analytics_summary
from tasks.reporting import describe_error, publish_table
from tasks.smoke import run_smoke_suite
from tasks.storage import get_bytes, list_stored

#: One step of the checklist.
Step = Callable[["MaintenanceContext"], Awaitable[StepResult]]
#: Asks for approval of the planned deletions; returns who approved, or None (denied, or no answer in time).
Approver = Callable[[str], Awaitable[str | None]]


@dataclass
class MaintenanceContext:
    env: RunbookEnvironment
    environment: str
    policy: MaintenancePolicy
    dry_run: bool
    #: last week's figures, ``<step>.<figure>`` → value (empty on the first run)
    previous: dict[str, Figure] = field(default_factory=dict)
    #: set when the cleanup may ask for approval instead of only describing (a dry run by the environment's default)
    approver: Approver | None = None
    window_end: datetime | None = None


def _result(number: int, name: str, title: str, status: StepStatus, summary: str, **extra: object) -> StepResult:
    return StepResult.model_validate(
        {"number": number, "name": name, "title": title, "status": status, "summary": summary, **extra}
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _change(now: float | None, before: Figure) -> str:
    if now is None or not isinstance(before, int | float):
        return ""
    if before == 0:
        return "" if now == 0 else " (new since last week)"
    return f" ({100 * (now - before) / abs(before):+.0f}% on last week)"


def _skipped_without_kubernetes(number: int, name: str, title: str, ctx: MaintenanceContext) -> StepResult | None:
    if ctx.env.kubernetes is not None:
        return None
    return _result(number, name, title, "skipped", f"skipped: environment {ctx.environment!r} has no Kubernetes block")


# ------------------------------------------------------------------------------------------------ 1 health
async def health(ctx: MaintenanceContext) -> StepResult:
    """The smoke suite, and every pod that is not Running (``kubectl get pods | grep -v Running``), by name."""
    number, name, title = 1, "health", "System health"
    smoke = await run_smoke_suite(ctx.env.platform, ctx.environment)
    lines = [f"- smoke: {smoke.summary()}"] + [f"  - ❌ {r.name} ({r.target}): {r.detail}" for r in smoke.failed]
    pods: list[k8s.PodInfo] = []
    if ctx.env.kubernetes is not None:
        pods = await k8s.list_pods(ctx.env.kubernetes)
    finished = {"Succeeded", "Completed"}
    not_running = [p for p in pods if p.status != "Running" and p.phase not in finished and p.status not in finished]
    transient = [p for p in not_running if p.status in ctx.policy.health.transient_statuses]
    broken = [p for p in not_running if p not in transient]
    unready = [p for p in pods if p.status == "Running" and not p.is_ready]
    for p in not_running + unready:
        why = f", {p.reason}" if p.reason and p.reason != p.status else ""
        lines.append(f"- pod `{p.name}`: {p.status} (ready {p.ready}, {p.restarts} restarts{why})")
    figures: dict[str, Figure] = {
        "smoke_failed": len(smoke.failed),
        "smoke_cases": len(smoke.results),
        "pods": len(pods),
        "pods_not_running": len(not_running),
    }
    where = "" if ctx.env.kubernetes is not None else "; no Kubernetes block: pods not checked"
    if smoke.failed or broken:
        parts = []
        if smoke.failed:
            parts.append(f"smoke failed: {', '.join(r.name for r in smoke.failed)}")
        if broken:
            parts.append("pods not running: " + ", ".join(f"{p.name} ({p.status})" for p in broken))
        return _result(number, name, title, "fail", "; ".join(parts) + where, figures=figures, details=lines)
    if transient or unready:
        shown = ", ".join(f"{p.name} ({p.status}{'' if p.is_ready else ', not ready'})" for p in transient + unready)
        return _result(number, name, title, "warn", f"pods on their way: {shown}", figures=figures, details=lines)
    summary = f"{len(smoke.results)} smoke cases passed, {len(pods)} pods Running{where}"
    return _result(number, name, title, "pass", summary, figures=figures, details=lines)


# --------------------------------------------------------------------------------------------- 2 resources
async def resources(ctx: MaintenanceContext) -> StepResult:
    """``kubectl top nodes`` and ``kubectl top pods --sort-by=cpu|memory``, as a table artifact."""
    number, name, title = 2, "resources", "Resource usage"
    skipped = _skipped_without_kubernetes(number, name, title, ctx)
    if skipped is not None:
        return skipped
    cluster = ctx.env.require_kubernetes()
    rules = ctx.policy.resources
    nodes, by_cpu, by_memory = await asyncio.gather(
        k8s.top_nodes(cluster), k8s.top_pods(cluster, sort_by="cpu"), k8s.top_pods(cluster, sort_by="memory")
    )
    rows: list[dict[str, object]] = [
        {
            "kind": "node",
            "name": n.name,
            "cpu (m)": n.cpu_m,
            "cpu %": n.cpu_percent,
            "memory (MiB)": round(n.memory_bytes / 2**20, 1),
            "memory %": n.memory_percent,
        }
        for n in nodes
    ]
    for order, pods in (("cpu", by_cpu), ("memory", by_memory)):
        rows += [
            {
                "kind": f"pod by {order}",
                "name": p.name,
                "cpu (m)": p.cpu_m,
                "cpu %": None,
                "memory (MiB)": round(p.memory_bytes / 2**20, 1),
                "memory %": None,
            }
            for p in pods[: rules.top_pods]
        ]
    await publish_table(
        f"weekly-maintenance-resources-{ctx.environment}",
        rows,
        f"Nodes, and pods by CPU and by memory, in {ctx.environment}",
    )
    cpu = [n.cpu_percent for n in nodes if n.cpu_percent is not None]
    memory = [n.memory_percent for n in nodes if n.memory_percent is not None]
    avg_cpu = round(sum(cpu) / len(cpu), 1) if cpu else None
    avg_memory = round(sum(memory) / len(memory), 1) if memory else None
    figures: dict[str, Figure] = {
        "nodes": len(nodes),
        "node_cpu_percent": avg_cpu,
        "node_memory_percent": avg_memory,
        "pods_cpu_m": sum(p.cpu_m for p in by_cpu),
        "pods_memory_mib": round(sum(p.memory_bytes for p in by_cpu) / 2**20, 1),
    }
    details = [
        f"- node `{n.name}`: CPU {n.cpu_m}m ({n.cpu_percent}%), memory {_mib(n.memory_bytes)} ({n.memory_percent}%)"
        for n in nodes
    ]
    if by_cpu:
        details.append(f"- busiest pod by CPU: `{by_cpu[0].name}` {by_cpu[0].cpu_m}m")
    if by_memory:
        details.append(f"- busiest pod by memory: `{by_memory[0].name}` {_mib(by_memory[0].memory_bytes)}")
    hot = [
        n.name
        for n in nodes
        if (n.cpu_percent or 0) >= rules.warn_node_cpu_percent
        or (n.memory_percent or 0) >= rules.warn_node_memory_percent
    ]
    summary = (
        f"{len(nodes)} node(s), CPU {avg_cpu}%{_change(avg_cpu, ctx.previous.get('resources.node_cpu_percent'))}, "
        f"memory {avg_memory}%{_change(avg_memory, ctx.previous.get('resources.node_memory_percent'))}"
    )
    if not nodes:
        return _result(number, name, title, "warn", "no node metrics (metrics.k8s.io gave none)", figures=figures)
    status: StepStatus = "warn" if hot else "pass"
    if hot:
        summary += f"; above the policy's limits: {', '.join(hot)}"
    return _result(number, name, title, status, summary, figures=figures, details=details, rows=rows)


# -------------------------------------------------------------------------------------------------- 3 logs
async def logs(ctx: MaintenanceContext) -> StepResult:
    """The seed's ``kubectl logs deployment/ai-multimodel-api --since=168h | gzip``, through the backup pipeline:
    zstd, SHA-256, an S3 multipart upload under ``weekly-logs/<environment>/<id>/``, and a manifest written last."""
    number, name, title = 3, "logs", "Log archive"
    skipped = _skipped_without_kubernetes(number, name, title, ctx)
    if skipped is not None:
        return skipped
    rules = ctx.policy.logs
    deployments = rules.deployments or [ctx.env.api_deployment]
    report, failure = await run_backup(
        ctx.env,
        ctx.environment,
        "weekly-logs",
        ["logs"],
        options={"log_since_seconds": rules.hours * 3600, "log_deployments": deployments},
    )
    if failure is not None:
        return _result(number, name, title, "fail", f"archive failed: {report.error}", figures={"archived": 0})
    objects = [o for p in report.parts for o in p.objects]
    lines = sum(int(p.info.get("lines", 0)) for p in report.parts)
    figures: dict[str, Figure] = {
        "lines": lines,
        "raw_mib": round(report.raw_bytes / 2**20, 2),
        "stored_mib": round(report.stored_bytes / 2**20, 2),
    }
    details = [f"- `s3://{report.bucket}/{o.key}`: {o.size} bytes, sha256 `{o.sha256}`" for o in objects]
    details.append(f"- manifest `{report.manifest_key}`")
    summary = (
        f"{lines} lines ({rules.hours} h of {', '.join(deployments)}) archived to "
        f"s3://{report.bucket}/{report.prefix}, {_mib(report.stored_bytes)} stored"
    )
    return _result(
        number,
        name,
        title,
        "pass",
        summary,
        figures=figures,
        details=details,
        actions=[f"archived {rules.hours} h of logs to `{report.manifest_key}`"],
    )


# ---------------------------------------------------------------------------------------------- 4 database
async def database(ctx: MaintenanceContext) -> StepResult:
    """``ANALYZE`` (never REINDEX or VACUUM FULL), then size, largest relations, estimated bloat, XID age, unused
    and duplicate indexes, and the seed's ``pg_stats`` query, all from the catalogue."""
    number, name, title = 4, "database", "Database"
    rules = ctx.policy.database
    analyzed = await pg.analyze_database(ctx.env.postgres)
    found = await pg.inspect_database(ctx.env.postgres, top=rules.top)
    xid = found.worst_xid
    bloated = [
        b
        for b in found.bloat
        if b.bloat_percent >= rules.warn_bloat_percent and b.bloat_bytes >= rules.warn_bloat_min_bytes
    ]
    figures: dict[str, Figure] = {
        "size_mib": round(found.size_bytes / 2**20, 1),
        "bloat_mib": round(found.bloat_bytes / 2**20, 1),
        "xid_age_percent": xid.percent if xid else None,
        "unused_indexes": len(found.unused_indexes),
        "duplicate_indexes": len(found.duplicate_indexes),
    }
    details = [f"- size {_mib(found.size_bytes)}; ANALYZE took {analyzed.duration_s:.1f}s"]
    details += [f"- table `{t.schema_name}.{t.name}`: {_mib(t.total_bytes)} with indexes" for t in found.largest_tables]
    details += [f"- index `{i.schema_name}.{i.name}`: {_mib(i.bytes)}" for i in found.largest_indexes[:5]]
    details += [
        f"- bloat `{b.schema_name}.{b.table}`: ~{_mib(b.bloat_bytes)} ({b.bloat_percent}% of {b.pages} pages)"
        for b in found.bloat
        if b.bloat_bytes > 0
    ][:5]
    if xid is not None:
        details.append(
            f"- XID age: `{xid.database}` {xid.age:,} of autovacuum_freeze_max_age {xid.freeze_max_age:,} "
            f"({xid.percent}%)"
        )
    details += [
        f"- unused index `{u.schema_name}.{u.index}` on {u.table}: {_mib(u.bytes)}" for u in found.unused_indexes
    ]
    details += [f"- duplicate indexes on `{d.table}`: {', '.join(d.indexes)}" for d in found.duplicate_indexes]
    details += [
        f"- pg_stats `{c.schema_name}.{c.table}.{c.column}`: n_distinct {c.n_distinct}, correlation {c.correlation}"
        for c in found.column_stats
    ]
    size = f"{_mib(found.size_bytes)}{_change(found.size_bytes / 2**20, ctx.previous.get('database.size_mib'))}"
    summary = (
        f"size {size}, est. bloat {_mib(found.bloat_bytes)}, XID age {xid.percent if xid else '?'}% of freeze max, "
        f"{len(found.unused_indexes)} unused / {len(found.duplicate_indexes)} duplicate indexes"
    )
    status: StepStatus = "pass"
    problems = []
    if xid is not None and xid.percent >= rules.fail_xid_percent:
        status, problems = "fail", [f"XID wraparound near: {xid.database} at {xid.percent}%"]
    else:
        if xid is not None and xid.percent >= rules.warn_xid_percent:
            problems.append(f"XID age {xid.percent}% in {xid.database}")
        if bloated:
            problems.append("bloated: " + ", ".join(f"{b.table} ~{b.bloat_percent}%" for b in bloated))
        if found.duplicate_indexes and rules.warn_on_duplicate_indexes:
            problems.append("duplicate indexes: " + "; ".join(", ".join(d.indexes) for d in found.duplicate_indexes))
        status = "warn" if problems else "pass"
    if problems:
        summary += " — " + "; ".join(problems)
    return _result(
        number,
        name,
        title,
        status,
        summary,
        figures=figures,
        details=details,
        actions=[f"ANALYZE of {found.database} ({analyzed.duration_s:.1f}s)"],
    )


# ---------------------------------------------------------------------------------------------- 5 security
async def security(ctx: MaintenanceContext) -> StepResult:
    """``trivy image --format json`` of every image the Deployments run: counts by severity, fixable ones, and the
    change from last week. No trivy: skipped, never a pass."""
    number, name, title = 5, "security", "Security scan"
    if trivy.trivy_available() is None:
        return _result(number, name, title, "skipped", "skipped: trivy not installed")
    skipped = _skipped_without_kubernetes(number, name, title, ctx)
    if skipped is not None:
        return skipped
    rules = ctx.policy.security
    images = await k8s.list_deployment_images(ctx.env.require_kubernetes())
    unique = list(dict.fromkeys(image for found in images.values() for image in found))
    scans: list[trivy.ImageScan] = []
    errors: list[str] = []
    for image in unique:
        try:
            scans.append(await trivy.scan_image(image, timeout_s=rules.timeout_s))
        except Exception as err:  # noqa: BLE001 - one image's scan failing is reported, the others still run
            errors.append(f"{image}: {describe_error(err)}")
    totals = {s: sum(scan.by_severity[s] for scan in scans) for s in trivy.SEVERITIES}
    fixable = sum(scan.fixable for scan in scans)
    figures: dict[str, Figure] = {f"{s.lower()}": n for s, n in totals.items()}
    figures.update({"fixable": fixable, "images": len(scans)})
    details = [
        f"- `{scan.image}`: "
        + ", ".join(f"{n} {s}" for s, n in scan.by_severity.items() if n)
        + (f"; {scan.fixable} fixable" if scan.fixable else "")
        if scan.unique
        else f"- `{scan.image}`: no vulnerabilities"
        for scan in scans
    ]
    details += [f"- ❌ scan failed: {e}" for e in errors]
    counted = ", ".join(
        f"{totals[s]} {s}{_change(totals[s], ctx.previous.get(f'security.{s.lower()}'))}"
        for s in ("CRITICAL", "HIGH", "MEDIUM", "LOW")
    )
    summary = f"{len(scans)} image(s): {counted}; {fixable} fixable"
    status: StepStatus = "pass"
    if errors or any(totals.get(s, 0) for s in rules.fail_on):
        status = "fail"
    elif any(totals.get(s, 0) for s in rules.warn_on):
        status = "warn"
    if errors:
        summary += f"; {len(errors)} scan(s) failed"
    return _result(number, name, title, status, summary, figures=figures, details=details)


# ------------------------------------------------------------------------------------------- 6 performance
async def performance(ctx: MaintenanceContext) -> StepResult:
    """The seed's ``curl .../api/v1/analytics/summary?period=7d``, against last week's figures."""
    number, name, title = 6, "performance", "Performance"
    rules = ctx.policy.performance
    s = await get_analytics_summary(ctx.env.platform, rules.period)
    figures: dict[str, Figure] = {
        "requests": s.total_requests,
        "error_rate": s.error_rate,
        "p95_ms": s.p95_latency_ms,
        "avg_ms": s.avg_latency_ms,
        "availability": s.availability,
        "cost": s.total_cost,
    }
    prev = ctx.previous
    summary = (
        f"{s.total_requests:,} requests{_change(s.total_requests, prev.get('performance.requests'))}, "
        f"error rate {100 * s.error_rate:.2f}%{_change(s.error_rate, prev.get('performance.error_rate'))}, "
        f"p95 {s.p95_latency_ms:.0f} ms{_change(s.p95_latency_ms, prev.get('performance.p95_ms'))}, "
        f"availability {100 * s.availability:.2f}%"
    )
    problems = []
    if s.error_rate > rules.warn_error_rate:
        problems.append(f"error rate above {100 * rules.warn_error_rate:g}%")
    if s.availability < rules.warn_availability_below:
        problems.append(f"availability below {100 * rules.warn_availability_below:g}%")
    for key, now in (("error_rate", s.error_rate), ("p95_ms", s.p95_latency_ms)):
        before = prev.get(f"performance.{key}")
        if isinstance(before, int | float) and before > 0 and (now - before) / before > rules.warn_relative_increase:
            problems.append(f"{key} up {100 * (now - before) / before:.0f}% on last week")
    details = [
        f"- busiest model: {s.busiest_model}; costliest: {s.costliest_model}; cost {s.total_cost:.2f}",
        f"- average latency {s.avg_latency_ms:.0f} ms",
    ]
    if problems:
        summary += " — " + "; ".join(problems)
    return _result(number, name, title, "warn" if problems else "pass", summary, figures=figures, details=details)


# ------------------------------------------------------------------------------------------------ 7 backups
async def _verified_record(ctx: MaintenanceContext, backup: StoredBackup) -> VerifiedRecord | None:
    data = await asyncio.to_thread(get_bytes, ctx.env.backups, f"{backup.prefix}{VERIFIED_NAME}")
    if data is None:
        return None
    try:
        return VerifiedRecord.model_validate_json(data)
    except ValueError:
        return None


async def backups(ctx: MaintenanceContext) -> StepResult:
    """The newest daily backup's age and completeness (manifest, every object there with its size), when a backup
    was last verified; a missing or stale verification is a warning and runs the verification now."""
    number, name, title = 7, "backups", "Backups"
    rules = ctx.policy.backups
    now = datetime.now(UTC)
    stored = await list_backups(ctx.env.backups, ctx.environment, "daily")
    completed = [b for b in stored if b.status == "completed"]
    if not completed:
        return _result(number, name, title, "fail", f"no completed daily backup of {ctx.environment} in the bucket")
    newest = completed[-1]
    manifest = await read_manifest(ctx.env.backups, newest.prefix)
    assert manifest is not None  # completed means a readable manifest
    present = {o.key: o.size for o in await asyncio.to_thread(list_stored, ctx.env.backups, newest.prefix)}
    missing = [o.key for o in manifest.objects if present.get(o.key) != o.size]
    age_h = round((now - manifest.completed_at).total_seconds() / 3600, 1)
    details = [
        f"- newest daily backup `{newest.prefix}`: completed {manifest.completed_at:%Y-%m-%d %H:%M} UTC "
        f"({age_h} h ago), {len(manifest.objects)} objects, {_mib(newest.size)}",
    ]
    details += [f"  - ❌ missing or wrong size: `{key}`" for key in missing]
    if stored[-1].status != "completed":
        details.append(f"- the newest backup prefix `{stored[-1].prefix}` is {stored[-1].status}")
    verified = [b for b in completed if b.verified]
    record = await _verified_record(ctx, verified[-1]) if verified else None
    verified_age_d = round((now - record.verified_at).total_seconds() / 86400, 1) if record else None
    figures: dict[str, Figure] = {
        "newest_age_h": age_h,
        "objects": len(manifest.objects),
        "size_mib": round(newest.size / 2**20, 1),
        "missing_objects": len(missing),
        "verified_age_d": verified_age_d,
    }
    if record is not None:
        details.append(f"- last verified: `{record.backup_id}` at {record.verified_at:%Y-%m-%d %H:%M} UTC")
    summary = f"newest {newest.backup_id}, {age_h} h old, {len(manifest.objects)} objects all present"
    if missing:
        summary = f"newest {newest.backup_id} is incomplete: {len(missing)} object(s) missing or of the wrong size"
    status: StepStatus = "fail" if missing else "warn" if age_h > rules.max_age_hours else "pass"
    if age_h > rules.max_age_hours:
        summary += f"; older than {rules.max_age_hours:g} h"
    stale = record is None or (verified_age_d or 0) > rules.max_verification_age_days
    actions: list[str] = []
    if stale:
        why = "never verified" if record is None else f"last verified {verified_age_d} days ago"
        summary += f"; {why}"
        status = worst([status, "warn"])
        if rules.run_verification_when_stale:
            report, failure = await run_verification(ctx.env, ctx.environment, restore_target=rules.verification_target)
            if failure is None:
                summary += f"; verified now: {report.backup_id}"
                actions.append(f"verified backup {report.backup_id} (`{report.verified_key}`)")
                figures["verified_age_d"] = 0.0
            else:
                status = "fail"
                summary += f"; the verification run failed: {report.error}"
            if report.restore_where == "source":
                summary += "; ⚠️ restored on the application's own server (no recovery target)"
                status = worst([status, "warn"])
            details.append(f"- verification of `{report.backup_prefix}`: {report.status}")
            if report.restore_server:
                details.append(f"  - {report.restored_on}")
    else:
        summary += f"; last verified {verified_age_d} days ago"
    return _result(number, name, title, status, summary, figures=figures, details=details, actions=actions)


# ------------------------------------------------------------------------------------------- 8 certificates
async def certificates(ctx: MaintenanceContext) -> StepResult:
    """``certificate-check``'s reading (:func:`tasks.certificates.check.check_certificates`): the handshake of each
    Ingress host, the Secret, the Certificate's status; fail under the policy's page days or when a source cannot
    be read, warn under its warn days or when they disagree. The daily check tells people; this step reports."""
    number, name, title = 8, "certificates", "Certificates"
    skipped = _skipped_without_kubernetes(number, name, title, ctx)
    if skipped is not None:
        return skipped
    check = await check_certificates(ctx.env, ctx.environment, load_certificate_policy())
    details = [
        f"- {r.source} `{r.target}`: {r.level}"
        + (f", until {r.not_after:%Y-%m-%d %H:%M} UTC ({r.days_left} days)" if r.not_after else "")
        + (f" — {r.detail}" if r.detail else "")
        for r in check.readings
    ]
    details += [f"- ⚠️ {d}" for d in check.disagreements]
    figures: dict[str, Figure] = {
        "days_left": check.days_left,
        "disagreements": len(check.disagreements),
        "failed_readings": len(check.errors),
    }
    status: StepStatus = (
        "fail" if check.level == "page" or check.errors else check.level if check.level == "warn" else "pass"
    )
    return _result(number, name, title, status, check.summary(), figures=figures, details=details)


# ------------------------------------------------------------------------------------------------ 9 cleanup
async def cleanup(ctx: MaintenanceContext) -> StepResult:
    """Old ReplicaSets (beyond ``revisionHistoryLimit`` or the policy's 5; never the current, previous or last
    known good revision) and ``deployment-alerts-*`` ConfigMaps beyond the newest 3 (never a mounted one).
    A dry run lists them; where the run is a dry run by the environment's default, it asks for approval first."""
    number, name, title = 9, "cleanup", "Resource cleanup"
    skipped = _skipped_without_kubernetes(number, name, title, ctx)
    if skipped is not None:
        return skipped
    cluster = ctx.env.require_kubernetes()
    rules = ctx.policy.cleanup
    rs_plan, cm_plan = await asyncio.gather(
        k8s.list_old_replicasets(cluster, keep=rules.keep_replicasets),
        k8s.list_configmaps_by_prefix(cluster, rules.configmap_prefix, keep=rules.keep_configmaps),
    )
    planned = [f"ReplicaSet {r.name} (revision {r.revision})" for r in rs_plan.old] + [
        f"ConfigMap {c}" for c in cm_plan.old
    ]
    details = [f"- kept `{n}`: {why}" for n, why in sorted(rs_plan.protected.items())]
    details += [f"- kept `{n}`: mounted by {', '.join(deps)}" for n, deps in sorted(cm_plan.mounted.items())]
    figures: dict[str, Figure] = {
        "replicasets_old": len(rs_plan.old),
        "configmaps_old": len(cm_plan.old),
        "replicasets_deleted": 0,
        "configmaps_deleted": 0,
    }
    if not planned:
        return _result(number, name, title, "pass", "nothing to delete", figures=figures, details=details)
    dry = ctx.dry_run
    approved_by: str | None = None
    if dry and ctx.approver is not None:
        approved_by = await ctx.approver("\n".join(f"- {p}" for p in planned))
        dry = approved_by is None
    rs_done = await k8s.delete_old_replicasets(cluster, keep=rules.keep_replicasets, dry_run=dry)
    cm_done = await k8s.delete_configmaps_by_prefix(
        cluster, rules.configmap_prefix, keep=rules.keep_configmaps, dry_run=dry
    )
    deletions = rs_done.deletions + cm_done.deletions
    details += [f"- {d.kind} `{d.name}`: {d.outcome}" for d in deletions]
    if dry:
        why = "dry run" if ctx.approver is None else "not approved"
        summary = f"{why}: would delete {len(rs_done.deleted)} ReplicaSet(s), {len(cm_done.deleted)} ConfigMap(s)"
        return _result(number, name, title, "warn", summary, figures=figures, details=details)
    figures["replicasets_deleted"] = sum(1 for d in rs_done.deletions if d.outcome in ("deleted", "already-gone"))
    figures["configmaps_deleted"] = sum(1 for d in cm_done.deletions if d.outcome in ("deleted", "already-gone"))
    by = f" (approved by {approved_by})" if approved_by else ""
    summary = (
        f"deleted {figures['replicasets_deleted']} ReplicaSet(s), {figures['configmaps_deleted']} ConfigMap(s){by}; "
        f"kept {len(rs_plan.protected)} protected revision(s)"
    )
    actions = [f"deleted {d.kind} {d.name}" for d in deletions if d.outcome == "deleted"]
    return _result(number, name, title, "pass", summary, figures=figures, details=details, actions=actions)
