"""redis-maintenance: the seed's "Redis Operations / Maintenance", each command behind its guard.

diagnose (``CONFIG GET maxmemory-policy`` against the diagnostics policy, the server's keyspace, the keys a pattern
matches by SCAN) → plan → decide (the mode of the environment's kind in ``tasks/diagnostics/policy.yaml``: ``auto``
acts, ``approve`` pauses for a typed answer in the UI, no answer is a denial; a dry run, the default outside the
sandbox, only describes) → apply, one event per action → verify (re-read) → report.

- ``CONFIG SET maxmemory-policy``: to ``maxmemory_policy``, or to the policy's when the server's is not allowed.
- ``BGSAVE``, waiting for ``LASTSAVE`` to move (:func:`tasks.redis.bgsave`: trigger → poll → result, a typed
  :class:`~tasks.redis.BgsaveTimeoutError`).
- Deleting the keys of a pattern (SCAN MATCH + UNLINK in batches) and ``FLUSHALL`` only after the server's RDB
  of that moment is in S3 with its manifest, through the backup pipeline (an ``emergency`` backup of the ``redis``
  part, as ``restore-database`` takes one: restorable the same way). A failed backup deletes nothing.
- ``FLUSHALL`` asks in every mode, with the server typed in the answer, and is refused in production unless the
  run says ``allow_production_flushall``.

What it leaves: a table artifact ``redis-maintenance-<environment>`` (every action: decision, outcome), a markdown
artifact ``redis-maintenance-report-<environment>``, and an event per action carried out
(``runbooks.redis.maxmemory-policy-set``, ``runbooks.redis.bgsave``, ``runbooks.redis.keys-deleted``,
``runbooks.redis.flushed``). The run fails when an action failed.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import RunbookEnvironment, load_environment
from kernel.redact import redact_errors
from tasks.backup.orchestration import run_backup
from tasks.backup.report import BackupReport, emit_backup_event
from tasks.diagnostics.actions import ActionRecord, decide, table
from tasks.diagnostics.policy import load_policy
from tasks.redis import (
    bgsave,
    delete_keys,
    flush_all,
    match_keys,
    read_maxmemory_policy,
    redis_server_info,
    set_maxmemory_policy,
)
from tasks.reporting import describe_error, emit, publish_markdown, publish_table


def _resource(environment: str) -> dict[str, str]:
    return {"prefect.resource.id": f"runbooks.redis.{environment}", "prefect.resource.name": f"{environment} Redis"}


class _Backup:
    """The run's one backup of the RDB, taken the first time a destructive action is approved."""

    def __init__(self, env: RunbookEnvironment, environment: str) -> None:
        self.env, self.environment = env, environment
        self.report: BackupReport | None = None
        self.failure: BaseException | None = None

    async def take(self) -> BackupReport:
        if self.report is None:
            self.report, self.failure = await run_backup(self.env, self.environment, "emergency", ["redis"])
            emit_backup_event(self.report)
        if self.failure is not None:
            raise self.failure
        return self.report


