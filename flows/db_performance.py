"""db-performance: the seed's "Database Performance Issues", each action behind its guard.

diagnose (every session with ``pg_blocking_pids()``, the blocking tree) → plan (the roots of blocking trees whose
longest waiter waited ``min_blocked_s``, and the active queries older than ``long_query_s``; the btree indexes found
bloated) → decide (the mode of the environment's kind in ``postgres.performance`` of
``tasks/diagnostics/policy.yaml``: ``auto`` acts, ``approve`` pauses for a typed answer in the UI showing each
query's text stripped of its literals, no answer is a denial; a dry run, the default outside the sandbox, only
describes) → apply, one event per action → verify (re-read the sessions) → report.

- ``pg_cancel_backend``, then ``pg_terminate_backend`` if the cancel did not end the query within
  ``cancel_wait_s`` (and ``terminate`` is on), of the very backend planned (same pid and start time).
- Never a replication, backup or maintenance session (``protected_applications``, by ``application_name``), never
  a background process, never our own session: those are reported as refused.
- ``REINDEX INDEX CONCURRENTLY`` of the indexes estimated bloated, only inside ``maintenance_window``; never a
  plain REINDEX (it blocks writes).

The alerts SlowQueries and DatabaseLocks start it (the deployment's trigger in ``prefect.yaml``). What it leaves: a
table artifact ``db-performance-<environment>`` (every action: reason, decision, outcome), a table artifact
``db-performance-locks-<environment>`` (the tree before and after), and an event per action carried out
(``runbooks.postgres.backend-cancelled``, ``runbooks.postgres.backend-terminated``, ``runbooks.postgres.reindexed``).
The run fails when an action failed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.diagnostics.actions import ActionRecord, decide
from tasks.diagnostics.policy import load_policy
from tasks.diagnostics.postgres import (
    OWN_APPLICATION_NAME,
    Target,
    lock_rows,
    lock_tree,
    plan_targets,
    read_index_bloat,
    read_sessions,
    reindex_concurrently,
    stop_backend,
)
from tasks.reporting import describe_error, emit, publish_table


def _resource(environment: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"runbooks.postgres.{environment}",
        "prefect.resource.name": f"{environment} PostgreSQL",
    }


def describe_target(target: Target, address: str, environment: str, cancel_wait_s: float, terminate: bool) -> str:
    """What an approver reads: the session, why, and its query's text without literals."""
    s = target.session
    then = f", then pg_terminate_backend if it has not ended within {cancel_wait_s:g}s" if terminate else ""
    return (
        f"**PostgreSQL `{address}` ({environment})**: `pg_cancel_backend({s.pid})`{then}?\n\n"
        f"- session {s.pid}: application `{s.application_name or '-'}`, user `{s.usename or '-'}`, "
        f"client `{s.client or 'local'}`, state `{s.state}`\n"
        f"- why: {target.reason}\n\n"
        f"Its query (literals removed):\n\n```sql\n{s.query}\n```"
    )


