"""The operator's command line: ``runbooks sandbox|blocks|check|run|gateway|actions|worker``.

Every failure the operator can fix is one line on stderr (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kernel.errors import ConfigurationError, RunbookError
from kernel.redact import redact


def _say(message: str) -> None:
    print(redact(message), file=sys.stderr, flush=True)


def _prefect_api_url() -> str:
    """PREFECT_API_URL from the environment or Prefect's profile, else the sandbox's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        return str(configured)
    from runbooks.sandbox_cli import sandbox_prefect_api_url  # the embedded default

    return sandbox_prefect_api_url()


def _with_prefect(fn: Callable[[], Any]) -> Any:
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = _prefect_api_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            return fn()
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise RunbookError(
                f"cannot reach the Prefect API at {url}",
                hint="run `runbooks sandbox up` or set PREFECT_API_URL",
            ) from err


# ------------------------------------------------------------------------------------------------ sandbox
def cmd_sandbox(args: argparse.Namespace) -> int:
    from runbooks.sandbox_cli import cmd_sandbox as run

    return run(args, say=_say)


# ------------------------------------------------------------------------------------------------- blocks
def cmd_blocks(args: argparse.Namespace) -> int:
    from blocks.registry import register_block_types

    if args.action == "register":
        slugs = _with_prefect(lambda: asyncio.run(register_block_types()))
        _say("registered block types: " + ", ".join(slugs))
        return 0
    from runbooks.sandbox_cli import apply_sandbox_blocks

    saved = _with_prefect(apply_sandbox_blocks)
    _say("saved blocks: " + ", ".join(saved))
    return 0


# -------------------------------------------------------------------------------------------------- check
def cmd_check(args: argparse.Namespace) -> int:
    from runbooks.check import check_environment

    results = _with_prefect(lambda: asyncio.run(check_environment(args.environment)))
    for r in results:
        print(redact(f"{'ok  ' if r.ok else 'FAIL'} {r.block}: {r.detail}"))
    return 0 if all(r.ok for r in results) else 2


# ---------------------------------------------------------------------------------------------------- run
def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError("command line", "--param", f"{pair!r} is not key=value")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def cmd_run(args: argparse.Namespace) -> int:
    from prefect.deployments import run_deployment

    params = _parse_params(args.param or [])
    name = args.deployment if "/" in args.deployment else f"{args.deployment}/{args.deployment}"
    timeout = None if args.no_wait else args.timeout

    def go() -> Any:
        return run_deployment(name=name, parameters=params or None, timeout=0 if args.no_wait else timeout)

    flow_run = _with_prefect(go)
    ui = _prefect_api_url().removesuffix("/api")
    state = flow_run.state
    _say(
        f"flow run {flow_run.name} ({flow_run.id}): {state.name if state else 'scheduled'}"
        f"{' - ' + state.message if state and state.message else ''}"
    )
    _say(f"  {ui}/runs/flow-run/{flow_run.id}")
    if args.no_wait:
        return 0
    return 0 if state is not None and state.is_completed() else 1


# ------------------------------------------------------------------------------------------------ gateway
def cmd_gateway(args: argparse.Namespace) -> int:
    if args.action == "status":
        return cmd_gateway_status(args)
    if args.action == "replay":
        return cmd_gateway_replay(args)
    import uvicorn

    from runbooks.gateway.app import GatewaySettings, create_app

    settings = GatewaySettings()
    if not os.environ.get("RUNBOOKS_GATEWAY_PREFECT_API_URL"):
        settings.prefect_api_url = _prefect_api_url()
    if settings.prefect_api_key is None:  # Prefect's profile, as for the URL
        from prefect.settings import PREFECT_API_KEY
        from pydantic import SecretStr

        if key := PREFECT_API_KEY.value():
            settings.prefect_api_key = SecretStr(str(key))
    try:
        app = create_app(settings)
    except ValueError as err:
        raise ConfigurationError("gateway", "RUNBOOKS_GATEWAY_TOKEN", str(err)) from err
    _say(f"alert gateway on http://{args.host}:{args.port} -> Prefect {settings.prefect_api_url}")
    # uvloop and httptools: about a quarter less CPU per alert than asyncio + h11 (benchmarks/triage.py)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop="uvloop", http="httptools")
    return 0


def _gateway_store() -> Any:
    """The gateway's SQLite file (RUNBOOKS_GATEWAY_DB_PATH), opened beside a running gateway (WAL: no lock held)."""
    from runbooks.gateway.app import GatewaySettings
    from runbooks.gateway.store import GatewayStore

    path = GatewaySettings().db_path
    if not path.is_file():
        raise ConfigurationError(
            "gateway",
            "RUNBOOKS_GATEWAY_DB_PATH",
            f"no gateway database at {path}",
            hint="point it at the gateway's file",
        )
    return GatewayStore(path)


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_gateway_status(args: argparse.Namespace) -> int:
    """Counts on the first line, then one line per dead letter; exit 2 when there is any (as ``check`` on a FAIL)."""
    store = _gateway_store()
    try:
        counts, letters = store.counts(), store.dead_letters()
    finally:
        store.close()
    print(f"pending {counts.pending}, delivered {counts.delivered}, dead-lettered {counts.dead_lettered}")
    for d in letters:
        print(
            redact(
                f"dead letter {d.id}: {d.event} incident {d.incident_id or '-'}, "
                f"Prefect answered {d.status} at {_when(d.dead_at)}: {d.reason}"
            )
        )
    return 2 if letters else 0


