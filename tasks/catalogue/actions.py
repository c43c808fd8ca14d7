"""Actions on the platform: what each kind does, how it is reversed, and how its effect is read back.

An action's idempotency key and its temporary record live in the environment's Redis (storage every worker sees,
never Prefect's local result storage): ``runbooks:action:<key>`` holds the record (claimed with ``SET NX``), and the
sorted set ``runbooks:temporary`` orders the temporary ones by expiry for ``revert-temporary-actions``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.platform import PlatformAPI
from blocks.redis import RedisDatabase
from tasks import platform as api

Kind = Literal[
    "block_ip",
    "throttle_user",
    "revoke_key",
    "set_fallback",
    "reset_breaker",
    "open_breaker",
    "breaker_config",
    "set_weights",
    "set_algorithm",
    "model_timeout",
    "switch_endpoint",
    "cost_strategy",
    "cost_alert",
    "reconnect",
    "issue_key",
]
ACTION_PREFIX = "runbooks:action:"
TEMPORARY = "runbooks:temporary"
_TAKE_OVER = """
local current = redis.call('GET', KEYS[1])
if (current or '') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""
CLAIM_LEASE_S = 300.0  # an action still ``applying`` after this long lost its worker: another run may take it


class Finding(BaseModel):
    """One diagnosed fact, with the figure behind it (a row of the findings table)."""

    check: str
    figure: str
    verdict: Literal["ok", "warn", "fail", "info"] = "info"
    detail: str = ""


class Action(BaseModel):
    """A proposed change: kind, target, why, and its reversal when it is temporary."""

    kind: Kind
    target: str
    reason: str
    params: dict[str, Any] = Field(default_factory=dict)
    key: str = ""  # the idempotency key (set by the plan: <runbook>:<scope>:<kind>:<target>)
    expires_in_s: int | None = None  # temporary: reverted by revert-temporary-actions after this long
    reversal: dict[str, Any] | None = None  # what the revert does (kind and params), filled when applied

    @property
    def label(self) -> str:
        return f"{self.kind} {self.target}"


