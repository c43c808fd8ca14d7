"""The smoke suite: its file and its format (bad input named), and its run against the sandbox's platform double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from blocks.environment import load_environment
from blocks.platform import PlatformAPI
from kernel.errors import ConfigurationError, PolicyError
from sandbox.manager import Sandbox
from tasks.smoke import JsonAssertion, SmokeCase, SmokeReport, SmokeResult, SmokeSuite, load_suite, run_smoke_suite
from tests.conftest import TEST_ENVIRONMENT, free_port

# ---- the suite file ---------------------------------------------------------------------------------


def test_the_suite_file_covers_the_seeds_smoke_checks() -> None:
    suite = load_suite()
    by_name = {c.name: c for c in suite.cases}
    assert {"api health", "models list", "model gpt-4 health", "metrics", "status page summary"} <= set(by_name)
    assert {c.path for c in suite.cases if c.target == "frontend"} == {"/health", "/"}
    assert by_name["metrics"].prometheus_metrics  # the exposition must parse and carry the runbook's figures
    assert by_name["admin api"].admin and by_name["admin api"].target == "api"
    assert by_name["status page summary"].target == "status_page"
    assert all(c.expect_status and c.max_latency_ms > 0 for c in suite.cases)


GOOD_CASE = "  - {name: ok case, target: api, path: /health, expect_status: 200, max_latency_ms: 100}\n"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "cases:\n  - {name: slow one, target: api, path: /health, expect_status: 200}\n",
            ["slow one", "max_latency_ms"],
        ),
        (
            "cases:\n" + GOOD_CASE + "  - {name: bad status, target: api, path: /x, expect_status: [200, 9000], "
            "max_latency_ms: 5}\n",
            ["bad status", "expect_status", "9000"],
        ),
        (
            "cases:\n  - {name: typo, target: api, path: /x, expect_statuses: 200, max_latency_ms: 5}\n",
            ["typo", "expect_statuses"],
        ),
        (
            "cases:\n  - {name: where, target: database, path: /x, expect_status: 200, max_latency_ms: 5}\n",
            ["where", "target"],
        ),
        (
            "cases:\n  - name: two checks\n    target: api\n    path: /health\n    expect_status: 200\n"
            "    max_latency_ms: 5\n    json: {path: status, equals: ok, in: [ok]}\n",
            ["two checks", "json", "exactly one of"],
        ),
        (
            "cases:\n  - {name: admin page, target: frontend, path: /, admin: true, expect_status: 200, "
            "max_latency_ms: 5}\n",
            ["admin page", "admin: true only applies to target api"],
        ),
        (
            "cases:\n  - {name: rel, target: api, path: health, expect_status: 200, max_latency_ms: 5}\n",
            ["rel", "path"],
        ),
        ("cases:\n" + GOOD_CASE + GOOD_CASE, ["ok case", "unique"]),
        ("cases: []\n", ["cases"]),
        ("cases:\n  - {name: [unclosed\n", ["cannot read the smoke suite"]),
    ],
    ids=[
        "no latency bound",
        "bad status",
        "unknown key",
        "unknown target",
        "two checks",
        "admin on frontend",
        "relative path",
        "duplicate name",
        "empty",
        "not yaml",
    ],
)
def test_a_bad_suite_names_the_file_and_the_case(tmp_path: Path, text: str, names: list[str]) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert str(path) in message
    for name in names:
        assert name in message
    assert "tasks/smoke/suite.py" in message  # the hint says where the format is described


def test_a_missing_suite_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the smoke suite"):
        load_suite(tmp_path / "nowhere.yaml")


def test_a_suite_edit_applies_to_the_next_load(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text("cases:\n" + GOOD_CASE)
    assert [c.name for c in load_suite(path).cases] == ["ok case"]
    path.write_text("cases:\n" + GOOD_CASE.replace("ok case", "renamed"))
    assert [c.name for c in load_suite(path).cases] == ["renamed"]


BODY: dict[str, Any] = {"status": "healthy", "models": [{"name": "gpt-4"}, {"name": "claude"}], "meta": {}}


@pytest.mark.parametrize(
    ("assertion", "problem"),
    [
        ({"path": "status", "in": ["healthy", "ok"]}, None),
        ({"path": "status", "in": ["ok"]}, "status is 'healthy', expected one of ['ok']"),
        ({"path": "status", "equals": "healthy"}, None),
        ({"path": "models", "min_items": 2}, None),
        ({"path": "models", "min_items": 3}, "models has 2 item(s), expected at least 3"),
        ({"path": "status", "min_items": 1}, "status is str, expected a list"),
        ({"path": "models.1.name", "equals": "claude"}, None),
        ({"path": "models.5.name", "exists": True}, "models.5.name is missing"),
        ({"path": "meta.secret", "exists": False}, None),
        ({"path": "nope", "equals": 1}, "nope is missing"),
    ],
)
def test_json_assertions(assertion: dict[str, Any], problem: str | None) -> None:
    result = JsonAssertion.model_validate(assertion).check(BODY)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_report_passes_with_skipped_cases_listed_and_fails_on_a_failure() -> None:
    ok = SmokeResult(name="a", target="api", ok=True, status_code=200, latency_ms=3.0, detail="200")
    skipped = SmokeResult(name="b", target="frontend", ok=False, skipped=True, detail="skipped: no frontend_url")
    failed = SmokeResult(name="c", target="api", ok=False, status_code=503, latency_ms=2.0, detail="503")
    report = SmokeReport(environment="x", results=[ok, skipped])
    assert report.passed and report.failed == [] and report.skipped == [skipped]
    assert [row["result"] for row in report.to_rows()] == ["pass", "skipped"]
    assert "skipped: b" in report.summary() and "⏭️ skipped" in report.to_markdown()
    report = SmokeReport(environment="x", results=[ok, skipped, failed])
    assert not report.passed and [r.name for r in report.failed] == ["c"]
    assert "failing: c" in report.summary() and "❌ fail" in report.to_markdown()


# ---- against the sandbox's platform double ------------------------------------------------------------


async def sandbox_platform() -> PlatformAPI:
    return (await load_environment(TEST_ENVIRONMENT)).platform


def by_name(report: SmokeReport) -> dict[str, SmokeResult]:
    return {r.name: r for r in report.results}


async def test_the_suite_passes_against_the_platform_double(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    platform = await sandbox_platform()
    assert platform.frontend_url is not None  # the sandbox's block points at the double's frontend
    report = await run_smoke_suite(platform, TEST_ENVIRONMENT)
    assert report.passed, report.to_markdown()
    assert [r.name for r in report.results] == [c.name for c in load_suite().cases]  # the suite's order
    assert not report.skipped
    for r in report.results:
        assert r.ok and r.status_code == 200 and r.latency_ms is not None and r.latency_ms > 0, r


async def test_service_down_fails_the_api_health_and_frontend_cases_naming_the_status(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"service_down": True}).raise_for_status()
    report = await run_smoke_suite(await sandbox_platform(), TEST_ENVIRONMENT)
    assert not report.passed
    results = by_name(report)
    for name in ("api health", "frontend health", "frontend page"):
        result = results[name]
        assert not result.ok and not result.skipped, result
        assert result.status_code == 503 and "503" in result.detail, result
    assert {"api health", "frontend health", "frontend page"} <= {r.name for r in report.failed}
    assert results["status page summary"].ok  # the status page still answers (and says critical)


async def test_a_tiny_latency_bound_fails_on_latency(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    case = SmokeCase(name="quick health", target="api", path="/health", expect_status=200, max_latency_ms=0.001)
    report = await run_smoke_suite(await sandbox_platform(), TEST_ENVIRONMENT, SmokeSuite(cases=[case]))
    [result] = report.results
    assert not result.ok and result.status_code == 200
    assert result.latency_ms is not None and result.latency_ms > 0.001
    assert "latency" in result.detail and "over the limit of 0.001 ms" in result.detail


async def test_body_assertions_and_unexpected_statuses_are_failing_results(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    cases = [
        SmokeCase.model_validate(
            {
                "name": "wrong status value",
                "target": "api",
                "path": "/health",
                "expect_status": 200,
                "max_latency_ms": 5000,
                "json": {"path": "status", "equals": "perfect"},
            }
        ),
        SmokeCase(name="missing page", target="api", path="/nowhere", expect_status=[200, 204], max_latency_ms=5000),
        SmokeCase(
            name="no such text", target="frontend", path="/", expect_status=200, max_latency_ms=5000, contains="zzz"
        ),
        SmokeCase(
            name="health is no metrics",
            target="api",
            path="/api/v1/models",
            expect_status=200,
            max_latency_ms=5000,
            prometheus_metrics=("error_rate",),
        ),
    ]
    report = await run_smoke_suite(await sandbox_platform(), TEST_ENVIRONMENT, SmokeSuite(cases=cases))
    results = by_name(report)
    assert not any(r.ok for r in report.results)
    assert "status is 'healthy', expected 'perfect'" in results["wrong status value"].detail
    assert results["missing page"].status_code == 404 and "404" in results["missing page"].detail
    assert "does not contain 'zzz'" in results["no such text"].detail
    assert "error_rate" in results["health is no metrics"].detail


async def test_a_refused_admin_token_is_a_failing_result_without_the_token(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    platform = (await sandbox_platform()).model_copy(update={"admin_token": SecretStr("not-the-token")})
    case = SmokeCase(name="admin", target="api", path="/admin/models/config", admin=True, expect_status=200,
                     max_latency_ms=5000)  # fmt: skip
    [result] = (await run_smoke_suite(platform, TEST_ENVIRONMENT, SmokeSuite(cases=[case]))).results
    assert not result.ok and result.status_code == 401 and "admin_token" in result.detail
    assert "not-the-token" not in result.detail


async def test_frontend_cases_are_skipped_without_a_frontend_url(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    platform = (await sandbox_platform()).model_copy(update={"frontend_url": None})
    report = await run_smoke_suite(platform, TEST_ENVIRONMENT)
    frontend = [r for r in report.results if r.target == "frontend"]
    assert frontend and all(r.skipped and not r.ok and "frontend_url" in r.detail for r in frontend)
    assert report.passed and report.skipped == frontend  # listed, not failed, never passed
    assert all(r.ok for r in report.results if r.target != "frontend")


async def test_a_target_that_does_not_answer_is_retried_then_a_failing_result(
    sandbox: Sandbox, platform_admin: tuple[str, dict[str, str]]
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/frontend"
    platform = (await sandbox_platform()).model_copy(update={"frontend_url": nobody})
    case = SmokeCase(name="frontend health", target="frontend", path="/health", expect_status=200, max_latency_ms=500)
    [result] = (await run_smoke_suite(platform, TEST_ENVIRONMENT, SmokeSuite(cases=[case]))).results
    assert not result.ok and not result.skipped and result.status_code is None
    assert "cannot reach" in result.detail


def test_the_frontend_client_needs_a_frontend_url() -> None:
    platform = PlatformAPI(base_url="http://127.0.0.1:1", admin_token="x", status_page_url="http://127.0.0.1:1")  # type: ignore[arg-type]
    assert platform.frontend_url is None
    with pytest.raises(ConfigurationError, match="frontend_url"):
        platform.get_frontend_client()
