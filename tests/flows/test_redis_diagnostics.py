"""redis-diagnostics on the session's sandbox: its Redis as the sandbox seeded it (sessions, model cache, rate
limits), the verdicts in a table artifact, the report in a markdown artifact."""

from __future__ import annotations

import json

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.redis_diagnostics import redis_diagnostics
from sandbox.manager import Sandbox
from tests.conftest import TEST_ENVIRONMENT


async def test_redis_diagnostics_reads_the_sandbox_redis_and_publishes_its_checks(sandbox: Sandbox) -> None:
    state = await redis_diagnostics(environment=TEST_ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    result = await state.result()  # type: ignore[union-attr]
    scan = result["scan"]
    counts = {p.name: p.key_count for p in scan.patterns}
    assert scan.complete and scan.scanned == scan.dbsize > 0
    assert counts["sessions"] > 0 and counts["model cache"] > 0  # the sandbox's seeded data
    assert all(p.estimated_count is None for p in scan.patterns)  # complete: exact counts
    # the latency sampling runs beside the scan, not before it: their spans overlap
    latency = result["latency"]
    assert latency.samples > 0 and latency.started_at is not None and latency.ended_at is not None
    assert latency.started_at < scan.ended_at and scan.started_at < latency.ended_at
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(
                    any_=[f"redis-diagnostics-{TEST_ENVIRONMENT}", f"redis-report-{TEST_ENVIRONMENT}"]
                )
            )
        )
    by_key = {a.key: a for a in artifacts}
    table = by_key[f"redis-diagnostics-{TEST_ENVIRONMENT}"].data
    rows = json.loads(table) if isinstance(table, str) else table
    checks = {r["check"]: r for r in rows}  # type: ignore[union-attr]
    assert {"fragmentation", "maxmemory-policy", "latency p99", "keys scanned", "sessions without TTL"} <= set(checks)
    assert checks["keys scanned"]["verdict"] == "pass"
    assert "Keys per pattern" in str(by_key[f"redis-report-{TEST_ENVIRONMENT}"].data)


async def test_a_partial_scan_reports_labelled_estimates(sandbox: Sandbox) -> None:
    # max_keys 1: the scan stops after its first SCAN batch, a small share of the sandbox's keys
    state = await redis_diagnostics(environment=TEST_ENVIRONMENT, max_keys=1, return_state=True)
    assert state.is_completed(), state.message
    scan = (await state.result())["scan"]  # type: ignore[union-attr]
    assert not scan.complete and 0 < scan.fraction < 1
    assert all(p.estimated_count == round(p.key_count / scan.fraction) for p in scan.patterns)
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"redis-report-{TEST_ENVIRONMENT}"]))
        )
    report = str(artifacts[0].data)
    assert f"ESTIMATES from {scan.fraction:.1%} of the keys" in report and "estimated keys" in report
