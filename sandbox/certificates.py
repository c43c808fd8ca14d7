"""The sandbox's TLS edge: an Ingress stand-in that serves HTTPS for the Ingress hosts with the certificate of their
TLS Secret (reloaded when the Secret changes), and a cert-manager stand-in that issues that Secret from the
sandbox cluster's CA (``k8s/pki/ca.*``, :class:`sandbox.k8s.pki.ClusterPKI`).

Both watch the Kubernetes API by polling it (once a second) with the cluster's admin kubeconfig, and read how to
behave from the ConfigMap ``kube-system/sandbox-tls-behaviour`` (``rules.json``), read at each poll:

- ``reissue`` (default true): the cert-manager stand-in issues a new certificate when a Certificate's Secret is
  missing or when the Certificate's ``runbooks.io/renew-requested-at`` annotation differs from the one the Secret
  was issued for; false: it issues nothing (the Certificate says so in its ``Ready`` condition), to test a renewal
  that times out;
- ``lifetime_s``: the lifetime of what it issues (default: ``--lifetime-s``, else the Certificate's
  ``spec.duration``), short enough to test expiry;
- ``ingress_reload`` (default true): false keeps the Ingress stand-in serving what it loaded last, as a controller
  that has not picked up a renewed Secret yet.

The Ingress stand-in listens on one port for every host (``ingress_address`` of the sandbox's environment block:
the product connects there with the host as SNI, as ``curl --resolve`` does) and answers any request with
``200 ok``. Run as ``python -m sandbox.certificates ingress|cert-manager ...``; the components below start them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kernel import processes
from kernel.errors import SandboxError
from sandbox.components import Component, ComponentStatus, port_open, wait_until
from sandbox.config import PROJECT_DIR
from sandbox.platform_api.deployed import client_from_kubeconfig

log = logging.getLogger("sandbox.certificates")

NAMESPACE = "production"
BEHAVIOUR = ("kube-system", "sandbox-tls-behaviour")
RENEW_ANNOTATION = "runbooks.io/renew-requested-at"
ISSUED_FOR = "sandbox.runbooks.io/renew-requested-at"
CERTIFICATES = "/apis/cert-manager.io/v1/namespaces/{ns}/certificates"
POLL_S = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def parse_duration(text: str | None, default_s: float) -> float:
    """cert-manager's ``spec.duration`` (Go duration: ``2160h``, ``1h30m``) in seconds."""
    parts = _DURATION.findall(text or "")
    if not parts:
        return default_s
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)


def read_behaviour(client: httpx.Client) -> dict[str, Any]:
    ns, name = BEHAVIOUR
    response = client.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    try:
        rules = json.loads((response.json().get("data") or {}).get("rules.json") or "{}")
    except ValueError:
        log.warning("%s/%s: rules.json is not JSON; ignored", ns, name)
        return {}
    return rules if isinstance(rules, dict) else {}


def _get(client: httpx.Client, path: str) -> dict[str, Any] | None:
    response = client.get(path)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return dict(response.json())