@flow(name="redis-maintenance", log_prints=False)
@redact_errors
async def redis_maintenance(
    environment: str = "sandbox",
    maxmemory_policy: str | None = None,
    run_bgsave: bool = False,
    delete_pattern: Annotated[str, Field(max_length=512)] | None = None,
    flushall: bool = False,
    allow_production_flushall: bool = False,
    dry_run: bool | None = None,
    approval_timeout_s: Annotated[int, Field(ge=10, le=86400)] | None = None,
) -> State:
    """Maintain the environment's Redis: check ``maxmemory-policy`` (set it to ``maxmemory_policy``, or to the
    policy's when the server's is not allowed), ``run_bgsave``, delete the keys matching ``delete_pattern`` (a
    Redis glob, of the block's database) after a backup, ``flushall`` (every database) after a backup and an
    approval naming the server. ``dry_run`` (default: on everywhere but the sandbox) describes only."""
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_policy().redis
    spec = policy.maintenance
    dry = env.dry_run_by_default if dry_run is None else dry_run
    mode = "observe" if dry else spec.modes.for_kind(env.kind)
    timeout = approval_timeout_s or spec.approval_timeout_s
    address = env.redis.safe_address
    backup = _Backup(env, environment)
    if delete_pattern is not None and not delete_pattern.strip():
        raise ValueError("delete_pattern is empty: name the keys to delete (a Redis glob such as `cache:old:*`)")

    # diagnose
    server = await redis_server_info(env.redis)
    current = await read_maxmemory_policy(env.redis)
    matched = (
        await match_keys(env.redis, delete_pattern, scan_count=spec.delete.scan_count, limit=spec.delete.max_keys)
        if delete_pattern
        else None
    )
    logger.info(
        "%s: Redis %s, keyspace %s, maxmemory-policy %s; mode %s",
        address,
        server.version,
        server.keyspace,
        current,
        mode,
    )

    # plan
    records: list[ActionRecord] = []
    # the eviction policy changes only when a run asks for it: a run that deletes keys never also changes how the
    # server evicts; a policy the diagnostics policy does not allow is reported with the value to ask for
    wanted = maxmemory_policy
    allowed = current in policy.limits.maxmemory_policy
    policy_record = ActionRecord(
        action="set-maxmemory-policy",
        target=address,
        reason=(
            f"asked for {maxmemory_policy}"
            if maxmemory_policy
            else f"{current} is allowed by the policy"
            if allowed
            else f"{current} is not one of {policy.limits.maxmemory_policy}: "
            f"run with maxmemory_policy={spec.maxmemory_policy} to set it"
        ),
        data={"previous": current, "wanted": wanted or current},
    )
    records.append(policy_record)
    if wanted is None or wanted == current:
        policy_record.outcome = "no-op" if allowed or wanted == current else "not-done"
        policy_record.detail = f"maxmemory-policy is {current}"
    else:
        if await decide(
            policy_record,
            mode,
            description=f"**Redis `{address}` ({environment})**: `CONFIG SET maxmemory-policy {wanted}` "
            f"(now `{current}`)?",
            timeout_s=timeout,
        ):
            try:
                change = await set_maxmemory_policy(env.redis, wanted)
                policy_record.outcome = "done" if change.changed else "no-op"
                policy_record.detail = f"{change.previous} -> {change.current}"
                emit("runbooks.redis.maxmemory-policy-set", _resource(environment), change.model_dump())
            except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
                policy_record.outcome, policy_record.detail = "failed", describe_error(err)

    if run_bgsave:
        record = ActionRecord(action="bgsave", target=address, reason="asked for (the seed's BGSAVE + LASTSAVE)")
        records.append(record)
        # a save changes no data: it runs in auto and approve modes alike, never in a dry run
        record.decision = "observed" if mode == "observe" else "auto"
        if mode != "observe":
            try:
                saved = await bgsave(env.redis, timeout_s=spec.bgsave_timeout_s, poll_interval_s=spec.bgsave_poll_s)
                record.outcome = "done"
                record.detail = f"LASTSAVE {saved.lastsave.isoformat()} after {saved.duration_s}s"
                emit("runbooks.redis.bgsave", _resource(environment), saved.model_dump(mode="json"))
            except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
                record.outcome, record.detail = "failed", describe_error(err)

    if matched is not None:
        record = ActionRecord(
            action="delete-keys",
            target=f"{address} {matched.pattern}",
            reason=f"{matched.count} key(s) match{' (or more)' if matched.truncated else ''}: "
            f"{', '.join(matched.sample[:5])}{' ...' if matched.count > 5 else ''}",
            data={"pattern": matched.pattern, "matched": matched.count},
        )
        records.append(record)
        if matched.truncated:
            record.decision, record.outcome = "refused", "not-done"
            record.detail = f"more than delete.max_keys ({spec.delete.max_keys}) keys match: narrow the pattern"
        elif matched.count == 0:
            record.outcome, record.detail = "no-op", "no key matches"
        elif await decide(
            record,
            mode,
            description=f"**Redis `{address}` ({environment})**: delete the {matched.count} key(s) matching "
            f"`{matched.pattern}` (UNLINK in batches of {spec.delete.batch}), after an RDB backup to S3? "
            f"For example: {', '.join(f'`{k}`' for k in matched.sample[:5])}",
            timeout_s=timeout,
        ):
            await _apply_delete(
                env, environment, record, matched.pattern, backup, spec.delete.scan_count, spec.delete.batch
            )

    if flushall:
        record = ActionRecord(action="flushall", target=address, reason=f"asked for; keyspace {server.keyspace}")
        records.append(record)
        if env.kind == "production" and not allow_production_flushall:
            record.decision, record.outcome = "refused", "not-done"
            record.detail = "FLUSHALL is refused in production unless the run says allow_production_flushall"
        elif await decide(
            record,
            mode,
            description=f"**FLUSHALL of Redis `{address}` ({environment})**: every database of the server "
            f"(keyspace {server.keyspace}) is emptied, after an RDB backup to S3.",
            timeout_s=timeout,
            always_ask=True,
            name_to_type=address,
        ):
            try:
                taken = await backup.take()
                record.data["backup"] = taken.prefix
                flushed = await flush_all(env.redis)
                record.outcome = "done"
                record.detail = f"backup {taken.prefix}; keyspace {flushed.keyspace_before} -> {flushed.keyspace_after}"
                emit(
                    "runbooks.redis.flushed",
                    _resource(environment),
                    {**flushed.model_dump(), "backup": taken.prefix, "manifest": taken.manifest_key},
                )
            except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
                record.outcome, record.detail = "failed", f"nothing flushed: {describe_error(err)}"

    # verify and report
    after = await read_maxmemory_policy(env.redis)
    failed = [r for r in records if r.outcome == "failed"]
    done = [r for r in records if r.outcome == "done"]
    summary = (
        f"{len(done)} done, {len(failed)} failed of {len(records)} action(s) ({mode}); maxmemory-policy {after}"
        + (f"; backup {backup.report.prefix}" if backup.report else "")
    )
    await publish_table(
        f"redis-maintenance-{environment}", [r.row() for r in records], f"Redis maintenance of {environment}: {summary}"
    )
    await publish_markdown(
        f"redis-maintenance-report-{environment}",
        "\n\n".join(
            [
                f"# Redis maintenance of {environment}: {address}",
                f"Redis {server.version}; keyspace before {server.keyspace}; mode **{mode}**"
                + (" (dry run)" if dry else ""),
                table(
                    ["action", "target", "reason", "decision", "outcome", "detail"],
                    [[r.action, r.target, r.reason, r.decision, r.outcome, r.detail] for r in records],
                ),
                f"Backup taken first: `{backup.report.prefix}` (manifest `{backup.report.manifest_key}`)"
                if backup.report
                else "No backup was needed.",
            ]
        ),
        f"Redis maintenance of {environment}",
    )
    for r in records:
        (logger.error if r.outcome == "failed" else logger.info)(
            "%s %s: %s / %s %s", r.action, r.target, r.decision, r.outcome, r.detail
        )
    data = {"actions": records, "backup": backup.report, "mode": mode}
    if failed:
        return Failed(message=summary, data=data)
    return Completed(message=summary, data=data)


async def _apply_delete(
    env: RunbookEnvironment,
    environment: str,
    record: ActionRecord,
    pattern: str,
    backup: _Backup,
    scan_count: int,
    batch: int,
) -> None:
    try:
        taken = await backup.take()
    except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
        record.outcome, record.detail = "failed", f"nothing deleted, the backup failed: {describe_error(err)}"
        return
    record.data["backup"] = taken.prefix
    try:
        deleted = await delete_keys(env.redis, pattern, scan_count=scan_count, batch=batch)
    except Exception as err:  # noqa: BLE001 - recorded, reported, then the run fails
        record.outcome, record.detail = "failed", f"backup {taken.prefix}; {describe_error(err)}"
        return
    record.outcome = "done"
    record.data.update(deleted.model_dump())
    record.detail = (
        f"backup {taken.prefix}; {deleted.deleted} deleted in {deleted.seconds}s, {deleted.remaining} match now"
    )
    emit(
        "runbooks.redis.keys-deleted",
        _resource(environment),
        {**deleted.model_dump(), "backup": taken.prefix, "manifest": taken.manifest_key},
    )
