"""Running the smoke suite: one read task per case, all cases at once, a report the flows branch on.

A case that fails is a :class:`SmokeResult` with ``ok=False`` and the reason, never an exception: the deploy, the
rollback and the recovery flows decide from the report. Only what another try can get past (no answer, a timeout, a
5xx/429 where another status was expected) is retried, by the task policy (:func:`kernel.retry.read_task`); a case
still failing after its retries is reported with the last error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from blocks.platform import PlatformAPI
from kernel.errors import RunbookError
from kernel.retry import is_transient, read_task, status_of
from tasks._http import platform_request
from tasks.platform import parse_prometheus
from tasks.reporting import describe_error
from tasks.smoke.suite import SmokeCase, SmokeSuite, Target, load_suite


class SmokeResult(BaseModel):
    """The verdict on one case. ``skipped`` cases were not run (``detail`` says why) and are never ``ok``."""

    name: str
    target: Target
    ok: bool
    skipped: bool = False
    status_code: int | None = None
    latency_ms: float | None = None
    detail: str

    @property
    def verdict(self) -> Literal["pass", "fail", "skipped"]:
        return "skipped" if self.skipped else "pass" if self.ok else "fail"


class SmokeReport(BaseModel):
    """Every case's result, in the suite's order."""

    environment: str
    results: list[SmokeResult] = Field(default_factory=list)

    @property
    def failed(self) -> list[SmokeResult]:
        return [r for r in self.results if not r.ok and not r.skipped]

    @property
    def skipped(self) -> list[SmokeResult]:
        return [r for r in self.results if r.skipped]

    @property
    def passed(self) -> bool:
        """No case failed (skipped cases do not fail the suite; they are listed in the report)."""
        return not self.failed

    def summary(self) -> str:
        ran = len(self.results) - len(self.skipped)
        text = f"{ran - len(self.failed)}/{ran} smoke case(s) passed"
        if self.failed:
            text += "; failing: " + ", ".join(r.name for r in self.failed)
        if self.skipped:
            text += "; skipped: " + ", ".join(r.name for r in self.skipped)
        return text

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per case, for a table artifact (:func:`tasks.reporting.publish_table`)."""
        return [
            {
                "case": r.name,
                "target": r.target,
                "result": r.verdict,
                "status": r.status_code,
                "latency_ms": r.latency_ms,
                "detail": r.detail,
            }
            for r in self.results
        ]

    def to_markdown(self) -> str:
        icon = {"pass": "✅", "fail": "❌", "skipped": "⏭️"}
        lines = [
            f"# Smoke tests of `{self.environment}`: {'✅ passed' if self.passed else '❌ failed'}",
            "",
            self.summary(),
            "",
            "| case | target | result | status | latency | detail |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            latency = f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else ""
            status = "" if r.status_code is None else str(r.status_code)
            detail = r.detail.replace("|", "/").replace("\n", " ")
            lines.append(f"| {r.name} | {r.target} | {icon[r.verdict]} {r.verdict} | {status} | {latency} | {detail} |")
        return "\n".join(lines)


def _client(platform: PlatformAPI, case: SmokeCase) -> httpx.AsyncClient:
    if case.target == "frontend":
        return platform.get_frontend_client()
    if case.target == "status_page":
        return platform.get_status_page_client()
    return platform.get_client(admin=case.admin)


def judge(case: SmokeCase, response: httpx.Response, latency_ms: float) -> list[str]:
    """What is wrong with an answer whose status was expected (empty: the case passes)."""
    problems: list[str] = []
    if latency_ms > case.max_latency_ms:
        problems.append(f"latency {latency_ms:.1f} ms is over the limit of {case.max_latency_ms:g} ms")
    if case.contains is not None and case.contains not in response.text:
        problems.append(f"the body does not contain {case.contains!r}")
    if case.json_:
        try:
            body = response.json()
        except ValueError:
            problems.append(f"the body is not JSON ({response.headers.get('content-type', 'no content type')})")
        else:
            problems.extend(p for a in case.json_ if (p := a.check(body)) is not None)
    if case.prometheus_metrics:
        try:
            names = {s.name for s in parse_prometheus(response.text)}
        except RunbookError as err:
            problems.append(describe_error(err))
        else:
            missing = [n for n in case.prometheus_metrics if n not in names]
            if missing:
                problems.append(f"metrics missing from the exposition: {', '.join(missing)}")
    return problems


@read_task(task_run_name="smoke-{case.name}")
async def run_smoke_case(platform: PlatformAPI, case: SmokeCase) -> SmokeResult:
    """Send the case's request and judge the answer: status, latency (of this request), body assertions.

    Raises only on a transient failure (retried by the policy); every other failure is a result with ``ok=False``.
    """
    async with _client(platform, case) as client:
        started = time.perf_counter()
        try:
            response = await platform_request(client, case.method, case.path, expect=case.expect_status)
        except RunbookError as err:
            if is_transient(err):
                raise
            latency = round((time.perf_counter() - started) * 1000, 1) if err.status_code is not None else None
            return SmokeResult(
                name=case.name,
                target=case.target,
                ok=False,
                status_code=err.status_code,
                latency_ms=latency,
                detail=describe_error(err),
            )
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
    problems = judge(case, response, latency_ms)
    head = f"{response.status_code} in {latency_ms:.1f} ms (max {case.max_latency_ms:g} ms)"
    return SmokeResult(
        name=case.name,
        target=case.target,
        ok=not problems,
        status_code=response.status_code,
        latency_ms=latency_ms,
        detail=f"{head}: " + "; ".join(problems) if problems else head,
    )


async def run_smoke_suite(platform: PlatformAPI, environment: str, suite: SmokeSuite | None = None) -> SmokeReport:
    """Run every case of ``suite`` (the suite file as it is now, unless given) concurrently against ``platform``.

    A frontend case is skipped when the block has no ``frontend_url``; a case whose task failed (after its retries)
    is a failing result carrying the error's one-line message.
    """
    suite = suite or load_suite()

    async def one(case: SmokeCase) -> SmokeResult:
        if case.target == "frontend" and platform.frontend_url is None:
            return SmokeResult(
                name=case.name,
                target=case.target,
                ok=False,
                skipped=True,
                detail="skipped: the Platform API block has no frontend_url",
            )
        try:
            result: SmokeResult = await run_smoke_case(platform, case)
        except Exception as err:  # noqa: BLE001 - a case that kept failing is a failing result; the flow decides
            return SmokeResult(
                name=case.name, target=case.target, ok=False, status_code=status_of(err), detail=describe_error(err)
            )
        return result

    results = await asyncio.gather(*(one(case) for case in suite.cases))
    return SmokeReport(environment=environment, results=list(results))