def leaf_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------- cert-manager
class CertManager:
    """Issues the Secrets of the Certificates of ``namespace`` from the CA at ``pki_dir``."""

    def __init__(self, client: httpx.Client, pki_dir: Path, namespace: str, lifetime_s: float | None) -> None:
        self.client, self.namespace, self.lifetime_s = client, namespace, lifetime_s
        self.ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.ca_key = key

    def step(self) -> None:
        behaviour = read_behaviour(self.client)
        listed = _get(self.client, CERTIFICATES.format(ns=self.namespace)) or {}
        for certificate in listed.get("items") or []:
            self.reconcile(certificate, behaviour)

    def reconcile(self, certificate: dict[str, Any], behaviour: dict[str, Any]) -> None:
        meta, spec, status = certificate["metadata"], certificate.get("spec") or {}, certificate.get("status") or {}
        secret_name = spec.get("secretName")
        if not secret_name:
            return
        secret = _get(self.client, f"/api/v1/namespaces/{self.namespace}/secrets/{secret_name}")
        requested = (meta.get("annotations") or {}).get(RENEW_ANNOTATION)
        issued_for = ((secret or {}).get("metadata", {}).get("annotations") or {}).get(ISSUED_FOR)
        why = (
            "Issuing certificate as Secret does not exist"
            if secret is None
            else "Renewing certificate as renewal was scheduled"
            if requested and requested != issued_for
            else None
        )
        if why is None:
            if secret is not None and not status.get("notAfter"):
                self._status(meta["name"], leaf_of(base64.b64decode(secret["data"]["tls.crt"])), status)
            return
        if not behaviour.get("reissue", True):
            if (self._condition(status, "Ready") or {}).get("message") != f"{why}; reissuing is switched off":
                self._patch_status(
                    meta["name"],
                    {"conditions": [self._ready(False, "DoesNotExist", f"{why}; reissuing is switched off")]},
                )
            return
        lifetime = float(
            behaviour.get("lifetime_s") or self.lifetime_s or parse_duration(spec.get("duration"), 7776000)
        )
        cert, pem_key = self.issue(spec.get("dnsNames") or [meta["name"]], lifetime)
        self._write_secret(secret_name, secret, cert, pem_key, meta["name"], requested)
        self._status(meta["name"], cert, status)
        log.info("%s: issued %s (serial %x, until %s): %s", meta["name"], secret_name, cert.serial_number,
                 _iso(cert.not_valid_after_utc), why)  # fmt: skip

    def issue(self, hosts: list[str], lifetime_s: float) -> tuple[x509.Certificate, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(seconds=lifetime_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert, pem_key

    def _write_secret(
        self,
        name: str,
        existing: dict[str, Any] | None,
        cert: x509.Certificate,
        pem_key: bytes,
        certificate: str,
        requested: str | None,
    ) -> None:
        pem = cert.public_bytes(serialization.Encoding.PEM)
        ca = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        annotations = {
            "cert-manager.io/certificate-name": certificate,
            "cert-manager.io/issuer-name": "sandbox-ca",
            "cert-manager.io/issuer-kind": "ClusterIssuer",
        }
        if requested:
            annotations[ISSUED_FOR] = requested
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations},
            "data": {k: base64.b64encode(v).decode() for k, v in (("tls.crt", pem + ca), ("tls.key", pem_key),
                                                                  ("ca.crt", ca))},
        }  # fmt: skip
        path = f"/api/v1/namespaces/{self.namespace}/secrets"
        if existing is None:
            response = self.client.post(path, json=body)
        else:
            labels = existing["metadata"].get("labels") or {}
            body["metadata"].update(resourceVersion=existing["metadata"]["resourceVersion"], labels=labels)
            response = self.client.put(f"{path}/{name}", json=body)
        response.raise_for_status()

    @staticmethod
    def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
        return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)

    @staticmethod
    def _ready(ok: bool, reason: str, message: str) -> dict[str, Any]:
        now = _iso(dt.datetime.now(dt.UTC))
        return {"type": "Ready", "status": str(ok), "reason": reason, "message": message, "lastTransitionTime": now}

    def _status(self, name: str, cert: x509.Certificate, status: dict[str, Any]) -> None:
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        renewal = not_after - (not_after - not_before) / 3
        self._patch_status(
            name,
            {
                "notBefore": _iso(not_before),
                "notAfter": _iso(not_after),
                "renewalTime": _iso(renewal),
                "revision": int(status.get("revision") or 0) + 1,
                "conditions": [self._ready(True, "Ready", "Certificate is up to date and has not expired")],
            },
        )

    def _patch_status(self, name: str, status: dict[str, Any]) -> None:
        response = self.client.patch(
            f"{CERTIFICATES.format(ns=self.namespace)}/{name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()


def run_cert_manager(args: argparse.Namespace) -> None:
    client = client_from_kubeconfig(Path(args.kubeconfig))
    manager = CertManager(client, Path(args.pki_dir), args.namespace, args.lifetime_s)
    log.info("cert-manager stand-in: Certificates of %s, CA %s", args.namespace, args.pki_dir)
    failing = False
    while True:
        try:
            manager.step()
            failing = False
        except Exception as err:  # noqa: BLE001 - never fatal: the next poll tries again, the log says why
            if not failing:
                log.warning("cert-manager stand-in: %s: %s (retrying every %.0fs)", type(err).__name__, err, POLL_S)
            failing = True
        time.sleep(POLL_S)


# ---------------------------------------------------------------------------------------------- ingress
class IngressTLS:
    """Which certificate each Ingress host gets: polled from the Ingresses' ``spec.tls`` and their Secrets."""

    def __init__(self, client: httpx.Client, namespace: str, state_dir: Path) -> None:
        self.client, self.namespace, self.dir = client, namespace, state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.default = self._context(*self._fallback())
        self.by_host: dict[str, ssl.SSLContext] = {}
        self.loaded: dict[str, str] = {}  # secret name -> resourceVersion loaded

    def _fallback(self) -> tuple[bytes, bytes]:
        """What an Ingress controller serves before it has a Secret: its own self-signed certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Kubernetes Ingress Controller Fake Certificate")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key

    def _context(self, crt: bytes, key: bytes, ctx: ssl.SSLContext | None = None) -> ssl.SSLContext:
        ctx = ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        path = self.dir / "loading.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(crt + b"\n" + key)
        try:
            ctx.load_cert_chain(str(path))
        finally:
            path.unlink(missing_ok=True)
        return ctx

    def step(self) -> None:
        if not read_behaviour(self.client).get("ingress_reload", True):
            return
        listed = _get(self.client, f"/apis/networking.k8s.io/v1/namespaces/{self.namespace}/ingresses") or {}
        by_host = dict(self.by_host)
        for ingress in listed.get("items") or []:
            for tls in (ingress.get("spec") or {}).get("tls") or []:
                name = tls.get("secretName")
                secret = _get(self.client, f"/api/v1/namespaces/{self.namespace}/secrets/{name}") if name else None
                if secret is None:
                    continue  # deleted: keep serving what was loaded, as a controller does
                version = secret["metadata"]["resourceVersion"]
                if self.loaded.get(name) == version and all(h in by_host for h in tls.get("hosts") or []):
                    continue
                data = secret.get("data") or {}
                try:
                    ctx = self._context(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))
                except (KeyError, ValueError, ssl.SSLError) as err:
                    log.warning("Secret %s cannot be served: %s", name, err)
                    continue
                for host in tls.get("hosts") or []:
                    by_host[host] = ctx
                self.loaded[name] = version
                log.info("serving Secret %s (resourceVersion %s) for %s", name, version, tls.get("hosts"))
        self.by_host = by_host

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        crt, key = self._fallback()
        self._context(crt, key, ctx)

        def pick(sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
            chosen = self.by_host.get(server_name or "") or next(iter(self.by_host.values()), None)
            if chosen is not None:
                sock.context = chosen

        ctx.sni_callback = pick
        return ctx


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        )
        await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


def run_ingress(args: argparse.Namespace) -> None:
    client = client_from_kubeconfig(Path(args.kubeconfig))
    tls = IngressTLS(client, args.namespace, Path(args.state_dir))

    def poll() -> None:
        failing = False
        while True:
            try:
                tls.step()
                failing = False
            except Exception as err:  # noqa: BLE001 - never fatal: keeps serving what it loaded
                if not failing:
                    log.warning("ingress stand-in: %s: %s (retrying every %.0fs)", type(err).__name__, err, POLL_S)
                failing = True
            time.sleep(POLL_S)

    threading.Thread(target=poll, name="ingress-secrets", daemon=True).start()

    async def serve() -> None:
        server = await asyncio.start_server(_answer, args.host, args.port, ssl=tls.server_context())
        log.info("ingress stand-in: HTTPS on %s:%d for the Ingresses of %s", args.host, args.port, args.namespace)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.certificates")
    sub = parser.add_subparsers(dest="what", required=True)
    ingress = sub.add_parser("ingress")
    ingress.add_argument("--kubeconfig", required=True)
    ingress.add_argument("--namespace", default=NAMESPACE)
    ingress.add_argument("--host", default="127.0.0.1")
    ingress.add_argument("--port", type=int, required=True)
    ingress.add_argument("--state-dir", required=True)
    manager = sub.add_parser("cert-manager")
    manager.add_argument("--kubeconfig", required=True)
    manager.add_argument("--namespace", default=NAMESPACE)
    manager.add_argument("--pki-dir", required=True)
    manager.add_argument("--lifetime-s", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    (run_ingress if args.what == "ingress" else run_cert_manager)(args)


# ------------------------------------------------------------------------------------------- components
class _StandIn(Component):
    """A stand-in process of the sandbox's own cluster (none when ``KUBECONFIG`` names another cluster)."""

    role: str

    @property
    def kubeconfig(self) -> Path:
        return self.settings.home / "k8s" / "admin.kubeconfig"  # KubernetesComponent.admin_kubeconfig

    @property
    def log_path(self) -> Path:
        return self.settings.home / "logs" / f"{self.name}.log"

    def external(self) -> bool:
        return bool(os.environ.get("KUBECONFIG"))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "sandbox.certificates", self.role, "--kubeconfig", str(self.kubeconfig)]

    def ready(self) -> bool:
        return True

    def up(self) -> None:
        if self.external():
            self.state.put(self.name, {"external": True})
            return
        record = self.state.get(self.name)
        if record.get("pid") and processes.is_alive(int(record["pid"])) and self.ready():
            return
        pid = processes.spawn_daemon(self.argv(), log_path=self.log_path, cwd=PROJECT_DIR)
        self.state.put(self.name, {"pid": pid, "log": str(self.log_path), **self.record()})

        def ready() -> bool:
            return processes.is_alive(pid) and self.ready()

        wait_until(ready, timeout_s=self.settings.startup_timeout_s, what=self.name, log=self.log_path)

    def record(self) -> dict[str, Any]:
        return {}

    def status(self) -> ComponentStatus:
        record = self.state.get(self.name)
        if record.get("external"):
            return ComponentStatus(self.name, True, "(external cluster)", "not run: KUBECONFIG names the cluster")
        alive = bool(record.get("pid")) and processes.is_alive(int(record["pid"]))
        ok = alive and self.ready()
        return ComponentStatus(self.name, ok, self.address(), self.detail() if ok else f"not running; {self.log_path}")

    def address(self) -> str:
        return ""

    def detail(self) -> str:
        return ""


