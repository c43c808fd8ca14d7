"""How the simulated node's containers behave: the release catalogue (the image tag, :mod:`sandbox.releases`), the
steering rules (ConfigMap ``kube-system/sandbox-node-behaviour`` key ``rules.json``, and pod annotations), combined;
the per-container run history (restarts, crash loops, slow readiness),
the pod status the node reports, and deterministic resource usage.

Everything observable is a function of the recorded history and the wall clock, so logs, statuses and metrics
agree with each other and repeat across requests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from sandbox.releases import release_behaviour

RULES_NAMESPACE = "kube-system"
RULES_CONFIGMAP = "sandbox-node-behaviour"
RULES_KEY = "rules.json"
BEHAVIOUR_ANNOTATION = "sandbox.runbooks.io/behaviour"  # comma-separated: crashloop, slow-ready, error-logs
READY_AFTER_ANNOTATION = "sandbox.runbooks.io/ready-after-seconds"

CRASH_PERIOD_S = 6.0  # a crash-looping container restarts (restartCount + 1) every CRASH_PERIOD_S
CRASH_RUN_S = 1.0  # ... after running this long and exiting 1
DEFAULT_SLOW_READY_S = 30.0
DEFAULT_CPU_REQUEST_M = 100
DEFAULT_MEMORY_REQUEST = 128 * 2**20


class Rules(BaseModel):
    """The JSON document in the ConfigMap; apps are matched by the pod label ``app``."""

    model_config = ConfigDict(extra="forbid")

    failing_images: list[str] = []  # fnmatch patterns on the container image
    crashloop: list[str] = []
    slow_ready_seconds: dict[str, float] = {}
    error_logs: list[str] = []  # apps, or fnmatch patterns on the image (a release that logs errors)
    memory_growth_mib_per_min: dict[str, float] = {}
    cpu_millicores: dict[str, int] = {}

    @classmethod
    def from_configmap(cls, data: dict[str, str] | None) -> Rules:
        raw = (data or {}).get(RULES_KEY)
        return cls.model_validate(json.loads(raw)) if raw else cls()


@dataclass(frozen=True)
class Behaviour:
    """What one container does, resolved from the rules and the pod's annotations."""

    crash: bool = False
    reason: str = ""  # why it crashes: "image" (failing_images), "release" (the tag) or "crashloop"
    ready_after_s: float = 0.0
    error_logs: bool = False
    memory_growth_mib_per_min: float = 0.0
    cpu_millicores: int | None = None


def resolve(pod: dict[str, Any], container: dict[str, Any], rules: Rules) -> Behaviour:
    """The rules and annotations, combined with the release behaviour of the container's image tag: either can
    make it crash or log errors; the later readiness and the sum of the memory growths apply."""
    meta = pod.get("metadata") or {}
    app = (meta.get("labels") or {}).get("app", "")
    annotations = meta.get("annotations") or {}
    flags = {f.strip() for f in annotations.get(BEHAVIOUR_ANNOTATION, "").split(",") if f.strip()}
    image = container.get("image", "")
    release = release_behaviour(image)
    bad_image = any(fnmatch.fnmatchcase(image, pattern) for pattern in rules.failing_images)
    crashloop = app in rules.crashloop or "crashloop" in flags
    ready_after = float(rules.slow_ready_seconds.get(app, DEFAULT_SLOW_READY_S if "slow-ready" in flags else 0.0))
    with contextlib.suppress(KeyError, ValueError):
        ready_after = float(annotations[READY_AFTER_ANNOTATION])
    error_logs = any(app == p or fnmatch.fnmatchcase(image, p) for p in rules.error_logs) or "error-logs" in flags
    return Behaviour(
        crash=bad_image or release.crash or crashloop,
        reason="image" if bad_image else "release" if release.crash else "crashloop" if crashloop else "",
        ready_after_s=max(ready_after, release.ready_after_s),
        error_logs=error_logs or release.error_logs,
        memory_growth_mib_per_min=float(rules.memory_growth_mib_per_min.get(app, 0.0))
        + release.memory_growth_mib_per_min,
        cpu_millicores=rules.cpu_millicores.get(app),
    )


# ------------------------------------------------------------------------------------------------ helpers
def unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_SUFFIXES = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def parse_quantity(value: str | int | float | None) -> float | None:
    if value is None:
        return None
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        return None
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def _terminated(code: int, reason: str, started: float, finished: float, container_id: str) -> dict[str, Any]:
    times = {"startedAt": rfc3339(started), "finishedAt": rfc3339(finished)}
    return {"terminated": {"exitCode": code, "reason": reason, **times, "containerID": container_id}}


# ------------------------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Instance:
    """One run of a container: restart ``index``, from ``started`` to ``finished`` (None while running)."""

    index: int
    started: float
    finished: float | None
    crashed: bool
    key: str  # the container's

    @property
    def container_id(self) -> str:
        return "sandbox://" + hashlib.sha256(f"{self.key}/{self.index}".encode()).hexdigest()[:32]


