"""What the sandbox cluster holds, made to look like the runbook's production: namespace ``production`` with the
API and frontend Deployments (several revisions), postgresql, redis, Services, an Ingress, an HPA
(autoscaling/v1), ConfigMaps including ``deployment-alerts-*``, Secrets, and a cert-manager ``Certificate``; plus
the cluster plumbing: RBAC for the node agent and for the flows, and the metrics.k8s.io APIService.

Seeding talks to the API server directly with the admin client certificate (no kubectl).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kernel.errors import SandboxError

NS = "production"
FLOWS_USER = "runbooks-flows"
API_IMAGES = ["v2.3.0", "v2.4.0", "v2.5.0"]
FRONTEND_IMAGES = ["v1.8.0", "v1.9.0"]
REGISTRY = "ghcr.io/genspark"

# kind -> (api prefix, plural, namespaced)
_KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v1", "horizontalpodautoscalers", True),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "APIService": ("/apis/apiregistration.k8s.io/v1", "apiservices", False),
    "Certificate": ("/apis/cert-manager.io/v1", "certificates", True),
}


class AdminClient:
    """The cluster admin over HTTPS with the admin client certificate."""

    def __init__(self, server: str, pki_dir: Path) -> None:
        tls = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        tls.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        self.http = httpx.Client(base_url=server, verify=tls, timeout=15)

    def _url(self, obj: dict[str, Any]) -> str:
        prefix, plural, namespaced = _KINDS[obj["kind"]]
        ns = obj["metadata"].get("namespace", NS) if namespaced else None
        return f"{prefix}/namespaces/{ns}/{plural}" if ns else f"{prefix}/{plural}"

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or leave an existing object as it is (idempotent)."""
        response = self.http.post(self._url(obj), json=obj)
        if response.status_code == 409:
            got = self.http.get(f"{self._url(obj)}/{obj['metadata']['name']}")
            got.raise_for_status()
            return dict(got.json())
        if response.status_code >= 400:
            raise SandboxError(
                f"seeding {obj['kind']} {obj['metadata']['name']}: {response.status_code} {response.text[:300]}"
            )
        return dict(response.json())

    def patch(self, obj: dict[str, Any], patch: dict[str, Any]) -> None:
        response = self.http.patch(
            f"{self._url(obj)}/{obj['metadata']['name']}",
            json=patch,
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        if response.status_code >= 400:
            raise SandboxError(f"patching {obj['kind']} {obj['metadata']['name']}: {response.text[:300]}")

    def get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        response.raise_for_status()
        return dict(response.json())

    def close(self) -> None:
        self.http.close()


def _meta(name: str, namespace: str | None = NS, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "ai-multimodel", **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


# ------------------------------------------------------------------------------------------------ plumbing
def bootstrap(admin: AdminClient) -> None:
    """What must exist before the node agent and the flows connect: RBAC and the production namespace."""
    admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "sandbox-system-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        }
    )
    rw = ["get", "list", "watch", "create", "update", "patch", "delete"]
    ro = ["get", "list", "watch"]
    admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "runbooks-operator"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": [
                        "pods",
                        "services",
                        "configmaps",
                        "secrets",
                        "namespaces",
                        "serviceaccounts",
                        "persistentvolumeclaims",
                        "endpoints",
                    ],
                    "verbs": rw,
                },
                {"apiGroups": [""], "resources": ["pods/log", "events", "nodes", "resourcequotas"], "verbs": ro},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments", "deployments/scale", "replicasets", "statefulsets", "daemonsets"],
                    "verbs": rw,
                },
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": rw},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": rw},
                {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": rw},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ro},
                # a disaster recovery's traffic switch points a Service at another namespace's pods
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": rw},
                {"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": ro},
                {"apiGroups": ["cert-manager.io"], "resources": ["certificates"], "verbs": rw},
            ],
        }
    )
    admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "runbooks-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "runbooks-operator"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": FLOWS_USER}],
        }
    )
    admin.create(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {"environment": "production"}}}
    )


