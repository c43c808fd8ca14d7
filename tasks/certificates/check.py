"""The certificate's expiry read three ways, and the three compared.

1. **handshake**: what each Ingress host is served with (the Ingresses' ``spec.tls`` hosts; a TLS handshake to the
   environment's ``ingress_address`` with the host as SNI, else to the host itself), :mod:`tasks.tls`;
2. **secret**: the certificate in the Secret (``tls.crt``), :func:`tasks.kubernetes.secrets.read_tls_secret`;
3. **certificate**: the cert-manager Certificate's ``status.notAfter`` and ``Ready`` condition.

Each reading is judged by the policy (``expiry.warn_days``, ``expiry.page_days``); a reading that fails is an error
of its own, never a pass. The three disagreeing is flagged: a host served another certificate than the Secret
holds (a renewed Secret the Ingress does not serve yet), or a Certificate whose status names another expiry than
its Secret's certificate.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.environment import RunbookEnvironment
from tasks import kubernetes as k8s
from tasks.certificates.policy import CertificatePolicy
from tasks.kubernetes.secrets import TLSSecret, read_tls_secret
from tasks.reporting import describe_error, emit, publish_table
from tasks.tls import CertificateInfo, ServedCertificate, parse_certificate_pem, read_served_certificate

Level = Literal["ok", "warn", "page"]
ReadingLevel = Literal["ok", "warn", "page", "error"]
Source = Literal["handshake", "secret", "certificate"]
EVENT = "runbooks.certificate.checked"


class Reading(BaseModel):
    source: Source
    target: str = Field(description="the host, or the Secret / Certificate as namespace/name")
    not_after: datetime | None = None
    days_left: float | None = None
    serial: str | None = None
    sha256: str | None = None
    level: ReadingLevel = "ok"
    detail: str = ""
    secret_name: str | None = Field(default=None, description="a handshake's: the Secret its Ingress names for it")

    def row(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "not_after": self.not_after.strftime("%Y-%m-%d %H:%M:%S UTC") if self.not_after else "",
            "days_left": self.days_left,
            "serial": self.serial or "",
            "level": self.level,
            "detail": self.detail,
        }


class CertificateCheck(BaseModel):
    environment: str
    certificate: str
    secret: str
    namespace: str
    checked_at: datetime
    readings: list[Reading] = Field(default_factory=list)
    disagreements: list[str] = Field(default_factory=list)
    level: Level = "ok"

    @property
    def errors(self) -> list[Reading]:
        return [r for r in self.readings if r.level == "error"]

    @property
    def days_left(self) -> float | None:
        """The fewest days left of any reading (what a person will hit first)."""
        left = [r.days_left for r in self.readings if r.days_left is not None]
        return min(left) if left else None

    def summary(self) -> str:
        left = self.days_left
        text = f"{self.level}: " + (f"{left:.1f} days left" if left is not None else "no expiry could be read")
        text += f" ({len(self.readings) - len(self.errors)} of {len(self.readings)} readings"
        text += f", {len(self.errors)} failed)" if self.errors else ")"
        if self.disagreements:
            text += f"; {len(self.disagreements)} disagreement(s): " + "; ".join(self.disagreements)
        return text

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.readings]


def judge(days_left: float, policy: CertificatePolicy) -> ReadingLevel:
    if days_left < policy.expiry.page_days:
        return "page"
    if days_left < policy.expiry.warn_days:
        return "warn"
    return "ok"


def _reading(source: Source, target: str, info: CertificateInfo, policy: CertificatePolicy, now: datetime) -> Reading:
    days = info.days_left(now)
    return Reading(
        source=source,
        target=target,
        not_after=info.not_after,
        days_left=days,
        serial=info.serial,
        sha256=info.sha256,
        level=judge(days, policy),
        detail=f"issuer {info.issuer}",
    )


def _failed(source: Source, target: str, err: BaseException) -> Reading:
    return Reading(source=source, target=target, level="error", detail=describe_error(err))


def _not_after(status: dict[str, Any]) -> datetime | None:
    value = status.get("notAfter")
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


async def check_certificates(env: RunbookEnvironment, environment: str, policy: CertificatePolicy) -> CertificateCheck:
    """Read the three sources concurrently, judge each reading, compare them. Never raises for a source that
    cannot be read: that reading is an error (and the check is at least a warning)."""
    cluster = env.require_kubernetes()
    ns = cluster.namespace
    now = datetime.now(UTC)
    check = CertificateCheck(
        environment=environment, certificate=policy.certificate, secret=policy.secret, namespace=ns, checked_at=now
    )
    results: tuple[Any, ...] = await asyncio.gather(
        k8s.list_ingresses(cluster),
        read_tls_secret(cluster, policy.secret),
        k8s.get_custom_resource(cluster, k8s.CERTIFICATE, policy.certificate),
        return_exceptions=True,
    )
    ingresses, secret, certificate = results
    # 2. the Secret
    secret_info: CertificateInfo | None = None
    target = f"{ns}/{policy.secret}"
    if isinstance(secret, BaseException):
        check.readings.append(_failed("secret", target, secret))
    elif secret is None:
        check.readings.append(
            Reading(source="secret", target=target, level="error", detail="the Secret does not exist")
        )
    else:
        assert isinstance(secret, TLSSecret)
        try:
            secret_info = parse_certificate_pem(secret.certificate_pem, f"tls.crt of Secret {target}")
            check.readings.append(_reading("secret", target, secret_info, policy, now))
        except Exception as err:  # noqa: BLE001 - a bad tls.crt is a failed reading, reported
            check.readings.append(_failed("secret", target, err))

    # 3. the Certificate's status
    target = f"{ns}/{policy.certificate}"
    status_after: datetime | None = None
    if isinstance(certificate, BaseException):
        check.readings.append(_failed("certificate", target, certificate))
    else:
        assert isinstance(certificate, k8s.CustomResource)
        status_after = _not_after(certificate.status)
        ready = next((c for c in certificate.conditions if c.type == "Ready"), None)
        if status_after is None:
            why = f"; Ready {ready.status}: {ready.message}" if ready else ""
            check.readings.append(
                Reading(source="certificate", target=target, level="error", detail=f"no status.notAfter{why}")
            )
        else:
            days = round((status_after - now).total_seconds() / 86400, 2)
            level = judge(days, policy)
            detail = f"Ready {ready.status}: {ready.message}" if ready else "no Ready condition"
            if ready is not None and ready.status != "True" and level == "ok":
                level = "warn"
            check.readings.append(
                Reading(source="certificate", target=target, not_after=status_after, days_left=days, level=level,
                        detail=detail)
            )  # fmt: skip

    # 1. the handshakes, of every TLS host of the Ingresses
    if isinstance(ingresses, BaseException):
        check.readings.insert(0, _failed("handshake", "Ingresses", ingresses))
        hosts: list[tuple[str, str | None]] = []
    else:
        hosts = list(dict.fromkeys((h, t.secret_name) for i in ingresses for t in i.tls for h in t.hosts))
        if not hosts:
            check.readings.insert(
                0, Reading(source="handshake", target="Ingresses", level="error", detail=f"no Ingress of {ns} has TLS")
            )
    served = await asyncio.gather(
        *(
            read_served_certificate(
                host, env.ingress_address, port=policy.handshake.port, timeout_s=policy.handshake.timeout_s
            )
            for host, _ in hosts
        ),
        return_exceptions=True,
    )
    handshakes = []
    for (host, secret_name), result in zip(hosts, served, strict=True):
        if isinstance(result, BaseException):
            handshakes.append(_failed("handshake", host, result).model_copy(update={"secret_name": secret_name}))
            continue
        assert isinstance(result, ServedCertificate)
        reading = _reading("handshake", host, result.certificate, policy, now)
        reading.secret_name = secret_name
        reading.detail = f"at {result.address}, {reading.detail}"
        if not result.covers_host:
            reading.level = "page" if reading.level == "page" else "warn"
            check.disagreements.append(f"{host} is served a certificate that does not name it")
        if secret_info is not None and secret_name == policy.secret and result.certificate.sha256 != secret_info.sha256:
            served_until, secret_until = (
                f"{result.certificate.not_after:%Y-%m-%d %H:%M}",
                f"{secret_info.not_after:%Y-%m-%d %H:%M}",
            )
            check.disagreements.append(
                f"{host} is served serial {result.certificate.serial} (until {served_until}), the Secret holds serial "
                f"{secret_info.serial} (until {secret_until}): the Ingress does not serve the Secret's one (yet)"
            )
        handshakes.append(reading)
    check.readings[0:0] = handshakes

    # the Certificate's status against its Secret
    if status_after is not None and secret_info is not None:
        apart = abs((status_after - secret_info.not_after).total_seconds())
        if apart > policy.agreement.not_after_tolerance_s:
            check.disagreements.append(
                f"the Certificate's status says notAfter {status_after:%Y-%m-%d %H:%M:%S}, the Secret's certificate "
                f"{secret_info.not_after:%Y-%m-%d %H:%M:%S}"
            )

    levels = {r.level for r in check.readings}
    check.level = "page" if "page" in levels else "warn" if levels & {"warn", "error"} or check.disagreements else "ok"
    return check


async def publish_check(check: CertificateCheck) -> None:
    """The table artifact ``certificate-check-<environment>`` (one row per reading) and the event
    ``runbooks.certificate.checked``."""
    await publish_table(
        f"certificate-check-{check.environment}",
        check.rows() + [{"source": "disagreement", "detail": d} for d in check.disagreements],
        f"Certificate {check.namespace}/{check.certificate} of {check.environment}: {check.summary()}",
    )
    emit(
        EVENT,
        certificate_resource(check.environment, check.namespace, check.certificate),
        {
            "level": check.level,
            "days_left": check.days_left,
            "disagreements": check.disagreements,
            "errors": [f"{r.source} {r.target}: {r.detail}" for r in check.errors],
            "readings": [r.row() for r in check.readings],
        },
    )


def certificate_resource(environment: str, namespace: str, certificate: str) -> dict[str, str]:
    """The event resource of a certificate (the check's and the renewal's events share it)."""
    return {
        "prefect.resource.id": f"runbooks.certificate.{environment}.{namespace}.{certificate}",
        "prefect.resource.name": f"{environment} certificate {certificate}",
    }
