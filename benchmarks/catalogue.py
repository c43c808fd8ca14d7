"""Runbook catalogue benchmark (run on demand: ``python -m benchmarks.catalogue``; never part of the tests).

Issue 14's performance figures. A private sandbox (the production code of ``runbooks sandbox up``, every component
but the disaster-recovery target, from a temporary home on free ports: its own PostgreSQL cluster, an embedded
redis-server, the platform double, the Kubernetes control plane, Prefect with its workers and every deployment of
``prefect.yaml``, the alert gateway, Alertmanager and Prometheus); the environment's kind is ``sandbox``, so the
catalogue's mode is ``auto``. For each procedure of :data:`PROCEDURES` (fault → alert → flow), ``--runs`` times:

1. the fault on, through ``sandbox.faults.inject`` (the code of ``runbooks sandbox fault``), at ``t0``;
2. ``fault_to_post``: to Alertmanager's POST reaching the gateway (the incident's ``opened_at`` there): Prometheus's
   rule (its ``for:`` and rate window, the 5 s scrape and evaluation interval) and Alertmanager's ``group_wait``;
3. ``post_to_applied``: from that POST to the flow's first ``runbooks.action.applied`` event (emitted once the
   platform accepted the action; its payload says whether the platform's state read back shows it in force);
   the goal is p95 < 15 s, per alert and overall;
4. ``post_to_normal`` / ``fault_to_normal``: to the platform's figure back to normal (:class:`Normal`: read on the
   double's ``/metrics`` where the procedure has a figure of its own, else the alert rule's expression empty in
   Prometheus).

After each run the fault is cleared and the double reset to its seeded baseline (``/_sandbox/reset``: faults,
models, weights, breakers, keys, blocks, throttles, strategies). The runs go round by round (run 1 of every
procedure, then run 2, ...), and a procedure's next run starts only once its previous incident is resolved at the
gateway (Alertmanager sent the resolution: the alert is inactive) and no flow, triage or resolution run is going
on: each run starts from a quiet platform, opens a new incident (a new idempotency scope) and is independent of the
one before, while the slow resolutions (ApiKeyLeak's 5-minute address window) overlap other procedures' runs. The
temporary actions' records stay in Redis until their expiry (an hour and more): the reset, not the expiry, restores
the baseline here. ``--budget-min`` stops starting runs after that long (a cut is reported per procedure).

For each alert, the seed's manual procedure (``MANUAL_COMMANDS``: its commands in
``operational-runbooks.md``'s section, one minute each) against the automated fault → normal, as a ratio.
A procedure whose fault, rule or route to its flow is not in the tree is reported as such, never faked.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks import private

PROJECT = Path(__file__).resolve().parent.parent
SEED = PROJECT.parent / "shared" / "seed" / "operational-runbooks.md"
GOAL_POST_TO_APPLIED_S = 15.0
#: the sandbox's components the catalogue needs (all of ``runbooks sandbox up`` but the disaster-recovery target)
SERVICES = [
    "postgres",
    "redis",
    "s3",
    "platform",
    "receivers",
    "kubernetes",
    "cert-manager",
    "ingress",
    "prefect",
    "gateway",
    "alertmanager",
    "prometheus",
    "worker",
]

# ------------------------------------------------------------------------------------------- the seed's manual work
#: the seed's section of each procedure (``operational-runbooks.md``) and its manual commands: every kubectl/curl
#: invocation of the section's script (a command continued over several lines counts once; variable assignments and
#: comments do not count). One minute each is the engineer's time, reading and typing included.
MANUAL_COMMANDS: dict[str, tuple[str, int]] = {
    "security-unauthorized-access": ("Unauthorized Access Attempts", 5),
    "security-key-compromise": ("API Key Compromise", 4),
    "security-suspicious-usage": ("Suspicious AI Usage Patterns", 5),
    "lb-rebalance": ("Imbalanced Load Distribution", 5),
    "circuit-breakers": ("Circuit Breaker Issues", 5),
    "model-unavailable": ("Model Unavailability", 6),
    "model-latency": ("High Latency from Specific Provider", 5),
    "cost-optimization": ("Cost Optimization Issues", 4),
}


def seed_command_counts(text: str) -> dict[str, int]:
    """Commands per ``###``/``####`` section of the seed: the lines of its ``bash`` blocks that start a command
    (not a comment, a continuation, a JSON body or a variable assignment)."""
    counts: dict[str, int] = {}
    section, in_code, continued = "", False, False
    for line in text.splitlines():
        if not in_code and (m := re.match(r"^#{3,4}\s+(.*\S)\s*$", line)):
            section = m.group(1)
            counts.setdefault(section, 0)
            continue
        if line.startswith("```"):
            in_code, continued = line.strip() == "```bash", False
            continue
        if not in_code or not section:
            continue
        stripped = line.strip()
        starts = not continued and re.match(r"^(kubectl|curl|psql|redis-cli|aws|pg_dump|helm|\./)\b", stripped)
        if starts:
            counts[section] += 1
        continued = stripped.endswith("\\") or (continued and not stripped.endswith(("'", "}'")) and bool(stripped))
    return counts


# ------------------------------------------------------------------------------------------------ the procedures
@dataclass(frozen=True)
class Normal:
    """How to read "back to normal": a predicate on two scrapes of the double's ``/metrics`` ``window_s`` apart
    (``check``), else (``check`` None) the alert rule's expression empty in Prometheus."""

    what: str
    check: Callable[[dict[str, float], dict[str, float]], bool | None] | None = None
    window_s: float = 3.0


