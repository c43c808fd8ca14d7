"""The cluster's PKI: a CA, serving and client certificates, the service-account key pair (idempotent)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


class ClusterPKI:
    """Files under ``directory``; nothing is regenerated when it already exists."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, name: str) -> CertPaths:
        return CertPaths(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def _ca(self, name: str, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        paths = self.path(name)
        if paths.cert.exists() and paths.key.exists():
            cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
            key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cert, key
        key = _key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(paths.key, key)
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    def _issue(
        self,
        ca: str,
        ca_cn: str,
        name: str,
        cn: str,
        *,
        org: str | None = None,
        server: bool = False,
        client: bool = False,
        hosts: tuple[str, ...] = (),
    ) -> CertPaths:
        paths = self.path(name)
        if paths.cert.exists() and paths.key.exists():
            return paths
        ca_cert, ca_key = self._ca(ca, ca_cn)
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(paths.key, key)
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return paths

    def ensure(self, *, api_hosts: tuple[str, ...], node_name: str, node_host: str, metrics_ip: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca("ca", "runbooks-sandbox-ca")
        self._ca("front-proxy-ca", "runbooks-sandbox-front-proxy-ca")
        self._issue("ca", "runbooks-sandbox-ca", "apiserver", "kube-apiserver", server=True, hosts=api_hosts)
        self._issue("ca", "runbooks-sandbox-ca", "admin", "runbooks-admin", org="system:masters", client=True)
        self._issue(
            "ca",
            "runbooks-sandbox-ca",
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            org="system:masters",
            client=True,
        )
        self._issue("ca", "runbooks-sandbox-ca", "controller-manager", "system:kube-controller-manager", client=True)
        self._issue("ca", "runbooks-sandbox-ca", "scheduler", "system:kube-scheduler", client=True)
        # the sandbox's Prometheus scrapes the kubelet's /metrics/resource with this one
        self._issue("ca", "runbooks-sandbox-ca", "prometheus", "prometheus", client=True)
        self._issue(
            "ca",
            "runbooks-sandbox-ca",
            "kubelet",
            f"system:node:{node_name}",
            org="system:nodes",
            client=True,
            server=True,
            hosts=(node_host, node_name, "localhost"),
        )
        self._issue(
            "ca",
            "runbooks-sandbox-ca",
            "metrics-server",
            "metrics-server",
            server=True,
            hosts=(metrics_ip, "metrics-server.kube-system.svc", "metrics-server.kube-system"),
        )
        self._issue(
            "front-proxy-ca", "runbooks-sandbox-front-proxy-ca", "front-proxy-client", "front-proxy-client", client=True
        )
        sa_key = self.dir / "sa.key"
        if not sa_key.exists():
            key = _key()
            _write_key(sa_key, key)
            (self.dir / "sa.pub").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
