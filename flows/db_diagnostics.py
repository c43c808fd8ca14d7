"""db-diagnostics: the seed's "PostgreSQL Maintenance / Performance Monitoring" as one read-only run.

Connections by state against ``max_connections``; the slow queries of ``pg_stat_statements`` with the column names
of the server's version (``total_exec_time``/``mean_exec_time`` from 13 on, where the seed's ``total_time`` fails);
table and index sizes, never-used indexes, sequential scans on large tables, the cache hit ratio; the locks as a
blocking tree from ``pg_blocking_pids()`` (not the seed's join of ``pg_locks`` by lock type, which pairs sessions
that do not block each other); long-running and idle-in-transaction sessions. Limits: ``postgres:`` of
``tasks/diagnostics/policy.yaml``. Where ``pg_stat_statements`` is missing, that check says so and how to enable it,
and the rest runs. All of it is read on one connection in one read-only snapshot (``read_snapshot``).

What it leaves, all table artifacts: ``db-diagnostics-<environment>`` (every check: value, limit, verdict),
``db-slow-queries-``, ``db-locks-`` (the tree, depth-first), ``db-sessions-`` (long-running and idle in
transaction), ``db-relations-`` (largest tables and indexes), ``db-indexes-`` (never used; sequential scans on large
tables), and an event ``runbooks.postgres.diagnosed``. Every query text is stripped of its literals. The run
completes whatever it finds; it fails only when PostgreSQL cannot be read.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.diagnostics.policy import load_policy
from tasks.diagnostics.postgres import (
    OWN_APPLICATION_NAME,
    judge_postgres,
    lock_rows,
    lock_tree,
    long_sessions,
    read_snapshot,
)
from tasks.reporting import emit, publish_table


def _rows(rows: list[dict[str, Any]], empty: str) -> list[dict[str, Any]]:
    """A table artifact says so when it has nothing to show, rather than being blank."""
    return rows or [{"none": empty}]


@flow(name="db-diagnostics", log_prints=False)
@redact_errors
async def db_diagnostics(environment: str = "sandbox") -> State:
    """Read the environment's PostgreSQL the way the seed's performance monitoring does, and judge what it reads."""
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_policy().postgres
    db, reads = env.postgres, policy.reads
    # one connection, one read-only snapshot: the connections and the sessions agree, and the server starts one
    # backend for the run instead of one a read
    snapshot = await read_snapshot(
        db, top=reads.top, large_table_bytes=reads.large_table_bytes, statement_timeout_s=reads.statement_timeout_s
    )
    connections, slow, relations = snapshot.connections, snapshot.slow, snapshot.relations
    sessions = [s for s in snapshot.sessions if s.application_name != OWN_APPLICATION_NAME]  # others of ours
    tree = lock_tree(sessions)
    findings = judge_postgres(connections, slow, relations, sessions, tree, policy.limits)
    flagged = [f for f in findings if f.verdict in ("warn", "fail")]
    summary = f"{len(findings) - len(flagged)} of {len(findings)} checks pass" + (
        f"; {', '.join(f'{f.check}: {f.value}' for f in flagged)}" if flagged else ""
    )
    where = f"{environment} ({db.safe_address})"

    await publish_table(
        f"db-diagnostics-{environment}", [f.row() for f in findings], f"PostgreSQL diagnostics of {where}: {summary}"
    )
    await publish_table(
        f"db-slow-queries-{environment}",
        _rows([q.model_dump() for q in slow.queries], slow.detail),
        f"Slow queries of {where} by total time: {slow.detail}",
    )
    await publish_table(
        f"db-locks-{environment}",
        _rows(lock_rows(tree), "no session waits on a lock"),
        f"Blocking tree of {where} (pg_blocking_pids): {len(tree)} root(s)",
    )
    long = long_sessions(sessions, policy.limits)
    await publish_table(
        f"db-sessions-{environment}",
        _rows(
            [
                {
                    "pid": s.pid,
                    "application": s.application_name,
                    "user": s.usename,
                    "state": s.state,
                    "query_age_s": s.query_age_s,
                    "xact_age_s": s.xact_age_s,
                    "state_age_s": s.state_age_s,
                    "wait": f"{s.wait_event_type or ''}:{s.wait_event or ''}".strip(":"),
                    "query": s.query,
                }
                for s in long
            ],
            "no long-running or idle-in-transaction session",
        ),
        f"Long-running (over {policy.limits.long_running_s:g}s) and idle-in-transaction (over "
        f"{policy.limits.idle_in_transaction_s:g}s) sessions of {where}",
    )
    await publish_table(
        f"db-relations-{environment}",
        [r.model_dump() for r in [*relations.tables, *relations.indexes]],
        f"Largest tables and indexes of {where}",
    )
    await publish_table(
        f"db-indexes-{environment}",
        _rows(
            [{"finding": "never used", **u.model_dump()} for u in relations.unused_indexes]
            + [{"finding": "sequential scans", **t.model_dump()} for t in relations.seq_scans],
            "no never-used index, no large table read by sequential scans",
        ),
        f"Index usage of {where}: never-used indexes, sequential scans on tables of "
        f"{reads.large_table_bytes} B or more",
    )
    emit(
        "runbooks.postgres.diagnosed",
        {"prefect.resource.id": f"runbooks.environment.{environment}", "prefect.resource.name": environment},
        {
            "address": db.safe_address,
            "checks": len(findings),
            "flagged": [f.row() for f in flagged],
            "lock_roots": [n.session.pid for n in tree],
            "pg_stat_statements": slow.installed,
        },
    )
    for f in findings:
        (logger.warning if f.verdict in ("warn", "fail") else logger.info)(
            "%-7s %s: %s (limit %s) %s", f.verdict.upper(), f.check, f.value, f.limit, f.detail
        )
    return Completed(
        message=summary,
        data={
            "findings": findings,
            "connections": connections,
            "slow_queries": slow,
            "relations": relations,
            "lock_tree": tree,
            "long_sessions": long,
        },
    )
