"""certificate-check and renew-certificate against the sandbox's Ingress and cert-manager stand-ins
(sandbox/certificates.py), checked with the clients a person would use: ``openssl s_client`` for what the Ingress
serves (the seed's step 1), ``kubectl`` for the Secret, the receivers for what PagerDuty got.

- a certificate 5 days from expiry pages (and fails step 8 of weekly-maintenance);
- renew-certificate leaves a new Secret that the handshake serves, after an encrypted copy of the old one in S3;
- with the stand-in told not to reissue, the saved Secret comes back and the run fails, saying so;
- a renewed Secret the Ingress does not serve yet is flagged as a disagreement.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from blocks.environment import RunbookEnvironment
from flows.certificates import certificate_check, renew_certificate
from sandbox.certificates import BEHAVIOUR, ISSUED_FOR, RENEW_ANNOTATION
from sandbox.manager import Sandbox
from tasks.certificates.check import CertificateCheck
from tasks.certificates.policy import load_certificate_policy
from tasks.diagnostics.actions import ActionRecord
from tasks.maintenance import checks
from tasks.maintenance.policy import load_maintenance_policy
from tasks.storage import get_bytes, list_stored
from tests.conftest import TEST_ENVIRONMENT
from tests.flows.conftest import production_kubectl, received
from tests.flows.test_backup import events

# weekly-maintenance's step 8 is called here outside a flow run: its task runs' logs have no run to go to
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")

SECRET = "ai-multimodel-tls"
HOST = "api.ai-multimodel.genspark.ai"


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> RunbookEnvironment:
    env = RunbookEnvironment.load(TEST_ENVIRONMENT)
    assert env.ingress_address, "the sandbox fixture did not start the Ingress stand-in"
    return env


def kubectl_secret(admin_kubeconfig: Path) -> dict[str, Any] | None:
    try:
        out = production_kubectl(admin_kubeconfig, "get", "secret", SECRET, "-o", "json")
    except subprocess.CalledProcessError:
        return None
    return dict(json.loads(out))


def secret_certificate(admin_kubeconfig: Path) -> x509.Certificate | None:
    secret = kubectl_secret(admin_kubeconfig)
    if secret is None:
        return None
    return x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["tls.crt"]))[0]


def served(env: RunbookEnvironment, host: str = HOST) -> tuple[str, datetime]:
    """``openssl s_client -servername <host> -connect <ingress> | openssl x509 -noout -serial -enddate``."""
    shake = subprocess.run(
        ["openssl", "s_client", "-servername", host, "-connect", str(env.ingress_address)],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-enddate"],
        input=shake,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    fields = dict(line.split("=", 1) for line in out.strip().splitlines())
    until = datetime.strptime(fields["notAfter"], "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)
    return fields["serial"].lower().lstrip("0"), until


def serial_of(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


async def wait_for(what: str, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        await asyncio.sleep(0.5)


def set_behaviour(admin_kubeconfig: Path, rules: dict[str, Any]) -> None:
    """Steer the stand-ins (test set-up, admin credentials): the ConfigMap they read at each poll."""
    ns, name = BEHAVIOUR
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": {"rules.json": json.dumps(rules)},
    }
    subprocess.run(
        ["kubectl", "--kubeconfig", str(admin_kubeconfig), "apply", "-f", "-"],
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


async def reissue(env: RunbookEnvironment, admin_kubeconfig: Path) -> x509.Certificate:
    """The seed's ``kubectl delete secret``, then wait until the stand-in issued a new one and the Ingress serves
    it."""
    old = secret_certificate(admin_kubeconfig)
    production_kubectl(admin_kubeconfig, "delete", "secret", SECRET)
    new = await wait_for(
        "a new Secret",
        lambda: (c := secret_certificate(admin_kubeconfig)) is not None and (old is None or c != old) and c,
    )
    await wait_for("the Ingress serving it", lambda: served(env)[0] == serial_of(new))
    return new  # type: ignore[no-any-return]


@pytest.fixture()
async def tls(env: RunbookEnvironment, admin_kubeconfig: Path) -> AsyncIterator[None]:
    """The stand-ins' behaviour as a test sets it; afterwards, the defaults again and a certificate of the default
    lifetime that the Ingress serves (so later tests, and weekly-maintenance's step 8, find a healthy one)."""
    set_behaviour(admin_kubeconfig, {})
    yield
    set_behaviour(admin_kubeconfig, {})
    await wait_for("cert-manager done with any renewal asked for", lambda: settled(env, admin_kubeconfig))
    cert = secret_certificate(admin_kubeconfig)
    renewal = load_certificate_policy().expiry.warn_days
    if cert is None or cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=renewal + 1):
        await reissue(env, admin_kubeconfig)
    await wait_for("the Ingress serving the Secret", lambda: settled(env, admin_kubeconfig))