def cmd_gateway_replay(args: argparse.Namespace) -> int:
    store = _gateway_store()
    try:
        replayed = store.replay(None if args.all else args.id)
    finally:
        store.close()
    missing = [] if args.all else [i for i in args.id if i not in replayed]
    for i in missing:
        _say(f"error: no dead letter {i} (see `runbooks gateway status`)")
    if replayed or not missing:
        _say(
            f"{len(replayed)} dead letter(s) back in the outbox"
            + (f": {', '.join(map(str, replayed))}" if replayed else "")
        )
    return 2 if missing else 0


# ------------------------------------------------------------------------------------------------ actions
def cmd_actions(args: argparse.Namespace) -> int:
    """The catalogue's temporary actions in force in an environment, soonest end first (one line each)."""
    import time

    from blocks.environment import load_environment
    from tasks.catalogue.actions import temporary_actions

    async def read() -> list[Any]:
        env = await load_environment(args.environment)
        return await temporary_actions(env.redis)

    records = _with_prefect(lambda: asyncio.run(read()))
    if not records:
        print(f"no temporary action in force in {args.environment}")
        return 0
    now = time.time()
    for r in records:
        left = (r.expires_at or now) - now
        due = f"ends in {left:.0f}s" if left > 0 else f"overdue by {-left:.0f}s (revert-temporary-actions)"
        state = " REVERT FAILED, retried" if r.outcome == "revert-failed" else ""
        print(
            redact(
                f"{r.kind} {r.target}: until {_when(r.expires_at or now)} ({due}){state}; "
                f"{r.runbook} run {r.run} by {r.by or '-'}; {r.reason}"
            )
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from runbooks.worker import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.pool, name=args.name, preload=args.preload, query_s=args.query_seconds))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbooks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sb = sub.add_parser("sandbox", help="the local stand-in of production")
    sb_sub = sb.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("up", "start every component (idempotent)"),
        ("down", "stop what up started"),
        ("status", "health and address of each component"),
        ("env", "export lines for `eval`"),
    ):
        p = sb_sub.add_parser(action, help=help_text)
        if action in {"up", "down", "status"}:
            p.add_argument("--only", help="comma-separated component names")
        if action == "status":
            p.add_argument("--json", action="store_true")
    fault = sb_sub.add_parser(
        "fault",
        help="inject a production failure (the matching alert fires, the triage runs); `clear` undoes them all",
        description="Faults add up; `runbooks sandbox fault clear` undoes them all.",
    )
    fault.add_argument(
        "name",
        help="model-down, error-rate, latency, crashloop-release, memory-growth, leaked-key, service-down, or clear",
    )
    sb.set_defaults(func=cmd_sandbox)

    bl = sub.add_parser("blocks", help="Prefect blocks")
    bl_sub = bl.add_subparsers(dest="action", required=True)
    bl_sub.add_parser("apply", help="register block types and save the sandbox's blocks")
    bl_sub.add_parser("register", help="register block types only (staging/production are made in the UI)")
    bl.set_defaults(func=cmd_blocks)

    ck = sub.add_parser("check", help="prove every block of an environment works")
    ck.add_argument("--environment", "-e", default=os.environ.get("RUNBOOKS_ENVIRONMENT", "sandbox"))
    ck.set_defaults(func=cmd_check)

    rn = sub.add_parser("run", help="run a deployment and wait for its end")
    rn.add_argument("deployment", help="deployment name (or flow/deployment)")
    rn.add_argument("--param", "-p", action="append", help="key=value (value parsed as JSON when it can be)")
    rn.add_argument("--timeout", type=float, default=900.0)
    rn.add_argument("--no-wait", action="store_true")
    rn.set_defaults(func=cmd_run)

    gw = sub.add_parser("gateway", help="the alert gateway (Alertmanager, Grafana, generic JSON)")
    gw_sub = gw.add_subparsers(dest="action", required=True)
    serve = gw_sub.add_parser("serve", help="serve until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8102)
    gw_sub.add_parser("status", help="outbox counts and the dead letters (events Prefect refused)")
    replay = gw_sub.add_parser("replay", help="move dead letters back to the outbox")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", help="a dead letter's id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    gw.set_defaults(func=cmd_gateway)

    ac = sub.add_parser("actions", help="the temporary actions in force (IP blocks, throttles, fallbacks...)")
    ac.add_argument("--environment", "-e", default=os.environ.get("RUNBOOKS_ENVIRONMENT", "sandbox"))
    ac.set_defaults(func=cmd_actions)

    wk = sub.add_parser("worker", help="the in-process worker: the fast lane for alert-triggered triage")
    wk.add_argument("--pool", required=True, help="work pool to poll (its deployments run in this process)")
    wk.add_argument("--name", help="worker name shown in the UI")
    wk.add_argument("--preload", action="append", default=[], help="entrypoint to import at start (repeatable)")
    wk.add_argument("--query-seconds", type=float, default=1.0)
    wk.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except RunbookError as err:
        _say(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
