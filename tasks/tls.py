"""TLS endpoints: what certificate a server presents (the seed's ``openssl s_client -servername H -connect H:443 |
openssl x509 -noout -dates``), and reading a PEM certificate with the ``cryptography`` package.

The handshake does not verify the chain, on purpose: an expired or wrongly issued certificate is exactly what the
check must read and report, and a verifying handshake would refuse to show it. Whether it covers the host it was
asked for is checked here from its subjectAltNames.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, Field

from kernel.errors import CertificateError
from kernel.retry import read_task


class CertificateInfo(BaseModel):
    """One X.509 certificate, as the check compares it (no key material)."""

    subject: str
    issuer: str
    serial: str = Field(description="serial number, hex")
    sha256: str = Field(description="SHA-256 fingerprint of the DER certificate, hex")
    not_before: datetime
    not_after: datetime
    dns_names: list[str] = Field(default_factory=list)

    def days_left(self, now: datetime | None = None) -> float:
        return round(((self.not_after - (now or datetime.now(UTC))).total_seconds()) / 86400, 2)

    def covers(self, host: str) -> bool:
        """Whether ``host`` is one of its DNS names (``*.example.com`` covers one label)."""
        host = host.lower().rstrip(".")
        for name in (n.lower().rstrip(".") for n in self.dns_names):
            if name == host or (name.startswith("*.") and host.split(".", 1)[-1] == name[2:] and "." in host):
                return True
        return False


class ServedCertificate(BaseModel):
    host: str
    address: str = Field(description="where the handshake went (host:port)")
    certificate: CertificateInfo
    covers_host: bool
    tls_version: str | None = None


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns_names = []
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns_names,
    )


def parse_certificate_pem(pem: bytes | str, what: str = "the certificate") -> CertificateInfo:
    """The first certificate of a PEM chain (the leaf, as ``tls.crt`` holds it); a :class:`CertificateError` when
    there is none."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise CertificateError(f"{what} is not a PEM certificate: {err}", transient=False) from err
    return certificate_info(chain[0])


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) or a bare host."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host:
        return host, int(port)
    return address, default_port


def _handshake(host: str, connect: tuple[str, int], timeout_s: float) -> tuple[bytes, str | None]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # read what is served, even when it is expired
    with socket.create_connection(connect, timeout=timeout_s) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            if not der:
                raise ssl.SSLError("the server presented no certificate")
            return der, tls.version()


@read_task
async def read_served_certificate(
    host: str, address: str | None = None, port: int = 443, timeout_s: float = 10.0
) -> ServedCertificate:
    """The certificate ``host`` is served with: a TLS handshake with ``host`` as SNI to ``address`` (``host:port``;
    default ``host`` itself on ``port``). Connection failures are transient; a handshake the server refuses is not."""
    connect = split_address(address, port) if address else (host, port)
    where = f"{connect[0]}:{connect[1]}"
    try:
        der, version = await asyncio.to_thread(_handshake, host, connect, timeout_s)
    except ssl.SSLError as err:
        raise CertificateError(
            f"TLS handshake for {host} at {where} failed: {err.reason or err}",
            hint="check the Ingress controller's TLS configuration and its Secret",
            transient=False,
        ) from err
    except OSError as err:
        raise CertificateError(
            f"cannot reach {host} at {where}: {err.strerror or err}",
            hint="check that the Ingress answers there (the environment's ingress_address, else the host's DNS)",
            transient=True,
        ) from err
    info = certificate_info(x509.load_der_x509_certificate(der))
    return ServedCertificate(
        host=host, address=where, certificate=info, covers_host=info.covers(host), tls_version=version
    )