def settled(env: RunbookEnvironment, admin_kubeconfig: Path) -> bool:
    """The Secret issued for the Certificate's last renewal request, Ready, and served by the Ingress."""
    secret = kubectl_secret(admin_kubeconfig)
    certificate = json.loads(production_kubectl(admin_kubeconfig, "get", "certificate", SECRET, "-o", "json"))
    requested = certificate["metadata"].get("annotations", {}).get(RENEW_ANNOTATION)
    if secret is None or (requested and secret["metadata"].get("annotations", {}).get(ISSUED_FOR) != requested):
        return False
    conditions = (certificate.get("status") or {}).get("conditions") or []
    if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
        return False
    leaf = x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["tls.crt"]))[0]
    return served(env)[0] == serial_of(leaf)


async def test_a_certificate_five_days_from_expiry_pages(
    env: RunbookEnvironment, admin_kubeconfig: Path, tls: None, receivers_url: str
) -> None:
    set_behaviour(admin_kubeconfig, {"lifetime_s": 5 * 86400})
    cert = await reissue(env, admin_kubeconfig)
    serial, until = served(env)
    assert serial == serial_of(cert) and timedelta(days=4.9) < until - datetime.now(UTC) < timedelta(days=5)

    state = await certificate_check(environment=TEST_ENVIRONMENT, return_state=True)

    assert state.is_failed()
    check = await state.aresult(raise_on_failure=False)
    assert isinstance(check, CertificateCheck)
    assert check.level == "page" and not check.disagreements and not check.errors, check.summary()
    assert {r.source for r in check.readings} == {"handshake", "secret", "certificate"}
    assert all(r.level == "page" and 4.9 < (r.days_left or 0) <= 5 for r in check.readings), check.readings
    [page] = [e for e in received(receivers_url, "pagerduty") if e["kind"] == "trigger"]
    assert page["dedup_key"] == f"certificate-{TEST_ENVIRONMENT}-production-{SECRET}"
    assert page["body"]["payload"]["severity"] == "error"  # P1's row of the escalation matrix
    assert f"{SECRET} of {TEST_ENVIRONMENT}: expires in" in page["body"]["payload"]["summary"]

    # weekly-maintenance's step 8 runs the same check: it fails there too
    ctx = checks.MaintenanceContext(
        env=env, environment=TEST_ENVIRONMENT, policy=load_maintenance_policy(), dry_run=True
    )
    step = await checks.certificates(ctx)
    assert step.status == "fail" and step.summary.startswith("page:"), step.summary


async def test_renew_certificate_leaves_a_new_secret_that_the_handshake_serves(
    env: RunbookEnvironment, admin_kubeconfig: Path, tls: None
) -> None:
    before = secret_certificate(admin_kubeconfig)
    assert before is not None and served(env)[0] == serial_of(before)
    since = datetime.now(UTC) - timedelta(seconds=2)

    state = await renew_certificate(environment=TEST_ENVIRONMENT, return_state=True)

    assert state.is_completed(), state.message
    after = secret_certificate(admin_kubeconfig)
    assert after is not None and serial_of(after) != serial_of(before)
    for host in ("ai-multimodel.genspark.ai", HOST):
        assert served(env, host)[0] == serial_of(after)
    certificate = json.loads(production_kubectl(admin_kubeconfig, "get", "certificate", SECRET, "-o", "json"))
    assert certificate["metadata"]["annotations"]["cert-manager.io/issue-temporary-certificate"] == "true"
    assert certificate["status"]["notAfter"] == after.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    # the copy kept before the delete: encrypted in the bucket (no PEM in clear)
    record = await state.aresult()
    assert isinstance(record, ActionRecord) and record.outcome == "done"
    [copy_step] = [s for s in record.data["steps"] if s.startswith("Secret copied")]
    key = copy_step.split("`")[3]
    assert key in {o.key for o in list_stored(env.backups, key)}
    stored = get_bytes(env.backups, key) or b""
    assert b"PRIVATE KEY" not in stored and b"LS0tLS1CRUdJTi" not in stored and b"ciphertext" in stored
    resource = f"runbooks.certificate.{TEST_ENVIRONMENT}.production.{SECRET}"
    names = [
        "runbooks.certificate.secret-saved",
        "runbooks.certificate.annotated",
        "runbooks.certificate.secret-deleted",
        "runbooks.certificate.renewed",
    ]
    found = await events(names, resource, since, want=4)
    assert sorted(e.event for e in found) == sorted(names)