class CertManagerComponent(_StandIn):
    """The cert-manager stand-in: issues ``Certificate`` Secrets of ``production`` from the sandbox's CA."""

    name = "cert-manager"
    role = "cert-manager"

    def argv(self) -> list[str]:
        argv = [*super().argv(), "--pki-dir", str(self.settings.home / "k8s" / "pki")]
        if self.settings.certificate_lifetime_s:
            argv += ["--lifetime-s", str(self.settings.certificate_lifetime_s)]
        return argv

    def address(self) -> str:
        return f"issuer {self.settings.home / 'k8s' / 'pki' / 'ca.crt'}"

    def detail(self) -> str:
        return "issues the Certificates of production from the sandbox CA"


class IngressComponent(_StandIn):
    """The Ingress stand-in: HTTPS for the Ingress hosts of ``production`` with their Secrets' certificates."""

    name = "ingress"
    role = "ingress"

    def argv(self) -> list[str]:
        s = self.settings
        return [
            *super().argv(),
            "--host",
            s.host,
            "--port",
            str(s.ingress_port),
            "--state-dir",
            str(s.home / "ingress"),
        ]

    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.ingress_port}"

    def up(self) -> None:
        record = self.state.get(self.name)
        mine = record.get("pid") and processes.is_alive(int(record["pid"]))
        if not self.external() and not mine and port_open(self.settings.host, self.settings.ingress_port):
            raise SandboxError(
                f"ingress: port {self.settings.ingress_port} on {self.settings.host} is taken by another process",
                hint="stop it, or set RUNBOOKS_SANDBOX_INGRESS_PORT",
            )
        super().up()

    def record(self) -> dict[str, Any]:
        return {"address": self.address()}

    def ready(self) -> bool:
        try:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            import socket

            with socket.create_connection((self.settings.host, self.settings.ingress_port), timeout=2) as sock:
                with ctx.wrap_socket(sock, server_hostname="localhost"):
                    return True
        except OSError:
            return False

    def detail(self) -> str:
        return "HTTPS for the Ingress hosts (connect here with the host as SNI)"

    def env(self) -> dict[str, str]:
        return {"RUNBOOKS_INGRESS_ADDRESS": self.address()}


if __name__ == "__main__":
    main(sys.argv[1:])
