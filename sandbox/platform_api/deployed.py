"""What is deployed, as the platform double learns it: a daemon thread lists the pods of ``app=ai-multimodel-api``
in namespace ``production`` every second through the Kubernetes API (the kubeconfig named by
``RUNBOOKS_PLATFORM_KUBECONFIG``) and hands the ready pods per image to the state on the app's event loop, as a live
service's traffic follows its ready pods. The release catalogue (:mod:`sandbox.releases`) turns them into the
release effect on the metrics and ``/health``.

The double starts before the sandbox's Kubernetes: the thread waits for the kubeconfig to appear, re-reads it when
it changes, and logs a failing read and retries; it never takes the double down. Without the file there is no
release effect; a failing read keeps the last observation (its ``observed_at`` ages).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

KUBECONFIG_ENV = "RUNBOOKS_PLATFORM_KUBECONFIG"
NAMESPACE = "production"
APP = "ai-multimodel-api"
POLL_S = 1.0
TIMEOUT_S = 5.0

log = logging.getLogger("sandbox.platform.deployed")
Observer = Callable[[dict[str, int] | None, float | None], object]


class KubeconfigError(ValueError):
    """The kubeconfig names no usable cluster or credentials."""


def _material(base: Path, entry: dict[str, Any], key: str, scratch: Path) -> str | None:
    """A file holding ``key`` of a kubeconfig entry: its path (relative to the kubeconfig), or ``key-data``
    written to ``scratch``."""
    if entry.get(f"{key}-data"):
        target = scratch / key
        target.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        return str(target)
    if entry.get(key):
        return str((base / str(entry[key])).resolve())
    return None


def client_from_kubeconfig(path: Path) -> httpx.Client:
    """An HTTP client for the current context of the kubeconfig at ``path`` (CA, client certificate or token)."""
    doc = yaml.safe_load(path.read_text()) or {}
    contexts = {c["name"]: c.get("context") or {} for c in doc.get("contexts") or []}
    context = contexts.get(doc.get("current-context", "")) or next(iter(contexts.values()), {})
    clusters = {c["name"]: c.get("cluster") or {} for c in doc.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in doc.get("users") or []}
    cluster, user = clusters.get(context.get("cluster", ""), {}), users.get(context.get("user", ""), {})
    if not cluster.get("server"):
        raise KubeconfigError(f"{path}: the current context names no cluster with a server")
    base = path.parent
    headers = {}
    with tempfile.TemporaryDirectory(prefix="platform-kube-") as tmp:
        scratch = Path(tmp)
        ca = _material(base, cluster, "certificate-authority", scratch)
        tls = ssl.create_default_context(cafile=ca)
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        cert = _material(base, user, "client-certificate", scratch)
        key = _material(base, user, "client-key", scratch)
        if cert:
            tls.load_cert_chain(cert, key)
    token = user.get("token") or (Path(user["tokenFile"]).read_text().strip() if user.get("tokenFile") else None)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=str(cluster["server"]), verify=tls, headers=headers, timeout=TIMEOUT_S)


def _ready(pod: dict[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False  # a terminating pod leaves the Service's endpoints
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def ready_pods_by_image(pods: list[dict[str, Any]], container: str = APP) -> dict[str, int]:
    """Ready pods per image of ``container`` (or of the pod's first container)."""
    counts: dict[str, int] = {}
    for pod in pods:
        if not _ready(pod):
            continue
        containers = (pod.get("spec") or {}).get("containers") or []
        picked = next((c for c in containers if c.get("name") == container), containers[0] if containers else None)
        if picked and picked.get("image"):
            counts[picked["image"]] = counts.get(picked["image"], 0) + 1
    return counts


class ReleaseWatcher(threading.Thread):
    """Polls the Kubernetes API and reports each observation to ``observe`` (called on this thread)."""

    def __init__(self, kubeconfig: Path, observe: Observer, poll_s: float = POLL_S) -> None:
        super().__init__(name="release-watcher", daemon=True)
        self.kubeconfig, self.observe, self.poll_s = kubeconfig, observe, poll_s
        self.stopping = threading.Event()
        self._client: httpx.Client | None = None
        self._loaded: float | None = None  # the kubeconfig's mtime the client was built from
        self._failing = False

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
                if self._failing:
                    log.info("release watcher: reading the pods again")
                self._failing = False
            except Exception as err:  # never fatal: the double keeps serving what it last observed
                self._drop_client()
                if not self._failing:
                    log.warning("release watcher: %s: %s (retrying every %.0fs)", type(err).__name__, err, self.poll_s)
                self._failing = True
            self.stopping.wait(self.poll_s)
        self._drop_client()

    def step(self) -> None:
        try:
            mtime = self.kubeconfig.stat().st_mtime
        except FileNotFoundError:
            if self._loaded is not None:
                log.info("release watcher: %s is gone; no release effect", self.kubeconfig)
            self._drop_client()
            self.observe(None, None)
            return
        if self._client is None or mtime != self._loaded:
            self._drop_client()
            self._client = client_from_kubeconfig(self.kubeconfig)
            self._loaded = mtime
        response = self._client.get(f"/api/v1/namespaces/{NAMESPACE}/pods", params={"labelSelector": f"app={APP}"})
        response.raise_for_status()
        self.observe(ready_pods_by_image(response.json().get("items") or []), time.time())

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None
        if not self.kubeconfig.exists():
            self._loaded = None


def start_release_watcher(
    observe: Callable[[dict[str, int] | None, float | None], object], loop: asyncio.AbstractEventLoop
) -> ReleaseWatcher | None:
    """Start the watcher when ``RUNBOOKS_PLATFORM_KUBECONFIG`` names a kubeconfig; ``observe`` runs on ``loop``
    (where the app's state lives). None (no watcher, no release effect) when the variable is not set."""
    path = os.environ.get(KUBECONFIG_ENV, "").strip()
    if not path:
        return None

    def on_loop(ready: dict[str, int] | None, at: float | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(observe, ready, at)

    watcher = ReleaseWatcher(Path(path), on_loop)
    watcher.start()
    log.info("release watcher: following the pods of %s/%s through %s", NAMESPACE, APP, path)
    return watcher