@dataclass
class ContainerSim:
    """A container's history: ``restarts`` completed before the current phase, which began at ``since`` and is
    either a healthy run or a crash loop (a run of CRASH_RUN_S every CRASH_PERIOD_S)."""

    key: str  # "<pod uid>/<container name>"
    name: str
    image: str
    cpu_request_m: float
    memory_request: float
    behaviour: Behaviour
    since: float
    restarts: int = 0
    before: Instance | None = None
    error_since: float | None = None  # when error_logs was switched on
    grown: float = 0.0  # memory taken by a leak up to grown_at
    grown_at: float = 0.0

    def _crash_runs(self, now: float) -> int:
        return max(0, int((now - self.since) // CRASH_PERIOD_S))

    def restart_count(self, now: float) -> int:
        return self.restarts + (self._crash_runs(now) if self.behaviour.crash else 0)

    def instance(self, now: float, back: int = 0) -> Instance | None:
        """The current run (``back=0``) or an earlier one; None when there was none."""
        n = self._crash_runs(now) if self.behaviour.crash else 0
        k = n - back
        if k < 0:
            return self.before if k == -1 else None
        start = self.since + k * CRASH_PERIOD_S
        if self.behaviour.crash:
            return Instance(self.restarts + k, start, start + CRASH_RUN_S, True, self.key)
        return Instance(self.restarts, self.since, None, False, self.key)

    def apply(self, behaviour: Behaviour, now: float) -> None:
        """Switch to a new behaviour; a change between healthy and crashing restarts the container."""
        if behaviour.memory_growth_mib_per_min != self.behaviour.memory_growth_mib_per_min:
            self.grown = self._grown(now)  # a leak keeps what it took until the container restarts
            self.grown_at = now
        if behaviour.crash != self.behaviour.crash:
            last = self.instance(now)
            assert last is not None
            self.before = Instance(last.index, last.started, min(last.finished or now, now), True, self.key)
            self.restarts = last.index + 1
            self.since = self.grown_at = now
            self.grown = 0.0
        if behaviour.error_logs and self.error_since is None:
            self.error_since = now
        elif not behaviour.error_logs:
            self.error_since = None
        self.behaviour = behaviour

    def _grown(self, now: float) -> float:
        minutes = max(0.0, now - max(self.since, self.grown_at)) / 60.0
        return self.grown + self.behaviour.memory_growth_mib_per_min * minutes * 2**20

    def ready(self, now: float) -> bool:
        return not self.behaviour.crash and now >= self.since + self.behaviour.ready_after_s

    def status(self, pod_name: str, namespace: str, uid: str, now: float) -> dict[str, Any]:
        current = self.instance(now)
        assert current is not None
        state: dict[str, Any]
        last: Instance | None
        if self.behaviour.crash:
            state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 10s restarting failed container={self.name} "
                    f"pod={pod_name}_{namespace}({uid})",
                }
            }
            last = current
        else:
            state = {"running": {"startedAt": rfc3339(current.started)}}
            last = self.before
        repository = self.image.rsplit(":", 1)[0] if ":" in self.image.rsplit("/", 1)[-1] else self.image
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"docker-pullable://{repository}@sha256:{hashlib.sha256(self.image.encode()).hexdigest()}",
            "containerID": current.container_id,
            "ready": self.ready(now),
            "started": not self.behaviour.crash,
            "restartCount": self.restart_count(now),
            "state": state,
            "lastState": {},
        }
        if last is not None:
            end = last.finished or now
            status["lastState"] = _terminated(1, "Error", last.started, end, last.container_id)
        return status

    def usage(self, now: float) -> tuple[float, float]:
        """(nanocores, working-set bytes), deterministic, drifting slowly around a baseline from the requests."""
        if self.behaviour.crash:
            return 1e6 * (1 + 4 * unit(self.key, "crash-cpu")), 12 * 2**20 * (1 + unit(self.key, "crash-mem"))
        wave = math.sin(2 * math.pi * (now / 300.0 + unit(self.key, "phase")))
        if self.behaviour.cpu_millicores is not None:
            millicores = self.behaviour.cpu_millicores * (1 + 0.03 * wave)
        else:
            millicores = self.cpu_request_m * (0.3 + 0.3 * unit(self.key, "cpu")) * (1 + 0.12 * wave)
        memory = self.memory_request * (0.45 + 0.25 * unit(self.key, "mem")) * (1 + 0.02 * wave)
        return millicores * 1e6, memory + self._grown(now)


