"""The approval of a production rollback, done the way an on-call engineer does it: in the Prefect UI, in a real
browser (Debian's Chromium driven by Playwright; ``./dev`` installs it with apt-get, no browser is downloaded).

The harness's server serves the API only (Prefect never serves the UI from an ephemeral server: see
``create_ui_app`` in ``prefect.server.api.server``), so ``prefect_ui`` starts a UI-enabled ``prefect server start``
of its own, on its own SQLite database, whose UI talks to the harness's API (``PREFECT_UI_API_URL``): the run the
browser shows and resumes is the test's run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright, expect
from prefect.settings import PREFECT_API_URL

from blocks.kubernetes import KubernetesCluster
from deployments.apply import prefect_cli
from flows.triage import incident_resolved, incident_triage
from kernel import processes
from sandbox.manager import Sandbox
from tasks import kubernetes as k8s
from tasks.triage import mitigations
from tests.conftest import free_port
from tests.flows.conftest import API, BROKEN, paused_triage, received, rollout_history

CHROMIUM = Path("/usr/bin/chromium")
APPROVER = "carol"
UI_TIMEOUT_MS = 30_000  # every Playwright wait (a page, an element, a click, an expect) is bounded by it


@pytest.fixture(scope="module")
def prefect_ui(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Prefect UI whose API is the harness's server."""
    api_url = PREFECT_API_URL.value()
    assert api_url, "the harness set no PREFECT_API_URL"
    home = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'ui-server.db'}",
            "PREFECT_SERVER_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": api_url,  # what the UI in the browser calls: the harness
            "PREFECT_SERVER_UI_V2_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    argv = [prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"]
    log = home / "server.log"
    pid = processes.spawn_daemon(argv, log_path=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert processes.is_alive(pid), f"the UI server exited during start-up: {log.read_text()[-3000:]}"
            try:
                settings = httpx.get(f"{url}/ui-settings", timeout=2)
                if settings.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the UI server did not answer within 120s: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert settings.json()["api_url"] == api_url, settings.text
        yield url
    finally:
        processes.stop_group(pid)


def kubectl_images(admin_kubeconfig: Path) -> list[str]:
    """The Deployment's images as ``kubectl`` shows them (the user's own client, not ours)."""
    out = subprocess.run(
        [
            "kubectl",
            "--kubeconfig",
            str(admin_kubeconfig),
            "get",
            f"deployment/{API}",
            "-n",
            "production",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return out.split()


async def approve_in_the_ui(page: Page, run_url: str, screenshot: Path) -> str:
    """Open the paused run, press Resume, check the form shows the proposed rollback, approve it as ``APPROVER``
    and submit. Returns the text of the form (what the approver read)."""
    await page.goto(run_url, wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
    await page.get_by_role("button", name="Resume", exact=True).click()
    form = page.locator(".p-modal").filter(has_text="Resume Flow Run")
    await expect(form).to_be_visible(timeout=UI_TIMEOUT_MS)
    # the description is fetched once the form opens
    await expect(form).to_contain_text("rollback", timeout=UI_TIMEOUT_MS)
    shown = await form.inner_text()
    approve = form.get_by_role("switch")  # the form's only boolean: approve
    await approve.click()
    await expect(approve).to_have_attribute("aria-checked", "true", timeout=UI_TIMEOUT_MS)
    await form.locator(".schema-form-property").filter(has_text="Approver").locator("textarea").fill(APPROVER)
    await page.screenshot(path=str(screenshot), full_page=True)
    await form.get_by_role("button", name="Submit").click()
    await expect(form).to_be_hidden(timeout=UI_TIMEOUT_MS)
    return shown


async def test_the_ui_approval_form_shows_the_rollback_and_applies_it(
    sandbox: Sandbox,
    platform_admin: tuple[str, dict[str, str]],
    receivers_url: str,
    production_environment: str,
    kubernetes_cluster: KubernetesCluster,
    admin_kubeconfig: Path,
    broken_release: k8s.DeploymentInfo,
    prefect_ui: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Production, P1 crash loop (as in test_production_asks_before_a_rollback): the run pauses; in the UI its
    approval form names the rollback, the Deployment and why; approved there, the run resumes and rolls back, and
    the record names the approver typed in the form."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium (./dev install does)"
    monkeypatch.setattr(mitigations, "APPROVAL_POLL_INTERVAL_S", 1)
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    history = rollout_history(admin_kubeconfig)
    screenshot, failed = tmp_path / "approval-form.png", tmp_path / "ui-failure.png"
    run = asyncio.create_task(
        incident_triage(
            alert_name="HighErrorRate",
            incident_id=incident_id,
            alert_severity="critical",
            environment=production_environment,
            approval_timeout_s=600,
        )
    )
    try:
        run_id = await paused_triage(incident_id, run)
        assert (await k8s.get_deployment.fn(kubernetes_cluster, API)).images == [BROKEN]  # nothing yet
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(UI_TIMEOUT_MS)
                try:
                    shown = await approve_in_the_ui(page, f"{prefect_ui}/runs/flow-run/{run_id}", screenshot)
                except (PlaywrightError, AssertionError) as err:
                    await page.screenshot(path=str(failed), full_page=True)
                    raise AssertionError(f"the approval in the UI failed (the page then: {failed})") from err
            finally:
                await browser.close()
        report = await asyncio.wait_for(run, timeout=240)
    finally:
        run.cancel()

    seen = f"(the form: {screenshot})"
    for proposed in ("rollback", API, "P1 HighErrorRate", "crash-looping", "previous revision", "timeout_s=300"):
        assert proposed in shown, f"the approval form does not show {proposed!r} {seen}:\n{shown}"
    [mitigation] = report.mitigations
    assert (mitigation.action, mitigation.outcome, mitigation.by) == ("rollback", "applied", APPROVER), (
        f"{mitigation} {seen}"
    )
    after = await k8s.get_deployment.fn(kubernetes_cluster, API)
    assert after.images == broken_release.images, f"not rolled back: {after.images} {seen}"
    assert kubectl_images(admin_kubeconfig) == broken_release.images, seen
    assert max(rollout_history(admin_kubeconfig)) == max(history) + 1, f"one undo, one new revision {seen}"

    await incident_resolved(incident_id=incident_id, alert_name="HighErrorRate", environment=production_environment)
    pagerduty = [(e["kind"], e["dedup_key"]) for e in received(receivers_url, "pagerduty")]
    assert pagerduty[0] == ("trigger", incident_id) and pagerduty[-1] == ("resolve", incident_id)
