"""The CLI's one doorway into the sandbox: ``runbooks sandbox ...`` and ``runbooks blocks apply``.

The rest of the product never imports ``sandbox/`` (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable


def sandbox_prefect_api_url() -> str:
    """The sandbox's Prefect server: the default when neither PREFECT_API_URL nor a Prefect profile names one."""
    from sandbox.config import SandboxSettings

    return SandboxSettings().prefect_api_url


def apply_sandbox_blocks() -> list[str]:
    """Register our block types and save the sandbox's environment blocks."""
    from sandbox.blocks import apply_blocks
    from sandbox.config import SandboxSettings, SandboxState

    settings = SandboxSettings()
    return asyncio.run(apply_blocks(settings, SandboxState(settings.home)))


def cmd_sandbox(args: argparse.Namespace, *, say: Callable[[str], None]) -> int:
    from sandbox.manager import Sandbox

    sandbox = Sandbox()
    only = args.only.split(",") if getattr(args, "only", None) else None
    if args.action == "up":
        for status in sandbox.up(only, progress=say):
            say(f"  {status.name:<12} up   {status.address}")
        say(
            'sandbox is up: `eval "$(runbooks sandbox env)"`; Prefect UI at '
            f"http://{sandbox.settings.host}:{sandbox.settings.prefect_port}"
        )
    elif args.action == "down":
        sandbox.down(only, progress=say)
        say("sandbox is down")
    elif args.action == "status":
        statuses = sandbox.status(only)
        if args.json:
            print(json.dumps([s.__dict__ for s in statuses], indent=2))
        else:
            for s in statuses:
                print(f"{s.name:<12} {'healthy' if s.healthy else 'DOWN   '}  {s.address:<40} {s.detail}")
        return 0 if all(s.healthy for s in statuses) else 1
    elif args.action == "env":
        print("\n".join(sandbox.export_lines()))
    elif args.action == "fault":
        from sandbox.faults import inject

        say(inject(args.name, sandbox.settings, sandbox.state))
    return 0