@dataclass
class PodSim:
    uid: str
    namespace: str
    name: str
    app: str
    ip: str
    started: float
    host_network: bool
    pod: dict[str, Any]
    containers: dict[str, ContainerSim] = field(default_factory=dict)
    transitions: dict[str, tuple[bool, float]] = field(default_factory=dict)
    last_sent: dict[str, Any] | None = None
    deleting: bool = False

    @classmethod
    def create(cls, pod: dict[str, Any], ip: str, rules: Rules, now: float) -> PodSim:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        started = parse_time(status.get("startTime")) or now
        previous = {c["name"]: c for c in status.get("containerStatuses") or []}
        sim = cls(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            app=(meta.get("labels") or {}).get("app", ""),
            ip=ip,
            started=started,
            host_network=bool(spec.get("hostNetwork")),
            pod=pod,
        )
        for c in spec.get("containers") or []:
            requests = (c.get("resources") or {}).get("requests") or {}
            limits = (c.get("resources") or {}).get("limits") or {}
            cpu = parse_quantity(requests.get("cpu") or limits.get("cpu"))
            memory = parse_quantity(requests.get("memory") or limits.get("memory"))
            behaviour = resolve(pod, c, rules)
            seen = previous.get(c["name"]) or {}  # an agent restart keeps a running container's history
            running = parse_time(((seen.get("state") or {}).get("running") or {}).get("startedAt"))
            since = running if running and not behaviour.crash else now
            sim.containers[c["name"]] = ContainerSim(
                key=f"{sim.uid}/{c['name']}",
                name=c["name"],
                image=c.get("image", ""),
                cpu_request_m=cpu * 1000 if cpu else DEFAULT_CPU_REQUEST_M,
                memory_request=memory or DEFAULT_MEMORY_REQUEST,
                behaviour=behaviour,
                since=since,
                restarts=int(seen.get("restartCount") or 0),
                error_since=since if behaviour.error_logs else None,
                grown_at=since,
            )
        return sim

    def update(self, pod: dict[str, Any], rules: Rules, now: float) -> None:
        self.pod = pod
        self.deleting = bool(pod["metadata"].get("deletionTimestamp"))
        for c in (pod.get("spec") or {}).get("containers") or []:
            if c["name"] in self.containers:
                self.containers[c["name"]].apply(resolve(pod, c, rules), now)

    def _condition(self, kind: str, value: bool, now: float) -> dict[str, Any]:
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != value:
            self.transitions[kind] = previous = (value, self.started if previous is None else now)
        return {
            "type": kind,
            "status": "True" if value else "False",
            "lastProbeTime": None,
            "lastTransitionTime": rfc3339(previous[1]),
            **({} if value else {"reason": "ContainersNotReady"}),
        }

    def status(self, host_ip: str, now: float) -> dict[str, Any]:
        statuses = [c.status(self.name, self.namespace, self.uid, now) for c in self.containers.values()]
        ready = all(s["ready"] for s in statuses)
        conditions = [
            self._condition("Initialized", True, now),
            self._condition("Ready", ready, now),
            self._condition("ContainersReady", ready, now),
            self._condition("PodScheduled", True, now),
        ]
        not_ready = [s["name"] for s in statuses if not s["ready"]]
        for cond in conditions[1:3]:
            if not_ready:
                cond["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        init = [  # init containers completed at once
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "state": _terminated(0, "Completed", self.started, self.started, f"sandbox://init-{self.uid}-{i}"),
            }
            for i, c in enumerate((self.pod.get("spec") or {}).get("initContainers") or [])
        ]
        status: dict[str, Any] = {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": host_ip,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": rfc3339(self.started),
            "containerStatuses": statuses,
        }
        if init:
            status["initContainerStatuses"] = init
        return status


SYSTEM_CPU_M = 350.0  # what the node itself uses besides pods
SYSTEM_MEMORY = 1.8 * 2**30


@dataclass
class PodStore:
    """What the node runs, shared by the pod sync loop and the kubelet and metrics servers."""

    node_name: str
    host_ip: str
    booted: float
    rules: Rules = field(default_factory=Rules)
    pods: dict[str, PodSim] = field(default_factory=dict)  # by uid

    def find(self, namespace: str, name: str) -> PodSim | None:
        return next((p for p in self.pods.values() if p.namespace == namespace and p.name == name), None)

    def running(self) -> list[PodSim]:
        return sorted((p for p in self.pods.values() if not p.deleting), key=lambda p: (p.namespace, p.name))

    def node_usage(self, now: float) -> tuple[float, float]:
        wave = math.sin(2 * math.pi * now / 420.0)
        cpu, memory = SYSTEM_CPU_M * 1e6 * (1 + 0.1 * wave), SYSTEM_MEMORY * (1 + 0.01 * wave)
        for pod in self.running():
            for c in pod.containers.values():
                c_cpu, c_mem = c.usage(now)
                cpu, memory = cpu + c_cpu, memory + c_mem
        return cpu, memory
