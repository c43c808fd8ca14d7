"""deploy-and-validate and rollback-release on the real sandbox: its Kubernetes API server and simulated node, the
platform double whose metrics follow the release that is deployed, Debian's Prometheus scraping it, and the
receivers standing in for Slack. Effects are checked with ``kubectl``.

Every test puts both Deployments back on the seeded release (``seeded_release``), so later tests see it as seeded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run

from blocks.environment import RunbookEnvironment
from blocks.kubernetes import KubernetesCluster
from blocks.prometheus import PrometheusServer
from blocks.registry import save_environment
from flows.deploy import deploy_and_validate
from flows.rollback import rollback_release
from kernel import processes
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tasks.deploy.rollout import roll_back_deployment
from tests.conftest import TEST_ENVIRONMENT, free_port, fresh_api_pods
from tests.flows.conftest import history_as_found, received
from tests.flows.conftest import production_kubectl as kubectl
from tests.prometheus_server import wait_for

API, FRONTEND = "ai-multimodel-api", "ai-multimodel-frontend"
DEPLOY_ENV = f"{TEST_ENVIRONMENT}-deploy"
NO_DATA_ENV = f"{TEST_ENVIRONMENT}-deploy-nodata"
FAST = {"load_rate_per_s": 20, "load_duration_s": 5, "gate_window_s": 20}
ERROR_RATE = 'sum(rate(http_requests_total{status=~"5.."}[20s])) / sum(rate(http_requests_total[20s]))'


def images(kubeconfig: Path, name: str) -> list[str]:
    out = kubectl(kubeconfig, "get", f"deployment/{name}", "-o", "jsonpath={.spec.template.spec.containers[*].image}")
    return out.split()


def history_images(kubeconfig: Path, name: str) -> dict[int, str]:
    """``kubectl rollout history``'s revisions, each with its image (``--revision=N`` shows the pod template)."""
    out = kubectl(kubeconfig, "rollout", "history", f"deployment/{name}")
    revisions = [int(line.split()[0]) for line in out.splitlines() if line[:1].isdigit()]
    found = {}
    for rev in revisions:
        detail = kubectl(kubeconfig, "rollout", "history", f"deployment/{name}", f"--revision={rev}")
        found[rev] = next(line.split("Image:")[1].strip() for line in detail.splitlines() if "Image:" in line)
    return found


def last_known_good(kubeconfig: Path, name: str) -> dict[str, Any] | None:
    meta = json.loads(kubectl(kubeconfig, "get", f"deployment/{name}", "-o", "json"))["metadata"]
    raw = (meta.get("annotations") or {}).get("runbooks.io/last-known-good")
    return json.loads(raw) if raw else None


def tag_of(image: str) -> str:
    return image.rsplit(":", 1)[1]


@pytest.fixture(scope="module", autouse=True)
def history_kept(admin_kubeconfig: Path) -> Iterator[None]:
    """This module's releases leave the rollout history as they found it (see ``history_as_found``)."""
    with history_as_found(admin_kubeconfig, (API, FRONTEND)):
        yield


@pytest.fixture(scope="module")
def deploy_environment(sandbox: Sandbox) -> Iterator[str]:
    """The session's sandbox with its Prometheus up, as an environment block of its own (the session's
    ``sandbox-test`` block keeps no Prometheus, so other modules are unchanged)."""
    sandbox.up(["prometheus"])
    try:
        url = sandbox.settings.url(sandbox.settings.prometheus_port)
        env = RunbookEnvironment.load(TEST_ENVIRONMENT)
        asyncio.run(save_environment(env.model_copy(update={"prometheus": PrometheusServer(url=url)}), DEPLOY_ENV))

        def has_data() -> bool:
            body = httpx.get(f"{url}/api/v1/query", params={"query": ERROR_RATE}).json()
            return bool(body["data"]["result"])

        wait_for("Prometheus to have 20 s of the platform's metrics", has_data, timeout_s=90)
        yield DEPLOY_ENV
    finally:
        sandbox.down(["prometheus"])