@flow(name="db-performance", log_prints=False)
@redact_errors
async def db_performance(
    environment: str = "sandbox",
    alert_name: str | None = None,
    incident_id: str | None = None,
    long_query_s: Annotated[float, Field(gt=0)] | None = None,
    min_blocked_s: Annotated[float, Field(ge=0)] | None = None,
    reindex: bool = True,
    dry_run: bool | None = None,
    approval_timeout_s: Annotated[int, Field(ge=10, le=86400)] | None = None,
) -> State:
    """Stop what holds the environment's PostgreSQL up: the sessions at the root of blocking trees and the queries
    running longer than ``long_query_s`` (cancel, then terminate), and rebuild bloated indexes concurrently inside
    the maintenance window. ``long_query_s`` / ``min_blocked_s`` override the policy's for this run; ``dry_run``
    (default: on everywhere but the sandbox) describes only. ``alert_name`` / ``incident_id``: the alert that
    started the run (for the record)."""
    logger = get_run_logger()
    env = await load_environment(environment)
    spec = load_policy().postgres.performance
    dry = env.dry_run_by_default if dry_run is None else dry_run
    mode = "observe" if dry else spec.modes.for_kind(env.kind)
    timeout = approval_timeout_s or spec.approval_timeout_s
    db = env.postgres
    address = db.safe_address

    # diagnose
    sessions = await read_sessions(db)
    sessions = [s for s in sessions if s.application_name != OWN_APPLICATION_NAME]
    tree = lock_tree(sessions)
    targets = plan_targets(
        sessions,
        tree,
        long_query_s=long_query_s if long_query_s is not None else spec.long_query_s,
        min_blocked_s=min_blocked_s if min_blocked_s is not None else spec.min_blocked_s,
        protected_applications=spec.protected_applications,
    )
    logger.info(
        "%s: %d session(s), %d blocking root(s), %d target(s); mode %s%s",
        address,
        len(sessions),
        len(tree),
        len(targets),
        mode,
        f" (alert {alert_name}, incident {incident_id})" if alert_name or incident_id else "",
    )

    # plan, decide, apply: the sessions
    records: list[ActionRecord] = []
    acted = 0
    for target in targets:
        s = target.session
        record = ActionRecord(
            action="cancel-backend",
            target=f"pid {s.pid} ({s.application_name or '-'})",
            reason=target.reason,
            data={"pid": s.pid, "kind": target.kind, "waiters": target.waiters, "query": s.query},
        )
        records.append(record)
        if target.protected is not None:
            record.decision, record.detail = "refused", f"never touched: {target.protected}"
            continue
        if acted >= spec.max_actions:
            record.decision, record.detail = "refused", f"more than max_actions ({spec.max_actions}) in one run"
            continue
        acted += 1
        if not await decide(
            record,
            mode,
            description=describe_target(target, address, environment, spec.cancel_wait_s, spec.terminate),
            timeout_s=timeout,
        ):
            continue
        try:
            stopped = await stop_backend(db, s, cancel_wait_s=spec.cancel_wait_s, terminate=spec.terminate)
        except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
            record.outcome, record.detail = "failed", describe_error(err)
            continue
        record.action = f"{stopped.action}-backend"
        record.data["result"] = stopped.model_dump()
        record.detail = f"{stopped.outcome} in {stopped.seconds}s" + (f"; {stopped.detail}" if stopped.detail else "")
        if stopped.outcome in ("cancelled", "terminated"):
            record.outcome = "done"
            emit(
                f"runbooks.postgres.backend-{stopped.outcome}",
                _resource(environment),
                {
                    **stopped.model_dump(),
                    "application_name": s.application_name,
                    "query": s.query,
                    "reason": target.reason,
                    "alert": alert_name,
                    "incident_id": incident_id,
                },
            )
        elif stopped.outcome == "gone":
            record.outcome = "no-op"
        else:
            record.outcome = "failed"

    # plan, decide, apply: the bloated indexes
    if reindex:
        bloated = [
            b
            for b in await read_index_bloat(db, min_pages=spec.reindex_min_pages)
            if b.bloat_percent >= spec.reindex_min_bloat_percent
        ]
        open_now = spec.maintenance_window.contains(datetime.now(UTC))
        for b in bloated:
            record = ActionRecord(
                action="reindex-concurrently",
                target=f"{b.schema_name}.{b.index}",
                reason=f"estimated {b.bloat_percent}% bloated ({b.bytes} B, about {b.expected_bytes} B needed)",
                data=b.model_dump(),
            )
            records.append(record)
            if not open_now:
                window = spec.maintenance_window
                record.decision = "refused"
                record.detail = (
                    f"outside the maintenance window ({', '.join(window.days)} {window.start_hour:02d}:00 UTC "
                    f"for {window.hours:g} h)"
                )
                continue
            if not await decide(
                record,
                mode,
                description=f"**PostgreSQL `{address}` ({environment})**: `REINDEX INDEX CONCURRENTLY "
                f"{b.schema_name}.{b.index}` (table {b.table}; {record.reason})?",
                timeout_s=timeout,
            ):
                continue
            try:
                rebuilt = await reindex_concurrently(db, b)
            except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
                record.outcome, record.detail = "failed", describe_error(err)
                continue
            record.outcome = "done"
            record.detail = f"{rebuilt.bytes_before} -> {rebuilt.bytes_after} B in {rebuilt.seconds}s"
            emit("runbooks.postgres.reindexed", _resource(environment), rebuilt.model_dump())

    # verify: what the stopped sessions held up waits no more on them
    after = [s for s in await read_sessions(db) if s.application_name != OWN_APPLICATION_NAME]
    tree_after = lock_tree(after)
    still_blocking = {n.session.pid for n in tree_after}
    for record in records:
        if record.outcome == "done" and record.data.get("pid") in still_blocking:
            record.outcome = "failed"
            record.detail += "; it still blocks other sessions"

    # report
    failed = [r for r in records if r.outcome == "failed"]
    done = [r for r in records if r.outcome == "done"]
    summary = (
        f"{len(done)} done, {len(failed)} failed of {len(records)} action(s) ({mode}); blocking roots "
        f"{len(tree)} -> {len(tree_after)}"
    )
    await publish_table(
        f"db-performance-{environment}",
        [r.row() for r in records] or [{"none": f"nothing to do: {len(tree)} blocking root(s), no long query"}],
        f"PostgreSQL performance of {environment} ({address}): {summary}",
    )
    await publish_table(
        f"db-performance-locks-{environment}",
        [{"when": "before", **r} for r in lock_rows(tree)] + [{"when": "after", **r} for r in lock_rows(tree_after)]
        or [{"none": "no session waited on a lock, before or after"}],
        f"Blocking tree of {environment} before and after db-performance",
    )
    for r in records:
        (logger.error if r.outcome == "failed" else logger.info)(
            "%s %s: %s / %s %s", r.action, r.target, r.decision, r.outcome, r.detail
        )
    data = {"actions": records, "mode": mode, "lock_tree": tree, "lock_tree_after": tree_after}
    if failed:
        return Failed(message=summary, data=data)
    return Completed(message=summary, data=data)
