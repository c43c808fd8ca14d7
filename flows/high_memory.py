"""high-memory: the seed's "Performance Issues / High Memory Usage", started by the HighMemoryUsage alert.

diagnose (``kubectl top pods --sort-by=memory``; the alert's pod, else the top one, described: its container's
limits, restarts, last termination reason (``OOMKilled``) and events; the application's V8 heap from the platform's
``/metrics``, the seed's ``grep nodejs_heap``) → plan (:mod:`tasks.memory.mitigations`, thresholds, the limit's
step and cap from ``tasks/memory/policy.yaml``) → decide (the mode of the environment's kind: ``auto`` acts,
``approve`` pauses for a typed answer in the UI, no answer is a denial, ``observe`` describes; a dry run, the
default of a manual run outside the sandbox, only describes; a raise past the cap asks in every mode) → apply (an
idempotency key claimed on the Deployment, an event per action) → verify (the pod's replacement ready, the pods by
memory again) → report.

The seed's heap dump (``node --inspect-brk`` and Chrome DevTools) is a person's work: the report says so, with the pod.

What it leaves: a table artifact ``high-memory-<environment>`` (the pods by memory, before and after), a markdown
artifact ``high-memory-report-<environment>`` (the pod described, the heap, every action: decision, outcome), and
the events ``runbooks.memory.pod-deleted`` and ``runbooks.memory.limit-raised``. The run fails when an action failed.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import load_environment
from kernel.errors import KubernetesError
from kernel.redact import redact_errors
from tasks import kubernetes as k8s
from tasks.diagnostics.actions import ActionRecord, decide, table
from tasks.memory import mitigations
from tasks.memory.mitigations import MemoryTarget, human, plan, target_of
from tasks.memory.policy import load_policy
from tasks.platform import PlatformMetrics, fetch_metrics
from tasks.reporting import describe_error, emit, publish_markdown, publish_table
from tasks.triage.mitigations import current_run


def _resource(environment: str, namespace: str, deployment: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"runbooks.kubernetes.{environment}.{namespace}.{deployment}",
        "prefect.resource.name": f"{namespace}/{deployment} ({environment})",
    }


def _top_rows(pods: list[k8s.PodUsage], when: str, limits: dict[str, str]) -> list[dict[str, object]]:
    return [
        {
            "when": when,
            "pod": p.name,
            "memory": human(p.memory_bytes),
            "limit": limits.get(p.name, ""),
            "cpu_m": p.cpu_m,
        }
        for p in pods
    ]


@flow(name="high-memory", log_prints=False)
@redact_errors
async def high_memory(
    environment: str = "sandbox",
    namespace: str | None = None,
    pod: str | None = None,
    container: str | None = None,
    alert_name: str = "",
    incident_id: str = "",
    raise_limit: bool = False,
    dry_run: bool | None = None,
    approval_timeout_s: Annotated[int, Field(ge=10, le=86400)] | None = None,
) -> State:
    """Find the pod using the most memory (or the alert's ``pod``), describe it, read the heap, then delete the pod
    when it is near its limit or was OOMKilled, and raise its memory limit by the policy's step (up to its cap;
    past it only with an approval) when it was OOMKilled or ``raise_limit``. ``dry_run`` (default: on everywhere
    but the sandbox) describes only. ``incident_id`` (the gateway's) keys the actions: a re-run never repeats one."""
    logger = get_run_logger()
    env = await load_environment(environment)
    cluster = env.require_kubernetes()
    policy = load_policy()
    ns = namespace or cluster.namespace
    dry = env.dry_run_by_default if dry_run is None else dry_run
    mode = "observe" if dry else policy.modes.for_kind(env.kind)
    timeout = approval_timeout_s or policy.approval_timeout_s
    run = current_run()
    pod, container = pod or None, container or None  # an alert without those labels passes empty strings
    incident = incident_id or f"manual-{run.replace('-', '')[:12]}"

    # diagnose: the seed's `kubectl top pods --sort-by=memory`, the top pod described, the heap
    top = await k8s.top_pods(cluster, ns, sort_by="memory")
    if not top:
        raise KubernetesError(f"no pod metrics in {ns}", hint="is metrics-server (metrics.k8s.io) serving?")
    usage = next((p for p in top if p.name == pod), None) if pod else top[0]
    if usage is None:
        logger.info("pod %s/%s is gone (replaced already?): nothing to do", ns, pod)
        return Completed(message=f"pod {ns}/{pod} is gone: nothing to do", data={"actions": [], "mode": mode})
    described = await k8s.describe_pod(cluster, usage.name, ns)
    target: MemoryTarget = target_of(described, usage, container)
    heap: PlatformMetrics | None = None
    heap_note = ""
    try:
        heap = await fetch_metrics(env.platform)
    except Exception as err:  # noqa: BLE001 - the heap is one figure of the report, not a reason to stop
        heap_note = f"the platform's /metrics could not be read: {describe_error(err)}"
    logger.info(
        "%s: top %s/%s %s of %s, restarts %s, last termination %s; mode %s",
        alert_name or "high-memory",
        ns,
        target.pod,
        human(target.working_set_bytes),
        target.limit or "no limit",
        target.restarts,
        target.last_termination_reason or "none",
        mode,
    )

    # plan → decide → apply, one event per action
    records: list[ActionRecord] = []
    for planned in plan(target, policy, raise_limit=raise_limit):
        record = planned.record
        records.append(record)
        if record.decision == "refused" or record.outcome != "not-done":
            continue
        if not await decide(
            record,
            mode,
            description=f"**high-memory in {environment}**: {record.action} `{record.target}`?\n\n{record.reason}",
            timeout_s=timeout,
            always_ask=planned.always_ask,
        ):
            continue
        assert target.deployment is not None  # a pod without one is refused in the plan
        try:
            if planned.kind == "delete-pod":
                wait_s = policy.replacement_timeout_s
                applied = await mitigations.delete_pod(cluster, target, incident, run, timeout_s=wait_s)
                event = "runbooks.memory.pod-deleted"
            else:
                assert planned.limit is not None
                wait_s = policy.replacement_timeout_s
                applied = await mitigations.raise_limit(cluster, target, planned.limit, incident, run, timeout_s=wait_s)
                event = "runbooks.memory.limit-raised"
        except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
            record.outcome, record.detail = "failed", describe_error(err)
            continue
        record.outcome, record.detail = applied.outcome, applied.detail
        record.data.update(applied.data)
        if applied.outcome == "done":
            emit(
                event,
                _resource(environment, ns, target.deployment),
                {"incident": incident, "decision": record.decision, "approver": record.approver, **record.data},
            )

    # verify: the pods by memory again
    after = await k8s.top_pods(cluster, ns, sort_by="memory") if any(r.outcome == "done" for r in records) else []

    # report
    failed = [r for r in records if r.outcome == "failed"]
    done = [r for r in records if r.outcome == "done"]
    ratio = f" ({target.ratio:.0%})" if target.ratio is not None else ""
    summary = (
        f"{target.namespace}/{target.pod} {human(target.working_set_bytes)} of {target.limit or 'no limit'}{ratio}; "
        f"{len(done)} done, {len(failed)} failed of {len(records)} action(s) ({mode})"
    )
    limits = {target.pod: target.limit or ""}
    rows = _top_rows(top[: policy.top], "before", limits) + _top_rows(after[: policy.top], "after", {})
    await publish_table(f"high-memory-{environment}", rows, f"High memory in {environment}: {summary}")
    c = described.container(target.container)
    heap_line = (
        heap_note
        if heap is None
        else f"V8 heap (the platform's /metrics): used {human(heap.heap_used_bytes)} of "
        f"{human(heap.heap_total_bytes)}; process RSS {human(heap.memory_bytes)}"
    )
    await publish_markdown(
        f"high-memory-report-{environment}",
        "\n\n".join(
            [
                f"# High memory in {environment}: `{target.namespace}/{target.pod}`",
                f"{alert_name or 'run by hand'}; incident `{incident}`; mode **{mode}**"
                + (" (dry run)" if dry else ""),
                table(
                    ["container", "working set", "limit", "requests", "restarts", "state", "last termination"],
                    [
                        [
                            c.name,
                            human(target.working_set_bytes),
                            target.limit or "none",
                            c.requests.get("memory", ""),
                            c.restarts,
                            c.state,
                            f"{c.last_termination_reason or 'none'}"
                            + (f" (exit {c.last_termination_exit_code})" if c.last_termination_exit_code else ""),
                        ]
                    ],
                ),
                f"Owner: {described.owner or 'none'}"
                + (f", Deployment {target.deployment}" if target.deployment else ""),
                heap_line,
                "## Events\n\n"
                + (
                    table(
                        ["type", "reason", "message", "count", "last seen"],
                        [[e.type, e.reason, e.message, e.count, e.last_seen] for e in described.events],
                    )
                    if described.events
                    else "none"
                ),
                "## Actions\n\n"
                + (
                    table(
                        ["action", "target", "reason", "decision", "outcome", "approver", "detail"],
                        [
                            [r.action, r.target, r.reason, r.decision, r.outcome, r.approver or "", r.detail]
                            for r in records
                        ],
                    )
                    if records
                    else f"none: under {policy.delete_pod_ratio:.0%} of its limit and not OOMKilled"
                ),
                "A heap snapshot (the seed's `node --inspect-brk` + Chrome DevTools) is a person's work: "
                f"`kubectl port-forward pod/{target.pod} 9229 -n {target.namespace}` while the pod still runs.",
            ]
        ),
        f"High memory in {environment}",
    )
    for r in records:
        (logger.error if r.outcome == "failed" else logger.info)(
            "%s %s: %s / %s %s", r.action, r.target, r.decision, r.outcome, r.detail
        )
    data = {"actions": records, "target": target, "mode": mode, "incident": incident, "heap": heap}
    if failed:
        return Failed(message=summary, data=data)
    return Completed(message=summary, data=data)