def metrics_api(admin: AdminClient, *, cluster_ip: str, port: int, ca_pem: bytes) -> None:
    """metrics.k8s.io served by the node agent, through the aggregator. The Service is an ExternalName naming the
    loopback address the agent listens on: a ClusterIP Service would need Endpoints, and Endpoints refuse loopback
    addresses; the aggregator dials the external name and verifies the serving certificate against the Service's
    DNS name (metrics-server.kube-system.svc)."""
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics-server", "namespace": "kube-system", "labels": {"k8s-app": "metrics-server"}},
            "spec": {
                "type": "ExternalName",
                "externalName": cluster_ip,
                "ports": [{"name": "https", "port": port, "targetPort": port}],
            },
        }
    )
    admin.create(
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "caBundle": base64.b64encode(ca_pem).decode(),
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": port},
            },
        }
    )


# ------------------------------------------------------------------------------------------- production
def _deployment(
    name: str, image: str, replicas: int, *, port: int, requests: dict[str, str], limits: dict[str, str], tier: str
) -> dict[str, Any]:
    labels = {"app": name, "tier": tier}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_meta(name, app=name), "annotations": {"kubernetes.io/change-cause": f"deploy {image}"}},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "ports": [{"containerPort": port}],
                            "resources": {"requests": requests, "limits": limits},
                            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5},
                        }
                    ]
                },
            },
        },
    }


def _tls_secret(hosts: list[str]) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt = cert.public_bytes(serialization.Encoding.PEM)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            **_meta("ai-multimodel-tls"),
            "annotations": {"cert-manager.io/certificate-name": "ai-multimodel-tls"},
        },
        "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(pem).decode()},
    }


