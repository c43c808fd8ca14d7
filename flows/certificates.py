"""``certificate-check`` (daily) and ``renew-certificate`` (the seed's "Certificate Renewal").

certificate-check: the expiry of the Ingress's certificate read three ways (the live TLS handshake of each Ingress
host, the Secret's ``tls.crt``, the cert-manager Certificate's status), each judged by
``tasks/certificates/policy.yaml`` (a warning under ``warn_days``, a page under ``page_days``) and the three compared
(a renewed Secret the Ingress does not serve yet is flagged). Slack, PagerDuty and Opsgenie by the triage policy's
escalation matrix; table artifact ``certificate-check-<environment>``; event ``runbooks.certificate.checked``. The run
fails when it pages or a source could not be read.

renew-certificate: diagnose (the check) → plan → decide (the policy's mode for the environment's kind: ``auto``,
or ``approve``: a typed answer in the UI, no answer is a denial; a dry run, the default outside the sandbox, only
describes) → apply: an encrypted copy of the Secret in the backup bucket, the Certificate annotated, the Secret
deleted, the new certificate waited for (else the copy is put back and the run fails, saying so), the handshake
waited for → verify (the check again) → report (markdown artifact ``renew-certificate-<environment>``). One event
per action: ``runbooks.certificate.secret-saved``, ``.annotated``, ``.secret-deleted``, ``.renewed`` or
``.restored``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.environment import load_environment
from kernel.errors import CertificateError, KubernetesError
from kernel.redact import redact_errors
from tasks import kubernetes as k8s
from tasks.certificates.check import CertificateCheck, certificate_resource, check_certificates, publish_check
from tasks.certificates.notify import notify_certificate
from tasks.certificates.policy import load_certificate_policy
from tasks.certificates.renewal import (
    RenewalTimeoutError,
    copy_key,
    load_secret_copy,
    save_secret_copy,
    wait_for_new_certificate,
    wait_until_served,
)
from tasks.diagnostics.actions import ActionRecord, decide, table
from tasks.kubernetes.secrets import copy_secret, delete_secret, read_tls_secret, restore_secret
from tasks.reporting import describe_error, emit, publish_markdown
from tasks.tls import parse_certificate_pem


@flow(name="certificate-check", log_prints=False)
@redact_errors
async def certificate_check(environment: str = "sandbox", notify: bool = True) -> State:
    """Read the certificate's expiry from the handshake, the Secret and the Certificate; warn, page, flag the
    sources disagreeing. ``notify=False`` only reports (artifact and event)."""
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_certificate_policy()
    check = await check_certificates(env, environment, policy)
    for r in check.readings:
        (logger.error if r.level in ("page", "error") else logger.info)(
            "%s %s: %s, %s days left (%s)", r.source, r.target, r.level, r.days_left, r.detail
        )
    for d in check.disagreements:
        logger.warning("disagreement: %s", d)
    await publish_check(check)
    if notify:
        told = await notify_certificate(env, check, policy)
        if told.channels:
            logger.info("told %s (%s)", ", ".join(told.channels), told.severity)
    message = f"certificate {check.namespace}/{check.certificate} of {environment}: {check.summary()}"
    if check.level == "page" or check.errors:
        return Failed(message=message, data=check)
    return Completed(message=message, data=check)


def _report(
    environment: str, before: CertificateCheck, after: CertificateCheck | None, record: ActionRecord, mode: str
) -> str:
    parts = [
        f"# Certificate renewal of {environment}: {before.namespace}/{before.certificate}",
        f"Mode **{mode}**; before: {before.summary()}",
        table(
            ["action", "target", "reason", "decision", "outcome", "detail"],
            [[record.action, record.target, record.reason, record.decision, record.outcome, record.detail]],
        ),
        "## Steps\n" + "\n".join(f"- {step}" for step in record.data.get("steps", []))
        if record.data.get("steps")
        else "",
    ]
    if after is not None:
        parts.append(f"After: {after.summary()}")
        parts.append(
            table(
                ["source", "target", "not after", "days left", "serial", "level"],
                [[r.source, r.target, r.row()["not_after"], r.days_left, r.serial, r.level] for r in after.readings],
            )
        )
    return "\n\n".join(p for p in parts if p)


@flow(name="renew-certificate", log_prints=False)
@redact_errors
async def renew_certificate(
    environment: str = "sandbox",
    dry_run: bool | None = None,
    timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None,
    serve_timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None,
    approval_timeout_s: Annotated[int, Field(ge=10, le=86400)] | None = None,
) -> State:
    """Renew the Ingress's certificate through cert-manager, as the seed does (annotate the Certificate, delete its
    Secret), keeping an encrypted copy of the Secret first and putting it back when no new certificate comes
    within ``timeout_s`` (the policy's by default). ``dry_run`` (default: on everywhere but the sandbox) describes
    only."""
    logger = get_run_logger()
    env = await load_environment(environment)
    policy = load_certificate_policy()
    rules = policy.renewal
    cluster = env.require_kubernetes()
    ns = cluster.namespace
    dry = env.dry_run_by_default if dry_run is None else dry_run
    mode = "observe" if dry else rules.modes.for_kind(env.kind)
    wait_s, serve_s = timeout_s or rules.timeout_s, serve_timeout_s or rules.serve_timeout_s
    resource = certificate_resource(environment, ns, policy.certificate)

    # diagnose
    before = await check_certificates(env, environment, policy)
    await publish_check(before)
    current = await read_tls_secret(cluster, policy.secret)
    old = None
    if current is not None:
        try:
            old = parse_certificate_pem(current.certificate_pem, f"tls.crt of {policy.secret}")
        except CertificateError as err:  # a broken Secret is one more reason to renew: kept, deleted, reissued
            logger.warning("%s", err.message)
    hosts = [r.target for r in before.readings if r.source == "handshake" and r.secret_name == policy.secret]

    # plan
    steps: list[str] = []
    record = ActionRecord(
        action="renew-certificate",
        target=f"{ns}/{policy.certificate}",
        reason=f"{before.summary()}" + (f"; Secret serial {old.serial}" if old else "; the Secret is missing"),
        data={"steps": steps},
    )
    description = (
        f"**Renew certificate `{ns}/{policy.certificate}` of {environment}** (now: {before.summary()}): keep an "
        f"encrypted copy of Secret `{policy.secret}`, annotate the Certificate, delete the Secret, wait up to "
        f"{wait_s:.0f}s for cert-manager's new certificate (else put the copy back), then for the Ingress to serve "
        "it."
    )
    if not await decide(
        record, mode, description=description, timeout_s=approval_timeout_s or rules.approval_timeout_s
    ):
        record.outcome = "not-done"
        record.detail = "dry run: nothing changed" if mode == "observe" else "not approved: nothing changed"
        await publish_markdown(
            f"renew-certificate-{environment}", _report(environment, before, None, record, mode), record.detail
        )
        return Completed(message=f"renew-certificate of {environment}: {record.detail}", data=record)

    # apply: copy → annotate → delete → wait for the new one (else put the copy back) → wait for the handshake
    saved = None
    failure: str | None = None
    if current is not None:
        copy = await copy_secret(cluster, policy.secret)
        key = copy_key(rules.copies_prefix, environment, ns, policy.secret)
        saved = await save_secret_copy(
            env.backups, env.require_backup_encryption("the TLS Secret's copy"), copy, key, environment
        )
        steps.append(f"Secret copied, encrypted with key `{saved.key_id}`, to `{saved.key}`")
        emit("runbooks.certificate.secret-saved", resource, saved.model_dump())
    requested_at = datetime.now(UTC).isoformat(timespec="seconds")
    annotated = await k8s.annotate_custom_resource(
        cluster,
        k8s.CERTIFICATE,
        policy.certificate,
        {**rules.annotations, rules.requested_at_annotation: requested_at},
        overwrite=True,
    )
    steps.append(f"Certificate annotated ({rules.requested_at_annotation}={requested_at})")
    emit("runbooks.certificate.annotated", resource, {"requested_at": requested_at, "changed": annotated.changed})
    deleted = await delete_secret(cluster, policy.secret)
    steps.append(f"Secret {deleted.outcome}")
    emit("runbooks.certificate.secret-deleted", resource, deleted.model_dump())
    new = None
    try:
        found = await wait_for_new_certificate(
            cluster, policy.secret, old.sha256 if old else None, timeout_s=wait_s, poll_s=rules.poll_s
        )
        new = parse_certificate_pem(found.certificate_pem, f"tls.crt of {policy.secret}")
        steps.append(f"new certificate: serial {new.serial}, until {new.not_after:%Y-%m-%d %H:%M} UTC")
    except Exception as err:  # noqa: BLE001 - no new certificate confirmed (timeout, or the API failing): put back
        failure = err.message if isinstance(err, RenewalTimeoutError) else describe_error(err)
        steps.append(f"❌ {failure}")
        if saved is not None:
            try:
                manifest = await load_secret_copy(env.backups, env.require_backup_encryption(), saved.key)
                restored = await restore_secret(cluster, manifest)
                steps.append(f"the kept copy was put back ({restored.outcome}; serial {old.serial if old else '?'})")
                failure += f"; the saved Secret (serial {old.serial if old else '?'}) was put back from {saved.key}"
                emit("runbooks.certificate.restored", resource, {**restored.model_dump(), "copy": saved.key})
            except Exception as restore_err:  # noqa: BLE001 - said in the failure, with where the copy is
                if isinstance(restore_err, KubernetesError) and restore_err.status_code == 409:
                    failure += f"; a Secret exists again, so the copy was not put back (it stays at {saved.key})"
                    steps.append("the Secret exists again: the kept copy was not needed")
                else:
                    failure += f"; putting the copy back failed: {describe_error(restore_err)} (copy at {saved.key})"
                    steps.append(f"❌ the kept copy could not be put back: {describe_error(restore_err)}")
    if new is not None:
        try:
            served = await wait_until_served(
                hosts,
                env.ingress_address,
                new.sha256,
                port=policy.handshake.port,
                handshake_timeout_s=policy.handshake.timeout_s,
                timeout_s=serve_s,
                poll_s=rules.poll_s,
            )
            steps.append("served by the Ingress: " + ", ".join(f"{s.host} ({s.address})" for s in served))
            emit(
                "runbooks.certificate.renewed",
                resource,
                {
                    "old_serial": old.serial if old else None,
                    "old_not_after": old.not_after.isoformat() if old else None,
                    "serial": new.serial,
                    "not_after": new.not_after.isoformat(),
                    "hosts": hosts,
                    "copy": saved.key if saved else None,
                },
            )
        except CertificateError as err:
            failure = err.message
            steps.append(f"❌ {err.message}")

    # verify and report
    after = await check_certificates(env, environment, policy)
    await publish_check(after)
    record.outcome = "failed" if failure else "done"
    record.detail = failure or f"serial {old.serial if old else '-'} → {new.serial if new else '-'}; {after.summary()}"
    await publish_markdown(
        f"renew-certificate-{environment}", _report(environment, before, after, record, mode), record.detail
    )
    message = f"renew-certificate of {environment}: {record.detail}"
    if failure:
        logger.error("%s", message)
        return Failed(message=message, data=record)
    logger.info("%s", message)
    return Completed(message=message, data=record)
