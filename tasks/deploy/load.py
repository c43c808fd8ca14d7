"""An open-loop load against the platform's API: the seed's ``artillery quick --count 100 --num 10``.

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened to the ones before it, and its latency is
counted from when it was due, so a slow server's queueing shows in the percentiles (a closed loop, which waits for
each answer before the next request, would hide it: coordinated omission). httpx is enough at the tens of
requests per second a release check sends; benchmarks/loadgen.py is the lean generator for hundreds.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from pydantic import BaseModel

from blocks.platform import PlatformAPI
from kernel.retry import once_task
from tasks.deploy.gates import Check, Verdict
from tasks.deploy.policy import LoadSpec


class LoadReport(BaseModel):
    rate_per_s: float
    duration_s: float
    sent: int
    ok: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    first_error: str | None = None

    def checks(self, spec: LoadSpec) -> list[Check]:
        """The load's two checks: its error rate and its p95 latency against the policy's limits."""
        window = f"{self.sent} requests at {self.rate_per_s:g}/s over {self.duration_s:g}s"

        def verdict(value: float | None, limit: float) -> Verdict:
            return "inconclusive" if value is None else ("fail" if value > limit else "pass")

        return [
            Check(
                phase="validation",
                name="load error rate",
                value="no requests" if self.error_rate is None else f"{self.error_rate:.2%} ({self.errors} errors)",
                threshold=f"≤ {spec.max_error_rate:.2%}",
                verdict=verdict(self.error_rate, spec.max_error_rate),
                detail=self.first_error or window,
            ),
            Check(
                phase="validation",
                name="load latency p95",
                value="no answers" if self.p95_ms is None else f"{self.p95_ms:.0f} ms (p99 {self.p99_ms:.0f} ms)",
                threshold=f"≤ {spec.max_p95_ms:.0f} ms",
                verdict=verdict(self.p95_ms, spec.max_p95_ms),
                detail=window,
            ),
        ]


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


@once_task  # a load is not retried: a second one would double what the release was measured with
async def run_load(platform: PlatformAPI, spec: LoadSpec, *, rate_per_s: float, duration_s: float) -> LoadReport:
    """GET the policy's paths in turn at ``rate_per_s`` for ``duration_s``; latency from each request's due time."""
    total = int(rate_per_s * duration_s)
    latencies: list[float] = []
    errors: list[str] = []
    async with platform.get_client(admin=False) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            due = start + i / rate_per_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            path = spec.paths[i % len(spec.paths)]
            try:
                response = await client.get(path)
            except httpx.HTTPError as err:
                errors.append(f"GET {path}: {type(err).__name__}")
                return
            latencies.append((time.perf_counter() - due) * 1000)
            if response.status_code >= 500:
                errors.append(f"GET {path}: {response.status_code}")

        await asyncio.gather(*(one(i) for i in range(total)))
    ordered = sorted(latencies)
    return LoadReport(
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        sent=total,
        ok=total - len(errors),
        errors=len(errors),
        error_rate=(len(errors) / total) if total else None,
        p50_ms=_percentile(ordered, 0.50),
        p95_ms=_percentile(ordered, 0.95),
        p99_ms=_percentile(ordered, 0.99),
        max_ms=ordered[-1] if ordered else None,
        first_error=errors[0] if errors else None,
    )