class ActionRecord(BaseModel):
    """What happened to one action (an artifact row, an event's payload, the Redis record)."""

    key: str
    runbook: str
    kind: Kind
    target: str
    reason: str
    outcome: str  # applied | observed | rejected | skipped | failed | reverted | revert-failed
    by: str = ""
    run: str = ""
    detail: str = ""
    claimed_at: float | None = None
    applied_at: float | None = None
    expires_at: float | None = None
    reversal: dict[str, Any] | None = None
    verified: bool | None = None

    @property
    def expires(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds") if self.expires_at else ""


# ------------------------------------------------------------------------------------------------ shared storage
async def claim(redis: RedisDatabase, record: ActionRecord, lease_s: float = CLAIM_LEASE_S) -> ActionRecord | None:
    """Claim ``record.key`` (SET NX): None when this run holds it now, else the record that holds it. A claim left
    ``applying`` for longer than ``lease_s`` (its worker died before recording the outcome) is taken over."""
    record.claimed_at = now()
    async with redis.get_client() as client:
        if await client.set(ACTION_PREFIX + record.key, record.model_dump_json(), nx=True):
            return None
        raw = await client.get(ACTION_PREFIX + record.key)
        held = ActionRecord.model_validate_json(raw) if raw else None
        stale = held is None or (held.outcome == "applying" and now() - (held.claimed_at or 0) > lease_s)
        # taken over only if it is still the record read (compare-and-set): of two takers, one wins
        if stale and await client.eval(_TAKE_OVER, 1, ACTION_PREFIX + record.key, raw or "", record.model_dump_json()):
            return None
        if stale:
            raw = await client.get(ACTION_PREFIX + record.key)
            held = ActionRecord.model_validate_json(raw) if raw else held
    return held


async def save(redis: RedisDatabase, record: ActionRecord) -> None:
    """The record under its key; a temporary one applied (or whose reversal failed) stays in the expiry set."""
    async with redis.get_client() as client:
        pipe = client.pipeline()
        pipe.set(ACTION_PREFIX + record.key, record.model_dump_json())
        if record.outcome in ("applied", "revert-failed") and record.expires_at is not None:
            pipe.zadd(TEMPORARY, {record.key: record.expires_at})
        else:
            pipe.zrem(TEMPORARY, record.key)
        await pipe.execute()


async def take(redis: RedisDatabase, key: str) -> bool:
    """Take a due temporary action out of the expiry set: True for the one worker that removed it (it reverts)."""
    async with redis.get_client() as client:
        return bool(await client.zrem(TEMPORARY, key))


async def release(redis: RedisDatabase, key: str) -> None:
    """Give a key back (the action never reached the platform): a re-run may try again."""
    async with redis.get_client() as client:
        await client.delete(ACTION_PREFIX + key)


async def temporary_actions(redis: RedisDatabase, due_by: float | None = None) -> list[ActionRecord]:
    """The temporary actions in force, soonest expiry first; with ``due_by``, only those expired by then."""
    async with redis.get_client() as client:
        members = await client.zrangebyscore(TEMPORARY, "-inf", due_by if due_by is not None else "+inf")
        names = [ACTION_PREFIX + (k.decode() if isinstance(k, bytes) else str(k)) for k in members]
        raws = await client.mget(names) if names else []
    return [ActionRecord.model_validate_json(r) for r in raws if r]


# ------------------------------------------------------------------------------------------- kinds: do and undo
Do = Callable[[PlatformAPI, Action], Awaitable[tuple[str, dict[str, Any] | None]]]


async def _block_ip(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.block_ip(p, a.target, a.params["duration_s"], a.reason)
    return f"blocked until {out.get('until')}", {"kind": "unblock_ip"}


async def _throttle(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.throttle_user(p, a.target, a.params["rate_limit"], a.params["duration_s"])
    return f"{out.get('rate_limit')} requests/min until {out.get('until')}", {"kind": "unthrottle_user"}


async def _revoke(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.revoke_api_key(p, a.target)
    return ("already revoked" if out.get("already_revoked") else "revoked") + f" at {out.get('revoked_at')}", None


async def _fallback(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.set_model_fallback(p, a.target, a.params["fallback_model"], a.params["duration_s"])
    return f"traffic to {out.response.get('fallback_model')} until {out.response.get('fallback_until')}", {
        "kind": "clear_fallback"
    }


async def _reset_breaker(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.reset_circuit_breaker(p, a.target)
    return f"breaker {out.get('state')}", None


async def _open_breaker(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.open_circuit_breaker(p, a.target, a.params["duration_s"])
    return f"breaker {out.response.get('state')}", {"kind": "reset_breaker"}


async def _breaker_config(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    before = await api.get_circuit_breaker_config(p)
    await api.update_circuit_breaker_config(p, a.params["changes"])
    previous = {k: before[k] for k in a.params["changes"] if k in before}
    return f"thresholds {previous} -> {a.params['changes']}", {"kind": "breaker_config", "changes": previous}


async def _weights(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    before = (await api.get_lb_config(p))["weights"]
    await api.update_lb_weights(p, a.params["weights"])
    previous = {m: before[m] for m in a.params["weights"] if m in before}
    return f"weights {previous} -> {a.params['weights']}", {"kind": "set_weights", "weights": previous}


async def _algorithm(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    before = (await api.get_lb_config(p))["algorithm"]
    await api.update_lb_config(p, a.params["algorithm"], reset_stats=True)
    return f"algorithm {before} -> {a.params['algorithm']}", {"kind": "set_algorithm", "algorithm": before}


async def _timeout(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    before = await api.get_model_config(p, a.target)
    await api.update_model_config(p, a.target, a.params["changes"])
    previous = {"timeout": before["timeout"], "retry_attempts": before["retry_attempts"]}
    return f"{previous} -> {a.params['changes']}", {"kind": "model_timeout", "changes": previous}


async def _switch(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    before = (await api.get_model_config(p, a.target))["region"]
    await api.switch_model_endpoint(p, a.target, a.params["region"])
    return f"region {before} -> {a.params['region']}", {"kind": "switch_endpoint", "region": before}


async def _cost_strategy(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    await api.set_cost_strategy(p, a.params["strategy"])
    return f"strategy {a.params['strategy']}", {"kind": "clear_cost_strategy"}


async def _cost_alert(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.create_cost_alert(p, a.params["threshold"], a.params["period"], a.params["action"])
    return f"alert {out.get('id')} ({'triggered' if out.get('triggered') else 'not triggered'})", None


async def _reconnect(p: PlatformAPI, a: Action) -> tuple[str, dict[str, Any] | None]:
    out = await api.reconnect_model(p, a.target)
    return "reconnected" if out.get("ok") else f"reconnect failed: {out.get('error')}", None


DO: dict[str, Do] = {
    "block_ip": _block_ip,
    "throttle_user": _throttle,
    "revoke_key": _revoke,
    "set_fallback": _fallback,
    "reset_breaker": _reset_breaker,
    "open_breaker": _open_breaker,
    "breaker_config": _breaker_config,
    "set_weights": _weights,
    "set_algorithm": _algorithm,
    "model_timeout": _timeout,
    "switch_endpoint": _switch,
    "cost_strategy": _cost_strategy,
    "cost_alert": _cost_alert,
    "reconnect": _reconnect,
}


async def undo(p: PlatformAPI, record: ActionRecord) -> str:
    """Run a temporary action's reversal."""
    r = record.reversal or {}
    kind, target = r.get("kind"), record.target
    if kind == "unblock_ip":
        out = await api.unblock_ip(p, target)
        return "unblocked" if out.get("was_blocked") else "no block in force (the platform's TTL ended it)"
    if kind == "unthrottle_user":
        out = await api.unthrottle_user(p, target)
        return "throttle lifted" if out.get("was_throttled") else "no throttle in force"
    if kind == "clear_fallback":
        await api.clear_model_fallback(p, target)
        return "fallback cleared"
    if kind == "reset_breaker":
        await api.reset_circuit_breaker(p, target)
        return "breaker reset"
    if kind == "breaker_config":
        await api.update_circuit_breaker_config(p, r["changes"])
        return f"thresholds back to {r['changes']}"
    if kind == "set_weights":
        await api.update_lb_weights(p, r["weights"])
        return f"weights back to {r['weights']}"
    if kind == "set_algorithm":
        await api.update_lb_config(p, r["algorithm"])
        return f"algorithm back to {r['algorithm']}"
    if kind == "model_timeout":
        await api.update_model_config(p, target, r["changes"])
        return f"config back to {r['changes']}"
    if kind == "switch_endpoint":
        await api.switch_model_endpoint(p, target, r["region"])
        return f"region back to {r['region']}"
    if kind == "clear_cost_strategy":
        await api.clear_cost_strategy(p)
        return "cost strategy cleared"
    raise ValueError(f"no reversal for {record.kind} {target}")


async def in_force(p: PlatformAPI, record: ActionRecord, params: dict[str, Any] | None = None) -> bool | None:
    """Read the platform back: is the action's effect in force? None where the platform has no read for it (a cost
    strategy, a cost alert, an issued key, a reconnect: the flow's verify step re-reads their figures instead).
    ``params``: the action's, where the record (a permanent action's) does not keep them."""
    kind, target = record.kind, record.target
    applied = params if params is not None else record_params(record)
    if kind == "block_ip":
        return target in {b["ip"] for b in (await api.get_rate_limits(p))["blocked_ips"]}
    if kind == "throttle_user":
        return target in {t["user_id"] for t in (await api.get_rate_limits(p))["throttled_users"]}
    if kind == "set_fallback":
        return (await api.get_model_config(p, target)).get("fallback_model") is not None
    if kind == "open_breaker":
        return {b["model"]: b["state"] for b in await api.list_circuit_breakers(p)}.get(target) == "OPEN"
    if kind == "revoke_key":
        return bool((await api.get_api_key_usage(p, target, 1)).get("revoked"))
    if kind == "reset_breaker":
        return {b["model"]: b["state"] for b in await api.list_circuit_breakers(p)}.get(target) == "CLOSED"
    if kind == "set_weights":
        weights = (await api.get_lb_config(p))["weights"]
        return all(abs(weights.get(m, -1) - w) < 1e-9 for m, w in applied.get("weights", {}).items())
    if kind == "set_algorithm":
        return (await api.get_lb_config(p))["algorithm"] == applied.get("algorithm")
    if kind == "breaker_config":
        config = await api.get_circuit_breaker_config(p)
        return all(config.get(k) == v for k, v in applied.get("changes", {}).items())
    if kind == "model_timeout":
        config = await api.get_model_config(p, target)
        return all(config.get(k) == v for k, v in applied.get("changes", {}).items())
    if kind == "switch_endpoint":
        return (await api.get_model_config(p, target))["region"] == applied.get("region")
    return None


def record_params(record: ActionRecord) -> dict[str, Any]:
    return dict((record.reversal or {}).get("applied", {}))


def now() -> float:
    return time.time()
