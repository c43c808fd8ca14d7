"""The Kubernetes component of the sandbox: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
the simulated node agent, all on loopback; kubeconfigs for the admin and for the flows (a bearer token bound by
RBAC to the ``runbooks-operator`` ClusterRole). When ``KUBECONFIG`` is set, that cluster wins and nothing is
built or started.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kernel import processes
from kernel.errors import SandboxError
from sandbox.components import Component, ComponentStatus, log_tail, port_free, wait_until
from sandbox.config import PROJECT_DIR
from sandbox.k8s import seed
from sandbox.k8s.pki import ClusterPKI

NODE_NAME = "sandbox-node-1"
BUILD_SCRIPT = Path(__file__).with_name("build.sh")


def _write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, Any], name: str) -> None:
    """A self-contained kubeconfig (CA and client credentials embedded), mode 0600."""
    embedded = {}
    for key, value in user.items():
        if key in {"client-certificate", "client-key"}:
            embedded[f"{key}-data"] = base64.b64encode(Path(value).read_bytes()).decode()
        else:
            embedded[key] = value
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [
            {
                "name": "sandbox",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()},
            }
        ],
        "users": [{"name": name, "user": embedded}],
        "contexts": [{"name": name, "context": {"cluster": "sandbox", "user": name, "namespace": "production"}}],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(yaml.safe_dump(doc, sort_keys=False))


class KubernetesComponent(Component):
    name = "kubernetes"

    # ------------------------------------------------------------------------------------------- layout
    @property
    def dir(self) -> Path:
        return self.settings.home / "k8s"

    @property
    def pki(self) -> ClusterPKI:
        return ClusterPKI(self.dir / "pki")

    @property
    def server(self) -> str:
        return f"https://{self.settings.host}:{self.settings.k8s_api_port}"

    @property
    def metrics_ip(self) -> str:
        """The loopback address the node agent serves metrics.k8s.io on (the metrics-server ExternalName Service
        names it; any 127.0.0.0/8 address is local, so no kube-proxy is needed)."""
        return str(ipaddress.ip_network(self.settings.k8s_service_cidr)[20])

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def flows_kubeconfig(self) -> Path:
        return self.dir / "runbooks.kubeconfig"

    def external_kubeconfig(self) -> str | None:
        return os.environ.get("KUBECONFIG") or None

    # --------------------------------------------------------------------------------------- binaries
    def binaries(self) -> Path:
        """Build (once per machine) or reuse the cached control-plane binaries."""
        result = processes.run(["bash", str(BUILD_SCRIPT)], timeout_s=3600)
        if result.returncode != 0:
            tail = " / ".join(result.stderr.strip().splitlines()[-5:])
            raise SandboxError(
                f"building the Kubernetes control plane failed: {tail}",
                hint=f"run `bash {BUILD_SCRIPT}` to see the whole output",
            )
        return Path(result.stdout.strip().splitlines()[-1])

    # -------------------------------------------------------------------------------------------- up
    def up(self) -> None:
        if self.external_kubeconfig():
            self.state.put(self.name, {"external": True, "kubeconfig": self.external_kubeconfig()})
            return
        record = self.state.get(self.name)
        if record.get("pids") and self.status().healthy:
            return
        self.down()
        bin_dir = self.binaries()
        s = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        logs = s.home / "logs"
        pki = self.pki
        pki.ensure(
            api_hosts=(s.host, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            node_name=NODE_NAME,
            node_host=s.host,
            metrics_ip=self.metrics_ip,
        )
        tokens = self._tokens()
        p = pki.path
        d = pki.dir
        _write_kubeconfig(
            self.admin_kubeconfig,
            self.server,
            d / "ca.crt",
            {"client-certificate": str(p("admin").cert), "client-key": str(p("admin").key)},
            "admin",
        )
        _write_kubeconfig(self.flows_kubeconfig, self.server, d / "ca.crt", {"token": tokens["runbooks"]}, "runbooks")
        for component in ("controller-manager", "scheduler"):
            _write_kubeconfig(
                self.dir / f"{component}.kubeconfig",
                self.server,
                d / "ca.crt",
                {"client-certificate": str(p(component).cert), "client-key": str(p(component).key)},
                component,
            )
        etcd_dir = self.dir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)  # a fresh, deterministic cluster on every `up`
        self._check_ports_free()
        pids: dict[str, int] = {}

        def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
            pids[name] = processes.spawn_daemon(argv, log_path=logs / f"k8s-{name}.log", env=env, cwd=PROJECT_DIR)
            self.state.put(
                self.name,
                {
                    "pids": pids,
                    "kubeconfig": str(self.flows_kubeconfig),
                    "admin_kubeconfig": str(self.admin_kubeconfig),
                    "server": self.server,
                },
            )

        spawn(
            "etcd",
            [
                "etcd",
                "--name",
                "sandbox",
                "--data-dir",
                str(etcd_dir),
                "--listen-client-urls",
                f"http://{s.host}:{s.k8s_etcd_port}",
                "--advertise-client-urls",
                f"http://{s.host}:{s.k8s_etcd_port}",
                "--listen-peer-urls",
                f"http://{s.host}:{s.k8s_etcd_port + 1}",
                "--initial-advertise-peer-urls",
                f"http://{s.host}:{s.k8s_etcd_port + 1}",
                "--initial-cluster",
                f"sandbox=http://{s.host}:{s.k8s_etcd_port + 1}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(2 * 2**30),
            ],
            env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""},
        )
        # the apiserver retries a missing etcd quietly for a minute: wait for etcd itself, and say so if it died
        wait_until(
            lambda: self._etcd_healthy(pids["etcd"]),
            timeout_s=s.startup_timeout_s,
            what="etcd",
            log=logs / "k8s-etcd.log",
        )
        spawn(
            "apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://{s.host}:{s.k8s_etcd_port}",
                f"--bind-address={s.host}",
                f"--secure-port={s.k8s_api_port}",
                f"--advertise-address={s.host}",
                "--insecure-port=0",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={p('apiserver').cert}",
                f"--tls-private-key-file={p('apiserver').key}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--token-auth-file={self.dir / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={s.k8s_service_cidr}",
                f"--kubelet-client-certificate={p('apiserver-kubelet-client').cert}",
                f"--kubelet-client-key={p('apiserver-kubelet-client').key}",
                f"--kubelet-certificate-authority={d / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--requestheader-client-ca-file={d / 'front-proxy-ca.crt'}",
                f"--proxy-client-cert-file={p('front-proxy-client').cert}",
                f"--proxy-client-key-file={p('front-proxy-client').key}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--event-ttl=6h",
                "--watch-cache=true",
                "--v=1",
            ],
        )
        wait_until(self._ready, timeout_s=s.startup_timeout_s, what="kube-apiserver", log=logs / "k8s-apiserver.log")
        admin = seed.AdminClient(self.server, pki.dir)
        try:
            seed.bootstrap(admin)
            seed.metrics_api(
                admin, cluster_ip=self.metrics_ip, port=s.k8s_metrics_port, ca_pem=(pki.dir / "ca.crt").read_bytes()
            )
            self._start_workers(spawn, bin_dir)
            seed.seed_production(admin)
            seed.wait_for_production(admin, s.startup_timeout_s)
        finally:
            admin.close()

    def _start_workers(self, spawn: Any, bin_dir: Path) -> None:
        s = self.settings
        d = self.pki.dir
        p = self.pki.path
        spawn(
            "controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.dir / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.dir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.dir / 'controller-manager.kubeconfig'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--port=0",
                f"--bind-address={s.host}",
                f"--secure-port={s.k8s_etcd_port + 10}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--cluster-signing-cert-file={d / 'ca.crt'}",
                f"--cluster-signing-key-file={d / 'ca.key'}",
                f"--service-cluster-ip-range={s.k8s_service_cidr}",
                "--controllers=*,-csrsigning,-csrapproving",
                "--concurrent-deployment-syncs=5",
                "--node-monitor-grace-period=40s",
                "--v=1",
            ],
        )
        spawn(
            "scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.dir / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={self.dir / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.dir / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--port=0",
                f"--bind-address={s.host}",
                f"--secure-port={s.k8s_etcd_port + 11}",
                "--v=1",
            ],
        )
        spawn(
            "node",
            [
                sys.executable,
                "-m",
                "sandbox.k8s.node",
                "--kubeconfig",
                str(self.dir / "node.kubeconfig"),
                "--name",
                NODE_NAME,
                "--address",
                s.host,
                "--port",
                str(s.k8s_kubelet_port),
                "--cert",
                str(p("kubelet").cert),
                "--key",
                str(p("kubelet").key),
                "--ca",
                str(d / "ca.crt"),
                "--metrics-address",
                self.metrics_ip,
                "--metrics-port",
                str(s.k8s_metrics_port),
                "--metrics-cert",
                str(p("metrics-server").cert),
                "--metrics-key",
                str(p("metrics-server").key),
                "--front-proxy-ca",
                str(d / "front-proxy-ca.crt"),
                "--platform-url",  # the API pods log the double's security record (sandbox/k8s/platform_feed.py)
                s.url(s.platform_port),
            ],
        )

    def _tokens(self) -> dict[str, str]:
        """Static bearer tokens: the flows' (RBAC-bound user) and the node agent's (Node authorizer)."""
        path = self.dir / "tokens.csv"
        if not path.exists():
            rows = {
                "runbooks": (secrets.token_urlsafe(32), "runbooks-flows", "1001", ""),
                "node": (secrets.token_urlsafe(32), f"system:node:{NODE_NAME}", "1002", "system:nodes"),
            }
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                for token, user, uid, group in rows.values():
                    fh.write(f'{token},{user},{uid},"{group}"\n' if group else f"{token},{user},{uid}\n")
        tokens = {}
        for line in path.read_text().splitlines():
            token, user = line.split(",")[:2]
            tokens["node" if user.startswith("system:node:") else "runbooks"] = token
        _write_kubeconfig(
            self.dir / "node.kubeconfig", self.server, self.pki.dir / "ca.crt", {"token": tokens["node"]}, "node"
        )
        return tokens

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki.path("admin").cert), str(self.pki.path("admin").key))
        return ctx

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=3) as resp:  # noqa: S310
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except (OSError, ssl.SSLError):
            return 0, ""

    def _ports(self) -> dict[str, int]:
        s = self.settings
        return {
            "etcd client": s.k8s_etcd_port,
            "etcd peer": s.k8s_etcd_port + 1,
            "kube-controller-manager": s.k8s_etcd_port + 10,
            "kube-scheduler": s.k8s_etcd_port + 11,
            "kube-apiserver": s.k8s_api_port,
            "kubelet": s.k8s_kubelet_port,
        }

    def _check_ports_free(self) -> None:
        """Fail at once, naming the port, when another process holds one the control plane needs (else etcd or
        the apiserver dies with the reason buried in its log and ``up`` waits out its timeout)."""
        taken = [f"{what} {port}" for what, port in self._ports().items() if not port_free(self.settings.host, port)]
        if taken:
            raise SandboxError(
                f"ports already in use on {self.settings.host}: {', '.join(taken)}",
                hint="stop what holds them, or choose others with RUNBOOKS_SANDBOX_K8S_ETCD_PORT / _K8S_API_PORT",
            )

    def _etcd_healthy(self, pid: int) -> bool:
        if not processes.is_alive(pid):
            raise SandboxError(
                "etcd exited during start-up" + log_tail(self.settings.home / "logs" / "k8s-etcd.log"),
                hint=f"see {self.settings.home / 'logs' / 'k8s-etcd.log'}",
            )
        try:
            with urllib.request.urlopen(
                f"http://{self.settings.host}:{self.settings.k8s_etcd_port}/health", timeout=2
            ) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    # ------------------------------------------------------------------------------------ down, status
    def down(self) -> None:
        record = self.state.get(self.name)
        for name in ("node", "scheduler", "controller-manager", "apiserver", "etcd"):
            pid = (record.get("pids") or {}).get(name)
            if pid:
                processes.stop_group(int(pid))
        self.state.put(self.name, None)

    def status(self) -> ComponentStatus:
        record = self.state.get(self.name)
        if record.get("external"):
            return ComponentStatus(self.name, True, str(record["kubeconfig"]), "external cluster (KUBECONFIG)")
        dead = [n for n, pid in (record.get("pids") or {}).items() if not processes.is_alive(int(pid))]
        if not record.get("pids") or dead:
            return ComponentStatus(self.name, False, self.server, f"not running: {', '.join(dead) or 'all'}")
        import json

        code, body = self._get(f"/api/v1/nodes/{NODE_NAME}")
        ready = code == 200 and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in json.loads(body).get("status", {}).get("conditions", [])
        )
        code_ns, _ = self._get("/apis/apps/v1/namespaces/production/deployments/ai-multimodel-api")
        ok = self._ready() and ready and code_ns == 200
        detail = (
            "Kubernetes v1.20 control plane, node Ready, production seeded"
            if ok
            else (f"apiserver ready={self._ready()}, node ready={ready}, production seeded={code_ns == 200}")
        )
        return ComponentStatus(self.name, ok, self.server, detail)

    def env(self) -> dict[str, str]:
        record = self.state.get(self.name)
        return {"KUBECONFIG": str(record.get("kubeconfig") or self.flows_kubeconfig)}