def _sample(metrics: dict[str, float], name: str, **labels: str) -> float | None:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    return metrics.get(key)


def _family(metrics: dict[str, float], name: str) -> list[float]:
    return [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]


def _no_new_unauthorized(before: dict[str, float], after: dict[str, float]) -> bool | None:
    name = "ai_security_unauthorized_events_total"
    a, b = _sample(before, name), _sample(after, name)
    return None if a is None or b is None else b <= a


def _mean_latency_under(model: str, limit_s: float) -> Callable[[dict[str, float], dict[str, float]], bool | None]:
    def check(before: dict[str, float], after: dict[str, float]) -> bool | None:
        sums = [_sample(m, "http_response_time_seconds_sum", model=model) for m in (before, after)]
        counts = [_sample(m, "http_response_time_seconds_count", model=model) for m in (before, after)]
        if None in sums or None in counts or counts[1] - counts[0] <= 0:  # type: ignore[operator]
            return None  # no traffic to the model in the window: cannot tell yet
        return (sums[1] - sums[0]) / (counts[1] - counts[0]) < limit_s  # type: ignore[operator]

    return check


def _error_rate_under(limit: float) -> Callable[[dict[str, float], dict[str, float]], bool | None]:
    def check(_: dict[str, float], after: dict[str, float]) -> bool | None:
        value = _sample(after, "error_rate")
        return None if value is None else value < limit

    return check


def _no_breaker_open(_: dict[str, float], after: dict[str, float]) -> bool | None:
    values = _family(after, "ai_circuit_breaker_open")
    return None if not values else max(values) == 0


def _max_share_at_most(limit: float) -> Callable[[dict[str, float], dict[str, float]], bool | None]:
    def check(_: dict[str, float], after: dict[str, float]) -> bool | None:
        values = _family(after, "ai_lb_model_share")
        return None if not values else max(values) <= limit

    return check


def _busy_keys_quiet(min_addresses: float) -> Callable[[dict[str, float], dict[str, float]], bool | None]:
    """Every key served from more than ``min_addresses`` addresses (a leaked one) serves no request any more."""

    def check(before: dict[str, float], after: dict[str, float]) -> bool | None:
        leaked = [
            k.removeprefix("ai_api_key_source_addresses")
            for k, v in after.items()
            if k.startswith("ai_api_key_source_addresses{") and v > min_addresses
        ]
        name = "ai_api_key_requests_total"
        return all(after.get(name + k, 0.0) - before.get(name + k, 0.0) < 1 for k in leaked)

    return check


