"""The certificate tasks that need no sandbox: reading a PEM certificate, which hosts it covers, the handshake against
a real TLS server of the test's own (an expired certificate is read, not refused), the policy's levels.
The three sources together, the renewal and the stand-ins: tests/flows/test_certificates.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kernel.errors import CertificateError, PolicyError
from tasks.certificates.check import judge
from tasks.certificates.policy import POLICY_PATH, load_certificate_policy
from tasks.tls import parse_certificate_pem, read_served_certificate, split_address
from tests.conftest import free_port


def make_cert(hosts: list[str], not_after: dt.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0xC0FFEE)
        .not_valid_before(not_after - dt.timedelta(days=90))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def test_a_pem_chain_is_read_by_its_leaf_and_covers_its_names() -> None:
    until = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    leaf, _ = make_cert(["api.example.com", "*.apps.example.com"], until)
    other, _ = make_cert(["ca.example.com"], until + dt.timedelta(days=1))
    info = parse_certificate_pem(leaf + other)
    assert (info.serial, info.not_after, info.subject) == ("c0ffee", until, "CN=api.example.com")
    assert info.covers("API.example.com") and info.covers("x.apps.example.com")
    assert not info.covers("example.com") and not info.covers("a.b.apps.example.com")
    assert info.days_left(until - dt.timedelta(days=5)) == 5
    with pytest.raises(CertificateError, match="tls.crt of x is not a PEM certificate"):
        parse_certificate_pem(b"not a certificate", "tls.crt of x")


def test_addresses_split_into_host_and_port() -> None:
    assert split_address("127.0.0.1:8443", 443) == ("127.0.0.1", 8443)
    assert split_address("ingress.example.com", 443) == ("ingress.example.com", 443)
    assert split_address("[::1]:9443", 443) == ("::1", 9443)


def test_the_policy_levels_and_a_bad_policy(tmp_path: Path) -> None:
    policy = load_certificate_policy()
    assert (policy.expiry.warn_days, policy.expiry.page_days) == (21, 7)
    assert [judge(d, policy) for d in (5, 6.99, 7, 20.9, 21, 90)] == ["page", "page", "warn", "warn", "ok", "ok"]
    bad = tmp_path / "policy.yaml"
    bad.write_text(POLICY_PATH.read_text().replace("page_days: 7", "page_days: 30"))
    with pytest.raises(PolicyError, match="page_days must not be above warn_days"):
        load_certificate_policy(bad)


@pytest.fixture()
async def expired_server(tmp_path: Path) -> AsyncIterator[tuple[str, dt.datetime]]:
    """A TLS server presenting a certificate for ``old.example.com`` that expired yesterday."""
    until = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).replace(microsecond=0)
    crt, key = make_cert(["old.example.com"], until)
    (tmp_path / "tls.pem").write_bytes(crt + key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "tls.pem"))

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port, ssl=ctx)
    async with server:
        yield f"127.0.0.1:{port}", until


async def test_the_handshake_reads_an_expired_certificate_and_whether_it_covers_the_host(
    expired_server: tuple[str, dt.datetime],
) -> None:
    address, until = expired_server
    served = await read_served_certificate.fn("old.example.com", address, timeout_s=5)
    assert served.address == address and served.covers_host and served.certificate.not_after == until
    assert served.certificate.days_left() < 0
    other = await read_served_certificate.fn("new.example.com", address, timeout_s=5)
    assert not other.covers_host


async def test_a_handshake_nobody_answers_is_a_transient_error() -> None:
    with pytest.raises(CertificateError, match=r"cannot reach a.example.com at 127.0.0.1:\d+") as err:
        await read_served_certificate.fn("a.example.com", f"127.0.0.1:{free_port()}", timeout_s=2)
    assert err.value.transient is True