@pytest.fixture(scope="module")
def no_data_environment(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An environment whose Prometheus scrapes a target that is stopped (nothing listens): every gate has no data."""
    home = tmp_path_factory.mktemp("prometheus-nodata")
    (home / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n  - job_name: ai-multimodel-api\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{free_port()}']}}]\n"
    )
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    pid = processes.spawn_daemon(argv, log_path=home / "prometheus.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("Prometheus ready", lambda: httpx.get(f"{url}/-/ready").status_code == 200)
        env = RunbookEnvironment.load(TEST_ENVIRONMENT)
        asyncio.run(save_environment(env.model_copy(update={"prometheus": PrometheusServer(url=url)}), NO_DATA_ENV))
        yield NO_DATA_ENV
    finally:
        processes.stop_group(pid)


@pytest.fixture()
async def seeded_release(kubernetes_cluster: KubernetesCluster) -> AsyncIterator[dict[str, list[str]]]:
    """The images both Deployments run before the test; both are put back afterwards (and the API's pods fresh)."""
    before = {name: (await k8s.get_deployment.fn(kubernetes_cluster, name)).images for name in (API, FRONTEND)}
    try:
        yield before
    finally:
        for name, wanted in before.items():
            await roll_back_deployment.fn(kubernetes_cluster, name, wanted)
        for name in before:
            await k8s.rollout_status.fn(kubernetes_cluster, name, timeout_s=180)
        await fresh_api_pods(kubernetes_cluster)


async def artifact_rows(key: str) -> list[dict[str, str]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        [artifact] = await client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


def new_tags(before: dict[str, list[str]], suffix: str = "") -> tuple[str, str]:
    """Tags no test used before: the API's ``v9.<n>.0<suffix>``, the frontend's healthy ``v8.<n>.0``."""
    n = time.time_ns() % 10**6
    return f"v9.{n}.0{suffix}", f"v8.{n}.0"


async def test_a_good_release_is_promoted_and_recorded_as_last_known_good(
    deploy_environment: str, seeded_release: dict[str, list[str]], admin_kubeconfig: Path, receivers_url: str
) -> None:
    api_tag, frontend_tag = new_tags(seeded_release)
    state = await deploy_and_validate(
        environment=deploy_environment,
        api_tag=api_tag,
        frontend_tag=frontend_tag,
        commit="abc1234",
        deployer="alice",
        reason="weekly release",
        return_state=True,
        **FAST,
    )
    assert state.is_completed(), state.message
    report = await state.result()
    assert report.outcome == "promoted" and report.backup_id
    assert images(admin_kubeconfig, API) == [f"ghcr.io/genspark/{API}:{api_tag}"]
    assert images(admin_kubeconfig, FRONTEND) == [f"ghcr.io/genspark/{FRONTEND}:{frontend_tag}"]
    rows = await artifact_rows(f"deploy-{DEPLOY_ENV}")
    assert {r["check"] for r in rows} >= {"status page", "rollout", "error rate", "latency p95", "load error rate"}
    assert all(r["verdict"] == "✅ pass" for r in rows if r["phase"] != "preflight"), rows
    for name, tag in ((API, api_tag), (FRONTEND, frontend_tag)):
        record = last_known_good(admin_kubeconfig, name)
        assert record is not None and record["images"] == [f"ghcr.io/genspark/{name}:{tag}"]
        assert record["run"] == str(state.state_details.flow_run_id)
    slack = [e["body"] for e in received(receivers_url, "slack")]
    told = [b for b in slack if b.get("channel") == "#ai-multimodel-deployments"]
    assert len(told) == 2, slack
    assert "alice" in json.dumps(told[0]) and "abc1234" in json.dumps(told[0])
    assert "promoted" in told[1]["text"]


@pytest.mark.parametrize(
    ("suffix", "failing"),
    [("-crashloop", "rollout"), ("-errors-0.3", "error rate"), ("-latency-1500", "latency p95")],
)
async def test_a_bad_release_is_rolled_back_on_both_deployments(
    deploy_environment: str,
    seeded_release: dict[str, list[str]],
    admin_kubeconfig: Path,
    suffix: str,
    failing: str,
) -> None:
    api_tag, frontend_tag = new_tags(seeded_release, suffix)
    state = await deploy_and_validate(
        environment=deploy_environment,
        api_tag=api_tag,
        frontend_tag=frontend_tag,
        commit="bad0001",
        deployer="bob",
        return_state=True,
        **FAST,
    )
    assert state.is_failed()
    report = await state.result(raise_on_failure=False)
    assert report.outcome == "rolled-back", report.message
    assert failing in state.message
    [gate] = [c for c in report.checks if c.name == failing]
    assert gate.verdict == "fail"
    # both Deployments back on the images they ran, as the user's own client shows
    assert images(admin_kubeconfig, API) == seeded_release[API]
    assert images(admin_kubeconfig, FRONTEND) == seeded_release[FRONTEND]
    api_history = history_images(admin_kubeconfig, API)
    assert api_history[max(api_history)] == seeded_release[API][0]
    assert f"ghcr.io/genspark/{API}:{api_tag}" in api_history.values()
    frontend_history = history_images(admin_kubeconfig, FRONTEND)
    assert frontend_history[max(frontend_history)] == seeded_release[FRONTEND][0]


async def paused_release(environment: str, run: asyncio.Task[Any], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.done():
            raise AssertionError(f"the release did not pause: {run.result()}")
        async with get_client() as client:
            paused = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["deploy-and-validate"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))),
            )
        for flow_run in paused:
            if flow_run.parameters.get("environment") == environment:
                return flow_run.id
        await asyncio.sleep(0.5)
    raise AssertionError(f"the release never paused within {timeout_s}s")


@pytest.mark.parametrize("answer", ["promote", "timeout"])
async def test_no_data_is_inconclusive_and_waits_for_a_decision(
    no_data_environment: str, seeded_release: dict[str, list[str]], admin_kubeconfig: Path, answer: str
) -> None:
    api_tag, frontend_tag = new_tags(seeded_release)
    run = asyncio.create_task(
        deploy_and_validate(
            environment=no_data_environment,
            api_tag=api_tag,
            frontend_tag=frontend_tag,
            commit="nodata01",
            deployer="carol",
            approval_timeout_s=10 if answer == "timeout" else 600,
            return_state=True,
            **FAST,
        )
    )
    if answer == "promote":
        run_id = await paused_release(no_data_environment, run)
        rows = await artifact_rows(f"deploy-{no_data_environment}")
        gates = {r["check"]: r for r in rows if r["check"] in ("error rate", "latency p95")}
        assert all(r["verdict"] == "❔ inconclusive" and r["value"].startswith("no data") for r in gates.values())
        await aresume_flow_run(run_id, run_input={"promote": True, "approver": "carol", "note": "graphs fine"})
    state = await asyncio.wait_for(run, timeout=300)
    report = await state.result(raise_on_failure=False)
    if answer == "promote":
        assert state.is_completed() and report.outcome == "promoted" and "carol" in report.decided_by
        assert images(admin_kubeconfig, API) == [f"ghcr.io/genspark/{API}:{api_tag}"]
    else:
        assert state.is_failed() and report.outcome == "rolled-back" and "timeout" in report.decided_by
        assert images(admin_kubeconfig, API) == seeded_release[API]
        assert images(admin_kubeconfig, FRONTEND) == seeded_release[FRONTEND]


async def test_an_open_incident_refuses_unless_forced_with_a_reason(
    deploy_environment: str,
    seeded_release: dict[str, list[str]],
    admin_kubeconfig: Path,
    platform_admin: tuple[str, dict[str, str]],
) -> None:
    url, headers = platform_admin
    httpx.put(f"{url}/_sandbox/faults", headers=headers, json={"memory_growth_mb_per_min": 1}).raise_for_status()
    api_tag, _ = new_tags(seeded_release)
    state = await deploy_and_validate(
        environment=deploy_environment, api_tag=api_tag, deployer="dave", return_state=True, **FAST
    )
    assert state.is_failed()
    assert "release refused: the status page shows 1 open incident(s)" in state.message
    assert images(admin_kubeconfig, API) == seeded_release[API]  # nothing changed
    state = await deploy_and_validate(
        environment=deploy_environment,
        api_tag=api_tag,
        deployer="dave",
        force=True,
        force_reason="the fix for that incident",
        return_state=True,
        **FAST,
    )
    report = await state.result(raise_on_failure=False)
    assert report.outcome != "refused", report.message
    [page] = [c for c in report.checks if c.name == "status page"]
    assert "forced by dave: the fix for that incident" in page.detail
    assert images(admin_kubeconfig, API)[0].endswith(api_tag) or report.outcome == "rolled-back"


async def test_rollback_release_restores_last_known_good_and_refuses_the_current_release(
    deploy_environment: str, seeded_release: dict[str, list[str]], admin_kubeconfig: Path, receivers_url: str
) -> None:
    good_api, good_frontend = new_tags(seeded_release)
    state = await deploy_and_validate(
        environment=deploy_environment, api_tag=good_api, frontend_tag=good_frontend, return_state=True, **FAST
    )
    assert state.is_completed(), state.message
    # the release at last known good: going back to it is going nowhere
    same = await rollback_release(environment=deploy_environment, reason="test", return_state=True)
    assert same.is_failed() and "already runs" in same.message
    # a later release that nobody validated (set by hand), then the rollback from the UI
    kubectl(admin_kubeconfig, "set", "image", f"deployment/{API}", f"{API}=ghcr.io/genspark/{API}:v7.0.0-handmade")
    kubectl(admin_kubeconfig, "rollout", "status", f"deployment/{API}", "--timeout=120s")
    done = await rollback_release(environment=deploy_environment, reason="hand-made release", return_state=True)
    assert done.is_completed(), done.message
    assert images(admin_kubeconfig, API) == [f"ghcr.io/genspark/{API}:{good_api}"]
    assert images(admin_kubeconfig, FRONTEND) == [f"ghcr.io/genspark/{FRONTEND}:{good_frontend}"]
    told = [
        e["body"] for e in received(receivers_url, "slack") if e["body"].get("channel") == "#ai-multimodel-deployments"
    ]
    assert "hand-made release" in json.dumps(told[-1]) and good_api in json.dumps(told[-1])


async def test_outside_the_sandbox_a_release_is_a_dry_run_unless_asked(
    production_environment: str, seeded_release: dict[str, list[str]], admin_kubeconfig: Path
) -> None:
    api_tag, _ = new_tags(seeded_release)
    state = await deploy_and_validate(environment=production_environment, api_tag=api_tag, return_state=True)
    assert state.is_completed(), state.message
    report = await state.result()
    assert report.outcome == "dry-run" and f"would roll out ghcr.io/genspark/{API}:{api_tag}" in report.message
    assert {c.name for c in report.checks} >= {"status page", "pods"}  # the preflight ran
    assert report.backup_id is None  # nothing taken, nothing changed
    assert images(admin_kubeconfig, API) == seeded_release[API]


async def test_bad_input_is_one_clear_line(deploy_environment: str) -> None:
    state = await deploy_and_validate(environment=deploy_environment, return_state=True)
    assert state.is_failed() and "nothing to release: give api_tag and/or frontend_tag" in state.message
    state = await deploy_and_validate(environment=deploy_environment, api_tag="v1 ; rm -rf", return_state=True)
    assert state.is_failed() and "api_tag 'v1 ; rm -rf' is not an image tag" in state.message
    state = await deploy_and_validate(environment=deploy_environment, api_tag="v1", force=True, return_state=True)
    assert state.is_failed() and "force needs a force_reason" in state.message