def _users_under(per_s: float) -> Callable[[dict[str, float], dict[str, float]], bool | None]:
    """Every user's requests (all their keys) over the window at most ``per_s`` a second."""

    def check(before: dict[str, float], after: dict[str, float]) -> bool | None:
        users: dict[str, float] = {}
        for k, v in after.items():
            if k.startswith("ai_api_key_requests_total{") and (m := re.search(r'user_id="([^"]*)"', k)):
                users[m.group(1)] = users.get(m.group(1), 0.0) + v - before.get(k, v)
        return None if not users else max(users.values()) <= per_s * NORMAL_WINDOW_LONG_S

    return check


def _cost_per_request_under(limit: float) -> Callable[[dict[str, float], dict[str, float]], bool | None]:
    def check(before: dict[str, float], after: dict[str, float]) -> bool | None:
        cost = sum(_family(after, "ai_cost_usd_total")) - sum(_family(before, "ai_cost_usd_total"))
        requests = sum(_family(after, "http_requests_total")) - sum(_family(before, "http_requests_total"))
        return None if requests <= 0 else cost / requests <= limit

    return check


NORMAL_WINDOW_LONG_S = 8.0


@dataclass(frozen=True)
class Procedure:
    flow: str  # the catalogue flow (its deployment's name)
    fault: str  # sandbox/faults.py's name, as `runbooks sandbox fault NAME`
    alert: str  # alerting/rules/*.yml
    normal: Normal
    #: why a run cannot wait for the previous run's incident to resolve, and how it stays independent anyway
    new_subject_each_run: str = ""


#: fault → alert → flow → how "normal" is read ("applied": the incident's run's ``runbooks.action.applied`` events).
#: Thresholds are the catalogue policy's and the rules' (tasks/catalogue/policy.yaml, alerting/rules/catalogue.yml).
PROCEDURES: tuple[Procedure, ...] = (
    Procedure(
        "security-unauthorized-access",
        "unauthorized-access",
        "UnauthorizedAccessSpike",
        Normal("no new unauthorized event in 3 s (ai_security_unauthorized_events_total)", _no_new_unauthorized),
    ),
    Procedure(
        "security-key-compromise",
        "leaked-key",
        "ApiKeyLeak",
        Normal(
            "no request in 6 s on a key served from > 10 addresses (ai_api_key_requests_total)",
            _busy_keys_quiet(10),
            6.0,
        ),
    ),
    Procedure(
        "security-suspicious-usage",
        "suspicious-usage",
        "SuspiciousUsage",
        Normal(
            "every user at most 15 requests a minute over 8 s (ai_api_key_requests_total; the throttle's 10)",
            _users_under(0.25),
            NORMAL_WINDOW_LONG_S,
        ),
        new_subject_each_run="SuspiciousUsage sums 24 h of a user's requests, so the previous run's alert stays "
        "firing after the reset; each run spikes another user (the n-th quietest), whose alert is a new incident "
        "(the gateway keys incidents by their labels)",
    ),
    Procedure(
        "lb-rebalance",
        "load-imbalance",
        "LoadImbalance",
        Normal("every model's ai_lb_model_share <= 0.5 (the policy's max_share)", _max_share_at_most(0.5)),
    ),
    Procedure(
        "circuit-breakers",
        "breaker-open",
        "CircuitBreakerOpen",
        Normal("no ai_circuit_breaker_open == 1", _no_breaker_open),
    ),
    Procedure(
        "model-unavailable",
        "model-down",
        "ModelDown",
        Normal("the platform's error_rate < 5% (its traffic off the down model)", _error_rate_under(0.05)),
    ),
    Procedure(
        "model-latency",
        "slow-model",
        "ProviderHighLatency",
        Normal("qwen's mean response time over 3 s < 5 s (the policy's p95_ms)", _mean_latency_under("qwen", 5.0)),
    ),
    Procedure(
        "cost-optimization",
        "cost-spike",
        "CostBudgetExceeded",
        Normal(
            "USD per request over 5 s <= 0.025 (ai_cost_usd_total / http_requests_total; the policy's budget)",
            _cost_per_request_under(0.025),
            5.0,
        ),
    ),
)


