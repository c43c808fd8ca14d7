"""The smoke suite: the seed's ``./tests/smoke-tests.sh`` as data (``tasks/smoke/suite.yaml``) and the tasks running it.

Run before and after a rollout (deploy-and-validate, rollback-release), after a recovery and by the ``smoke-tests``
flow::

    report = await run_smoke_suite(env.platform, environment)
    if not report.passed:
        ...  # report.failed names the failing cases; report.to_rows() is a table artifact
"""

from tasks.smoke.runner import SmokeReport, SmokeResult, judge, run_smoke_case, run_smoke_suite
from tasks.smoke.suite import SUITE_PATH, JsonAssertion, SmokeCase, SmokeSuite, load_suite

__all__ = [
    "SUITE_PATH",
    "JsonAssertion",
    "SmokeCase",
    "SmokeReport",
    "SmokeResult",
    "SmokeSuite",
    "judge",
    "load_suite",
    "run_smoke_case",
    "run_smoke_suite",
]