def _certificate_crd() -> dict[str, Any]:
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "certificates.cert-manager.io"},
        "spec": {
            "group": "cert-manager.io",
            "scope": "Namespaced",
            "names": {
                "plural": "certificates",
                "singular": "certificate",
                "kind": "Certificate",
                "shortNames": ["cert", "certs"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def seed_production(admin: AdminClient) -> None:
    hosts = ["ai-multimodel.genspark.ai", "api.ai-multimodel.genspark.ai"]
    api = _deployment(
        "ai-multimodel-api",
        f"{REGISTRY}/ai-multimodel-api:{API_IMAGES[0]}",
        3,
        port=8000,
        requests={"cpu": "500m", "memory": "1Gi"},
        limits={"cpu": "2", "memory": "4Gi"},
        tier="backend",
    )
    frontend = _deployment(
        "ai-multimodel-frontend",
        f"{REGISTRY}/ai-multimodel-frontend:{FRONTEND_IMAGES[0]}",
        2,
        port=3000,
        requests={"cpu": "100m", "memory": "256Mi"},
        limits={"cpu": "500m", "memory": "512Mi"},
        tier="frontend",
    )
    postgresql = _deployment(
        "postgresql",
        "postgres:15.8",
        1,
        port=5432,
        requests={"cpu": "1", "memory": "2Gi"},
        limits={"cpu": "2", "memory": "4Gi"},
        tier="data",
    )
    redis = _deployment(
        "redis",
        "redis:7.0.15",
        1,
        port=6379,
        requests={"cpu": "250m", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1Gi"},
        tier="data",
    )
    secret_values = {
        "DATABASE_URL": f"postgresql://ai:{secrets.token_urlsafe(18)}@postgresql:5432/ai_multimodel",
        "REDIS_URL": f"redis://:{secrets.token_urlsafe(18)}@redis:6379/0",
        "OPENAI_API_KEY": f"sk-sandbox-{secrets.token_hex(20)}",
        "ANTHROPIC_API_KEY": f"sk-ant-sandbox-{secrets.token_hex(20)}",
        "ADMIN_TOKEN": secrets.token_urlsafe(32),
    }
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": _meta("ai-multimodel-secrets"),
            "stringData": secret_values,
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": _meta("postgresql-credentials"),
            "stringData": {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": secrets.token_urlsafe(18)},
        },
        _tls_secret(hosts),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("ai-multimodel-config"),
            "data": {
                "LOG_LEVEL": "info",
                "MODELS": "gpt-4,claude-3-5-sonnet,gemini-pro,qwen,deepseek",
                "LOAD_BALANCER_ALGORITHM": "weighted",
                "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "5",
            },
        },
        *[
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(f"deployment-alerts-2026110{day}-120000", component="deployment-alerts"),
                "data": {"alerts.yaml": f"deployed: 2026-11-0{day}T12:00:00Z\nrevision: {day}\n"},
            }
            for day in range(1, 7)
        ],
        api,
        frontend,
        postgresql,
        redis,
        *[
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(name, app=name),
                "spec": {
                    "selector": {"app": name},
                    "ports": [{"name": "http" if port not in (5432, 6379) else name, "port": port, "targetPort": port}],
                },
            }
            for name, port in (
                ("ai-multimodel-api", 8000),
                ("ai-multimodel-frontend", 3000),
                ("postgresql", 5432),
                ("redis", 6379),
            )
        ],
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                **_meta("ai-multimodel"),
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt-prod"},
            },
            "spec": {
                "tls": [{"hosts": hosts, "secretName": "ai-multimodel-tls"}],
                "rules": [
                    {
                        "host": host,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": svc, "port": {"number": port}}},
                                }
                            ]
                        },
                    }
                    for host, svc, port in (
                        (hosts[0], "ai-multimodel-frontend", 3000),
                        (hosts[1], "ai-multimodel-api", 8000),
                    )
                ],
            },
        },
        {
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _meta("ai-multimodel-api"),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ai-multimodel-api"},
                "minReplicas": 3,
                "maxReplicas": 10,
                "targetCPUUtilizationPercentage": 70,
            },
        },
    ]
    for obj in objects:
        admin.create(obj)
    admin.create(_certificate_crd())
    _wait(lambda: _established(admin), 30, "the Certificate CRD")
    admin.create(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": _meta("ai-multimodel-tls"),
            "spec": {
                "secretName": "ai-multimodel-tls",
                "dnsNames": hosts,
                "duration": "2160h",
                "renewBefore": "360h",
                "issuerRef": {"name": "letsencrypt-prod", "kind": "ClusterIssuer"},
            },
        }
    )
    # history: each new image is a new ReplicaSet revision, as `kubectl set image` makes it
    # (the controller must see each template, so wait until it has observed the previous patch)
    for deployment, tags in ((api, API_IMAGES), (frontend, FRONTEND_IMAGES)):
        name = deployment["metadata"]["name"]
        path = f"/apis/apps/v1/namespaces/{NS}/deployments/{name}"
        for revision, tag in enumerate(tags[1:], start=2):
            _wait(
                lambda path=path, revision=revision: _revision(admin, path) == revision - 1,
                30,
                f"revision {revision - 1} of {name}",
            )
            image = f"{REGISTRY}/{name}:{tag}"
            admin.patch(
                deployment,
                {
                    "metadata": {"annotations": {"kubernetes.io/change-cause": f"deploy {image}"}},
                    "spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}},
                },
            )


def _revision(admin: AdminClient, path: str) -> int:
    """The Deployment's revision once the controller has observed its latest spec, else 0."""
    dep = admin.get(path)
    if (dep.get("status") or {}).get("observedGeneration", 0) < dep["metadata"]["generation"]:
        return 0
    return int((dep["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))


def _established(admin: AdminClient) -> bool:
    crd = admin.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/certificates.cert-manager.io")
    return any(
        c["type"] == "Established" and c["status"] == "True" for c in (crd.get("status") or {}).get("conditions") or []
    )


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise SandboxError(f"{what} not ready within {timeout_s:.0f}s")


def deployments_available(admin: AdminClient) -> bool:
    items = admin.get(f"/apis/apps/v1/namespaces/{NS}/deployments")["items"]
    return bool(items) and all(
        d["status"].get("updatedReplicas") == d["spec"]["replicas"]
        and d["status"].get("availableReplicas") == d["spec"]["replicas"]
        and d["status"].get("observedGeneration", 0) >= d["metadata"]["generation"]
        and not d["status"].get("unavailableReplicas")
        for d in items
    )


def wait_for_production(admin: AdminClient, timeout_s: float) -> None:
    _wait(lambda: deployments_available(admin), timeout_s, f"Deployments in {NS!r}")