async def test_without_a_reissue_the_saved_secret_comes_back_and_the_run_fails(
    env: RunbookEnvironment, admin_kubeconfig: Path, tls: None
) -> None:
    before = kubectl_secret(admin_kubeconfig)
    assert before is not None
    set_behaviour(admin_kubeconfig, {"reissue": False})
    since = datetime.now(UTC) - timedelta(seconds=2)

    state = await renew_certificate(environment=TEST_ENVIRONMENT, timeout_s=4, return_state=True)

    assert state.is_failed()
    assert "no new certificate in Secret production/ai-multimodel-tls within 4s" in str(state.message)
    assert "was put back" in str(state.message), state.message
    after = kubectl_secret(admin_kubeconfig)
    assert after is not None and after["data"] == before["data"]  # the same certificate and key
    assert after["metadata"]["uid"] != before["metadata"]["uid"]  # created again from the copy
    certificate = json.loads(production_kubectl(admin_kubeconfig, "get", "certificate", SECRET, "-o", "json"))
    ready = next(c for c in certificate["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "switched off" in ready["message"]
    resource = f"runbooks.certificate.{TEST_ENVIRONMENT}.production.{SECRET}"
    [restored] = await events(["runbooks.certificate.restored"], resource, since)
    assert restored.payload["outcome"] == "created" and restored.payload["copy"].startswith("certificates/")


async def test_a_renewed_secret_the_ingress_does_not_serve_yet_is_flagged(
    env: RunbookEnvironment, admin_kubeconfig: Path, tls: None
) -> None:
    serving, _ = served(env)
    set_behaviour(admin_kubeconfig, {"ingress_reload": False})
    production_kubectl(admin_kubeconfig, "delete", "secret", SECRET)
    new = await wait_for(
        "a new Secret",
        lambda: (c := secret_certificate(admin_kubeconfig)) is not None and serial_of(c) != serving and c,
    )
    assert served(env)[0] == serving  # the Ingress still serves the old one

    state = await certificate_check(environment=TEST_ENVIRONMENT, notify=False, return_state=True)

    check = await state.aresult(raise_on_failure=False)
    assert isinstance(check, CertificateCheck)
    assert check.level == "warn" and state.is_completed(), check.summary()
    flagged = [d for d in check.disagreements if "does not serve the Secret's one" in d]
    assert len(flagged) == 2, check.disagreements  # both hosts
    assert all(serving in d and serial_of(new) in d for d in flagged)


async def test_outside_the_sandbox_a_renewal_is_a_dry_run_and_no_answer_is_a_denial(
    env: RunbookEnvironment, admin_kubeconfig: Path, production_environment: str, tls: None
) -> None:
    before = kubectl_secret(admin_kubeconfig)
    assert before is not None

    dry = await renew_certificate(environment=production_environment, return_state=True)
    unanswered = await renew_certificate(
        environment=production_environment, dry_run=False, approval_timeout_s=10, return_state=True
    )

    assert dry.is_completed() and "dry run: nothing changed" in str(dry.message)
    assert unanswered.is_completed() and "not approved: nothing changed" in str(unanswered.message)
    record = await unanswered.aresult()
    assert isinstance(record, ActionRecord) and record.decision == "denied" and record.outcome == "not-done"
    after = kubectl_secret(admin_kubeconfig)
    assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["data"] == before["data"]