def rules() -> dict[str, str]:
    """Alert name → its expression, from the product's rules (alerting/rules/*.yml)."""
    out: dict[str, str] = {}
    for path in sorted((PROJECT / "alerting" / "rules").glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    out[rule["alert"]] = str(rule["expr"])
    return out


def routes() -> dict[str, set[str]]:
    """Deployment name → the alert names its triggers match (prefect.yaml's ``runbooks.alert.name``)."""
    out: dict[str, set[str]] = {}
    for d in (yaml.safe_load((PROJECT / "prefect.yaml").read_text()) or {}).get("deployments", []):
        for trigger in d.get("triggers") or []:
            name = (trigger.get("match") or {}).get("runbooks.alert.name")
            if trigger.get("enabled", True) and name:
                out.setdefault(d["name"], set()).update([name] if isinstance(name, str) else name)
    return out


def missing(p: Procedure, faults: Sequence[str], alerts: dict[str, str], routed: dict[str, set[str]]) -> str | None:
    """What the tree lacks for ``p`` to run end to end, or None."""
    lacks = []
    if p.fault not in faults:
        lacks.append(f"no fault {p.fault!r} in sandbox/faults.py")
    if p.alert not in alerts:
        lacks.append(f"no rule {p.alert} in alerting/rules/")
    if p.alert not in routed.get(p.flow, set()):
        lacks.append(f"{p.alert} not routed to {p.flow} in prefect.yaml")
    return "; ".join(lacks) or None


# --------------------------------------------------------------------------------------------------- the figures
def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank on the sorted values, as the other benchmarks); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{'name{a="x",b="y"}': value}`` (labels sorted, so lookups are stable)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        name, labels, value = m.groups()
        if labels:
            pairs = sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
            name += "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _r(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 2)


@dataclass
class Runs:
    procedure: Procedure
    status: str = "measured"  # or "missing: ..." / "failed: ..."
    fault_to_post: list[float] = field(default_factory=list)
    post_to_run_created: list[float] = field(default_factory=list)
    created_to_started: list[float] = field(default_factory=list)
    started_to_first_action: list[float] = field(default_factory=list)
    post_to_first_action: list[float] = field(default_factory=list)
    post_to_applied: list[float] = field(default_factory=list)
    post_to_normal: list[float] = field(default_factory=list)
    fault_to_normal: list[float] = field(default_factory=list)
    verified: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        section, commands = MANUAL_COMMANDS[self.procedure.flow]
        out: dict[str, Any] = {
            "fault": self.procedure.fault,
            "alert": self.procedure.alert,
            "status": self.status,
            "runs": len(self.post_to_applied),
            "seed_section": section,
            "manual_commands": commands,
            "manual_s": commands * 60,
        }
        for name in (
            "fault_to_post",
            "post_to_run_created",
            "created_to_started",
            "started_to_first_action",
            "post_to_first_action",
            "post_to_applied",
            "post_to_normal",
            "fault_to_normal",
        ):
            values = getattr(self, name)
            out[f"{name}_p50_s"] = _r(pct(values, 0.5))
            out[f"{name}_p95_s"] = _r(pct(values, 0.95))
        p95 = out["post_to_applied_p95_s"]
        out["goal_met"] = p95 is not None and p95 < GOAL_POST_TO_APPLIED_S if self.post_to_applied else None
        auto = out["fault_to_normal_p50_s"]
        out["manual_over_automated"] = round(commands * 60 / auto, 1) if auto else None
        out["verified_on_platform"] = f"{sum(self.verified)}/{len(self.verified)}" if self.verified else None
        if self.errors:
            out["errors"] = self.errors
        return out


# ------------------------------------------------------------------------------------------ the private sandbox
class PrivateSandbox:
    """``runbooks sandbox up``'s components (:data:`SERVICES`) from a temporary home, on free ports, environment
    ``sandbox`` (its own Prefect server: the name collides with nothing); see :mod:`benchmarks.private`."""

    def __init__(self, services: Sequence[str] = tuple(SERVICES)) -> None:
        from sandbox.manager import Sandbox

        self.settings = private.private_settings("rb-bench-catalogue-", startup_timeout_s=180.0)
        self.box = Sandbox(self.settings)
        self.services = list(services)

    def up(self) -> None:
        private.up(self.box, self.services)

    def down(self) -> None:
        private.destroy(self.box, self.services)


