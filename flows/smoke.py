"""Smoke tests: the seed's ``./tests/smoke-tests.sh <environment>`` (post-deployment validation, after a rollback,
the resolution of an incident) as a flow.

The cases are data (``tasks/smoke/suite.yaml``, read at each run) and run concurrently; the report is a table
artifact keyed ``smoke-<environment>`` and an event (``runbooks.smoke.passed`` / ``runbooks.smoke.failed``). The
deploy, rollback and recovery flows run the same suite through :func:`tasks.smoke.run_smoke_suite`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.reporting import emit, publish_table
from tasks.smoke import run_smoke_suite


@flow(name="smoke-tests", log_prints=False)
@redact_errors
async def smoke_tests(environment: str = "sandbox") -> State:
    """Run the smoke suite against ``environment``'s platform API, frontend and status page; Failed (naming the
    failing cases) when any case fails. Skipped cases (no frontend URL configured) are listed, not failed."""
    logger = get_run_logger()
    env = await load_environment(environment)
    report = await run_smoke_suite(env.platform, environment)
    await publish_table(f"smoke-{environment}", report.to_rows(), f"Smoke tests of {environment}: {report.summary()}")
    emit(
        "runbooks.smoke.passed" if report.passed else "runbooks.smoke.failed",
        {"prefect.resource.id": f"runbooks.environment.{environment}", "prefect.resource.name": environment},
        {
            "passed": report.passed,
            "failed": [r.name for r in report.failed],
            "skipped": [r.name for r in report.skipped],
            "cases": len(report.results),
        },
    )
    for r in report.results:
        log = logger.info if r.ok or r.skipped else logger.warning
        log("%-7s %s (%s): %s", r.verdict.upper(), r.name, r.target, r.detail)
    if report.passed:
        return Completed(message=report.summary(), data=report)
    return Failed(message=report.summary(), data=report)
