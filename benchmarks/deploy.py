"""Deploy benchmark (run on demand: ``python -m benchmarks.deploy``; never part of the tests).

Against the running sandbox (``./dev up`` or ``uv run runbooks sandbox up``, then
``eval "$(uv run runbooks sandbox env)"``), with its Prometheus scraping the platform double:

- ``raw_rollout_s``: the seed's way, ``kubectl set image`` and ``kubectl rollout status`` of both Deployments, one
  after the other, for a healthy release (the same kind of release the flow then deploys).
- ``deploy_overhead_s``: ``deploy-and-validate``'s wall time for a healthy release, minus ``raw_rollout_s``, minus
  its configured soak (the longest of the load and the gate window, which the flow waits on purpose).
- ``bad_to_stable_s``: from the rollout's start to both Deployments back on the previous images and Ready, for a
  crash-looping release and for an error-rate release (the flow's own timestamps, ``rollout_started_at`` and
  ``stable_at``). The seed's ``--timeout=600s`` alone takes up to 600 s to notice a crash loop.
- Over ``--good`` healthy and ``--bad`` bad releases of mixed kinds (the sandbox's release catalogue,
  ``sandbox/releases.py``): ``false_rollbacks`` (a good release rolled back) and ``missed_bad`` (a bad one promoted).

The flow runs in this process against the sandbox's Prefect server, with the load and window of the command line
(defaults: 20 requests/s for 10 s, gates over 20 s; the policy's 120 s each in production). The last line printed
is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from typing import Any

from sandbox.config import SandboxSettings, SandboxState

API, FRONTEND = "ai-multimodel-api", "ai-multimodel-frontend"
REGISTRY = "ghcr.io/genspark"
GOOD_KINDS = ["", "-healthy", "-slow-ready-5"]
BAD_KINDS = ["-crashloop", "-errors-0.3", "-latency-1500", "-errors-0.05", "-latency-800"]


def kubectl(kubeconfig: str, *args: str, timeout: float = 660) -> str:
    return subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "-n", "production", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def images(kubeconfig: str, name: str) -> str:
    return kubectl(kubeconfig, "get", f"deployment/{name}", "-o", "jsonpath={.spec.template.spec.containers[0].image}")


def tag(n: int, suffix: str = "") -> tuple[str, str]:
    stamp = f"{int(time.time()) % 100000}{n:02d}"
    return f"v9.{stamp}.0{suffix}", f"v8.{stamp}.0"


def raw_rollout(kubeconfig: str, n: int) -> float:
    """The seed's commands for both Deployments, timed; then both put back (not timed)."""
    api_tag, frontend_tag = tag(n)
    before = {name: images(kubeconfig, name) for name in (API, FRONTEND)}
    started = time.perf_counter()
    for name, t in ((API, api_tag), (FRONTEND, frontend_tag)):
        kubectl(kubeconfig, "set", "image", f"deployment/{name}", f"{name}={REGISTRY}/{name}:{t}")
        kubectl(kubeconfig, "rollout", "status", f"deployment/{name}", "--timeout=600s")
    elapsed = time.perf_counter() - started
    for name, image in before.items():
        kubectl(kubeconfig, "set", "image", f"deployment/{name}", f"{name}={image}")
    for name in before:
        kubectl(kubeconfig, "rollout", "status", f"deployment/{name}", "--timeout=600s")
    return elapsed


async def release(environment: str, api_tag: str, frontend_tag: str, load_s: float, window_s: int) -> Any:
    from flows.deploy import deploy_and_validate

    state = await deploy_and_validate(
        environment=environment,
        api_tag=api_tag,
        frontend_tag=frontend_tag,
        commit="benchmark",
        deployer="benchmarks.deploy",
        load_rate_per_s=20,
        load_duration_s=load_s,
        gate_window_s=window_s,
        approval_timeout_s=10,  # an inconclusive release rolls back after 10 s (counted as a rollback)
        return_state=True,
    )
    return await state.result(raise_on_failure=False)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = SandboxSettings()
    kubeconfig = SandboxState(settings.home).get("kubernetes")["admin_kubeconfig"]
    soak = max(args.load_s, args.window_s)
    result: dict[str, Any] = {"load_s": args.load_s, "window_s": args.window_s}

    raws = [raw_rollout(kubeconfig, i) for i in range(args.raw)]
    result["raw_rollout_s"] = round(min(raws), 1)
    print(f"raw kubectl set image + rollout status of both: {[round(r, 1) for r in raws]} s", flush=True)

    seen: list[dict[str, Any]] = []

    async def one(n: int, suffix: str, good: bool) -> Any:
        api_tag, frontend_tag = tag(n, suffix)
        started = time.perf_counter()
        report = await release(args.environment, api_tag, frontend_tag, args.load_s, args.window_s)
        wall = time.perf_counter() - started
        stable = (
            (report.stable_at - report.rollout_started_at).total_seconds()
            if report.stable_at and report.rollout_started_at
            else None
        )
        row = {
            "tag": api_tag,
            "good": good,
            "outcome": report.outcome,
            "wall_s": round(wall, 1),
            "rollout_to_stable_s": None if stable is None else round(stable, 1),
            "deciding": report.deciding(),
        }
        seen.append(row)
        print(json.dumps(row), flush=True)
        return report, wall, stable

    _, wall, _ = await one(90, "", True)
    result["flow_s"] = round(wall, 1)
    result["deploy_overhead_s"] = round(wall - result["raw_rollout_s"] - soak, 1)
    for suffix, key in (("-crashloop", "bad_to_stable_crashloop_s"), ("-errors-0.3", "bad_to_stable_errors_s")):
        _, _, stable = await one(91 if "crash" in suffix else 92, suffix, False)
        result[key] = None if stable is None else round(stable, 1)
    for i in range(args.good):
        await one(i, GOOD_KINDS[i % len(GOOD_KINDS)], True)
    for i in range(args.bad):
        await one(50 + i, BAD_KINDS[i % len(BAD_KINDS)], False)
    mixed = seen[3:]
    result["releases"] = len(mixed)
    result["false_rollbacks"] = sum(1 for r in mixed if r["good"] and r["outcome"] != "promoted")
    result["missed_bad"] = sum(1 for r in mixed if not r["good"] and r["outcome"] == "promoted")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--environment", default="sandbox")
    parser.add_argument("--good", type=int, default=10)
    parser.add_argument("--bad", type=int, default=10)
    parser.add_argument("--raw", type=int, default=3, help="raw kubectl rollouts (the minimum is reported)")
    parser.add_argument("--load-s", type=float, default=10.0)
    parser.add_argument("--window-s", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