# ------------------------------------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, sandbox: PrivateSandbox, timeout_s: float, quiet_timeout_s: float) -> None:
        s = sandbox.settings
        secrets = sandbox.box.state.secrets()
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.quiet_timeout_s = quiet_timeout_s
        self.platform = httpx.Client(
            base_url=s.url(s.platform_port), headers={"Authorization": f"Bearer {secrets['platform_admin_token']}"}
        )
        self.gateway = httpx.Client(
            base_url=s.url(s.gateway_port), headers={"Authorization": f"Bearer {secrets['gateway_token']}"}
        )
        self.prometheus = httpx.Client(base_url=s.url(s.prometheus_port))
        self.prefect = httpx.Client(base_url=s.prefect_api_url)
        self.alerts = rules()

    def close(self) -> None:
        for client in (self.platform, self.gateway, self.prometheus, self.prefect):
            client.close()

    # ---- reads
    def metrics(self) -> dict[str, float]:
        response = self.platform.get("/metrics", timeout=10)
        response.raise_for_status()
        return parse_metrics(response.text)

    def incident(self, alert: str, since: float) -> dict[str, Any] | None:
        for incident in self.gateway.get("/incidents", timeout=10).json():
            if incident["name"] == alert and incident["opened_at"] >= since:
                return dict(incident)
        return None

    def flow_run(self, flow: str, incident_id: str) -> dict[str, Any] | None:
        """The run of ``flow`` that the incident's event started (its ``incident`` parameter)."""
        body = {"flows": {"name": {"any_": [flow]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 20}
        for r in self.prefect.post("/flow_runs/filter", json=body, timeout=10).json():
            if r["parameters"].get("incident") == incident_id:
                return dict(r)
        return None

    def verified(self, flow: str, run_id: str) -> list[bool]:
        """Per applied action of the run that the platform can read back, whether the flow's read-back showed it in
        force (the ``verified`` column of its ``<flow>-sandbox-actions`` table; empty where the platform has no read
        for the action, e.g. a cost alert: those are left out, not counted as failures)."""
        body = {
            "artifacts": {"key": {"any_": [f"{flow}-sandbox-actions"]}, "flow_run_id": {"any_": [run_id]}},
            "limit": 5,
        }
        out: list[bool] = []
        for artifact in self.prefect.post("/artifacts/filter", json=body, timeout=10).json():
            data = artifact.get("data")
            rows = json.loads(data) if isinstance(data, str) else data or []
            out += [
                str(row.get("verified")) == "True"
                for row in rows
                if row.get("outcome") == "applied" and str(row.get("verified", "")) not in ("", "None")
            ]
        return out

    def run_over(self, run_id: str) -> bool:
        state = self.prefect.get(f"/flow_runs/{run_id}", timeout=10).json().get("state") or {}
        return state.get("type") in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")

    def applied_events(self, flow: str, since: float, run_id: str) -> list[dict[str, Any]]:
        """The ``runbooks.action.applied`` events of ``flow``'s run ``run_id`` (the record's ``run``) that occurred
        at or after ``since``, oldest first."""
        from datetime import UTC, datetime

        body = {
            "filter": {
                "occurred": {"since": datetime.fromtimestamp(since - 1, UTC).isoformat()},
                "event": {"name": ["runbooks.action.applied"]},
                "order": "ASC",
            },
            "limit": 50,
        }
        response = self.prefect.post("/events/filter", json=body, timeout=10)
        response.raise_for_status()
        events = [
            e
            for e in response.json().get("events", [])
            if e["resource"].get("runbooks.runbook") == flow
            and (e.get("payload") or {}).get("run") == run_id
            and datetime.fromisoformat(e["occurred"]).timestamp() >= since
        ]
        return sorted(events, key=lambda e: datetime.fromisoformat(e["occurred"]).timestamp())

    def alert_active(self, alert: str) -> bool:
        alerts = self.prometheus.get("/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return any(a["labels"].get("alertname") == alert for a in alerts)

    def expression_empty(self, alert: str) -> bool:
        response = self.prometheus.get("/api/v1/query", params={"query": self.alerts[alert]}, timeout=10)
        response.raise_for_status()
        return not response.json()["data"]["result"]

    def is_normal(self, normal: Normal, alert: str) -> bool:
        if normal.check is None:
            return self.expression_empty(alert)
        before = self.metrics()
        time.sleep(normal.window_s)
        return bool(normal.check(before, self.metrics()))

    def runs_active(self, *flows: str) -> bool:
        body = {
            "flows": {"name": {"any_": list(flows)}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]}}},
            "limit": 5,
        }
        runs = self.prefect.post("/flow_runs/filter", json=body, timeout=10).json()
        now = time.time()
        from datetime import datetime

        # a scheduled run in the future (a cron deployment's next one) is not activity
        return any(
            r["state"]["type"] != "SCHEDULED" or datetime.fromisoformat(r["expected_start_time"]).timestamp() <= now + 1
            for r in runs
        )

    # ---- actions
    def inject(self, fault: str) -> None:
        from sandbox import faults

        print("   " + faults.inject(fault, self.sandbox.settings, self.sandbox.box.state), flush=True)

    def inject_for_new_user(self, n: int) -> None:
        """The suspicious-usage fault on the ``n + 1``-th quietest user: after the double's reset the quietest is the
        same user again, whose 24 h alert still fires (no new incident); the fault's switch takes any user."""
        users = self.platform.get("/api/v1/analytics/top-users", params={"hours": 24}, timeout=10).json()["users"]
        user = str(users[-(n % len(users)) - 1]["user_id"])
        self.platform.put("/_sandbox/faults", json={"spiking_user_id": user}, timeout=10).raise_for_status()
        print(f"   fault suspicious-usage on {user} (run {n}: the {n + 1}. quietest user)", flush=True)

    def reset(self) -> None:
        """Clear the fault and reset the double to its seeded baseline."""
        from sandbox import faults

        faults.inject("clear", self.sandbox.settings, self.sandbox.box.state)
        self.platform.post("/_sandbox/reset", timeout=10).raise_for_status()

    def quiet(self, flow: str, incident_id: str | None) -> None:
        """Wait for the incident resolved at the gateway (its alert inactive: Alertmanager sent the resolution) and
        no run of the flow, the triage or the resolution going on."""
        deadline = time.monotonic() + self.quiet_timeout_s
        while time.monotonic() < deadline:
            resolved = incident_id is None or all(
                i["status"] != "open"
                for i in self.gateway.get("/incidents", timeout=10).json()
                if i["incident_id"] == incident_id
            )
            if resolved and not self.runs_active(flow, "incident-triage", "incident-resolved"):
                return
            time.sleep(1)
        raise TimeoutError(f"incident {incident_id} not resolved within {self.quiet_timeout_s:.0f}s of the reset")

    def wait(self, what: str, probe: Callable[[], Any], poll_s: float = 0.25) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if (found := probe()) is not None and found is not False:
                return found
            time.sleep(poll_s)
        raise TimeoutError(f"{what}: nothing within {self.timeout_s:.0f}s")

    def one(self, p: Procedure, runs: Runs, n: int, previous: str | None) -> str | None:
        """One run, once the previous run's incident (``previous``) is resolved; the run's incident id."""
        incident_id: str | None = None
        try:
            self.quiet(p.flow, None if p.new_subject_each_run else previous)
            if p.new_subject_each_run:
                self.inject_for_new_user(n)
            else:
                self.inject(p.fault)
            t0 = time.time()
            incident = self.wait(f"{p.alert}'s POST at the gateway", lambda: self.incident(p.alert, t0), 0.2)
            incident_id, posted = incident["incident_id"], float(incident["opened_at"])
            from datetime import datetime

            run_id = str(self.wait(f"{p.flow}'s run", lambda: self.flow_run(p.flow, str(incident_id)), 0.5)["id"])
            self.wait(f"{p.flow}'s first action applied", lambda: self.applied_events(p.flow, posted, run_id) or None)
            self.wait(f"{p.flow}: back to normal ({p.normal.what})", lambda: self.is_normal(p.normal, p.alert) or None)
            normal = time.time()
            # the mitigation is applied when the run's last action is: wait for the run to end, then read them all
            self.wait(f"{p.flow}'s run over", lambda: self.run_over(run_id) or None, 0.5)
            events = self.applied_events(p.flow, posted, run_id)
            first, done = (datetime.fromisoformat(events[i]["occurred"]).timestamp() for i in (0, -1))
            runs.fault_to_post.append(posted - t0)
            runs.post_to_first_action.append(first - posted)
            runs.post_to_applied.append(done - posted)
            runs.post_to_normal.append(normal - posted)
            runs.fault_to_normal.append(normal - t0)
            verified = self.verified(p.flow, run_id)
            runs.verified.append(all(verified))  # no readable action: nothing contradicts the platform's figures
            # where POST → first action goes: the trigger's run, the worker starting it, the flow's own work
            flow_run = self.prefect.get(f"/flow_runs/{run_id}", timeout=10).json()
            created, started = (
                datetime.fromisoformat(flow_run[k]).timestamp() if flow_run.get(k) else None
                for k in ("created", "start_time")
            )
            if created is not None:
                runs.post_to_run_created.append(created - posted)
                if started is not None:
                    runs.created_to_started.append(started - created)
                    runs.started_to_first_action.append(first - started)
            kinds = ", ".join(str(e.get("payload", {}).get("kind", "?")) for e in events)
            print(
                f"   run {n}: fault→POST {posted - t0:.1f} s, POST→first action {first - posted:.1f} s, "
                f"POST→all applied ({kinds}) {done - posted:.1f} s, POST→normal {normal - posted:.1f} s "
                f"(incident {incident_id}; run created +{(created or posted) - posted:.1f} s, started "
                f"+{(started or posted) - posted:.1f} s; verified on the platform {verified})",
                flush=True,
            )
        except (TimeoutError, httpx.HTTPError) as err:
            runs.errors.append(f"run {n}: {err}")
            print(f"   run {n}: {err}", flush=True)
        finally:
            self.reset()
        return incident_id


def check_seed_counts() -> list[str]:
    """Differences between :data:`MANUAL_COMMANDS` and the seed's sections (when the seed is there)."""
    if not SEED.exists():
        return [f"seed not found at {SEED}: manual counts not checked"]
    counted = seed_command_counts(SEED.read_text())
    return [
        f"{section}: table says {n}, the seed has {counted.get(section)}"
        for section, n in MANUAL_COMMANDS.values()
        if counted.get(section) != n
    ]


def report(results: list[Runs]) -> dict[str, Any]:
    per = {r.procedure.flow: r.figures() for r in results}
    measured = [r for r in results if r.post_to_applied]
    every = [v for r in measured for v in r.post_to_applied]
    overall = pct(every, 0.95)
    goals_met = bool(measured) and all(per[r.procedure.flow]["goal_met"] for r in measured)
    header = (
        f"{'flow':30} {'alert':24} {'runs':>4} {'fault→POST':>11} {'POST→1st':>11} {'POST→applied':>13} "
        f"{'POST→normal':>12} "
        f"{'manual':>7} {'ratio':>6}  status"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for flow, f in per.items():

        def both(name: str, f: dict[str, Any] = f) -> str:
            p50, p95 = f[f"{name}_p50_s"], f[f"{name}_p95_s"]
            return "-" if p50 is None else f"{p50:.1f}/{p95:.1f}"

        ratio = f"{f['manual_over_automated']:.1f}x" if f["manual_over_automated"] else "-"
        print(
            f"{flow:30} {f['alert']:24} {f['runs']:>4} {both('fault_to_post'):>11} "
            f"{both('post_to_first_action'):>11} {both('post_to_applied'):>13} "
            f"{both('post_to_normal'):>12} {f['manual_commands']:>4} min {ratio:>6}  {f['status']}"
        )
    print(
        "(p50/p95 in seconds; POST→1st: to the first action applied, POST→applied: to the last; manual: the seed's "
        "commands at a minute each; ratio: manual / automated fault→normal)"
    )
    for flow, f in per.items():
        if f["runs"]:
            print(
                f"  {flow}: POST→run created {f['post_to_run_created_p50_s']} s, created→started "
                f"{f['created_to_started_p50_s']} s, started→1st action {f['started_to_first_action_p50_s']} s (p50); "
                f"verified on the platform {f['verified_on_platform']}"
            )
    print(f"goal: p95 POST→applied < {GOAL_POST_TO_APPLIED_S:.0f} s per alert and overall: overall p95 {overall:.2f} s")
    load = os.getloadavg()
    return {
        "goal_post_to_applied_p95_s": GOAL_POST_TO_APPLIED_S,
        "post_to_applied_p95_s": _r(overall),
        "post_to_applied_p50_s": _r(pct(every, 0.5)),
        "goals_met": goals_met and overall < GOAL_POST_TO_APPLIED_S,
        "measured": len(measured),
        "procedures": per,
        "load_avg": [round(x, 2) for x in load],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sandbox.faults import FAULTS

    only = set(args.only.split(",")) if args.only else None
    chosen = [p for p in PROCEDURES if only is None or p.flow in only or p.fault in only or p.alert in only]
    if only is not None and not chosen:
        raise SystemExit(f"--only {args.only}: none of {', '.join(p.flow for p in PROCEDURES)}")
    for diff in check_seed_counts():
        print(f"manual count: {diff}", flush=True)
    alerts, routed = rules(), routes()
    results = []
    for p in chosen:
        runs = Runs(p)
        if (lacks := missing(p, list(FAULTS), alerts, routed)) is not None:
            runs.status = f"no fault/rule yet: {lacks}"
        results.append(runs)
    todo = [r for r in results if r.status == "measured"]
    if todo:
        skipped = {"kubernetes", "cert-manager", "ingress"} if args.without_kubernetes else set()
        sandbox = PrivateSandbox([s for s in SERVICES if s not in skipped])
        print(f"bringing up a private sandbox under {sandbox.settings.home} ...", flush=True)
        try:
            started = time.perf_counter()
            sandbox.up()
            print(f"sandbox up in {time.perf_counter() - started:.0f} s", flush=True)
            bench = Bench(sandbox, args.timeout, args.quiet_timeout)
            end = time.monotonic() + args.budget_min * 60 if args.budget_min else None
            if args.stop_at:  # HH:MM UTC today
                from datetime import UTC, datetime

                hour, minute = (int(x) for x in args.stop_at.split(":"))
                stop = datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
                left = time.monotonic() + stop - time.time()
                end = left if end is None else min(end, left)
            try:
                bench.reset()
                # round by round (run 1 of every procedure, then run 2...): a run's incident resolves while the others
                # run, and a budget cut leaves each procedure measured
                previous: dict[str, str | None] = {r.procedure.flow: None for r in todo}
                for n in range(args.runs):
                    for r in todo:
                        p = r.procedure
                        if end is not None and time.monotonic() > end:
                            r.errors.append(f"run {n}: not started, the budget (--budget-min/--stop-at) spent")
                            continue
                        print(f"{p.flow}, run {n}: fault {p.fault} → {p.alert}", flush=True)
                        previous[p.flow] = bench.one(p, r, n, previous[p.flow])
            finally:
                bench.close()
            for r in todo:
                if not r.post_to_applied:
                    r.status = "failed: " + "; ".join(r.errors)[:300]
                elif len(r.post_to_applied) < args.runs:
                    r.status = f"measured {len(r.post_to_applied)}/{args.runs}"
        finally:
            print("stopping the private sandbox ...", flush=True)
            sandbox.down()
    return report(results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per procedure (p50/p95 over them)")
    parser.add_argument("--only", help="comma-separated flows, faults or alerts (default: all eight)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each wait of a run")
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=480.0,
        help="seconds for a run's incident to resolve after the reset (ApiKeyLeak's window is 5 minutes)",
    )
    parser.add_argument("--budget-min", type=float, help="start no run after this many minutes of measuring")
    parser.add_argument("--stop-at", help="start no run after this time (HH:MM, UTC)")
    parser.add_argument(
        "--without-kubernetes",
        action="store_true",
        help="no Kubernetes control plane (the flows' log reads then fail as findings): a quick look only",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    result = run(args)
    if args.without_kubernetes:
        result["without_kubernetes"] = True
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
