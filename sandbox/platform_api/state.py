"""In-process state of the sandbox platform: the fleet, the injected faults, and everything derived from them.

Deterministic given the seed and the clock: random draws happen in ``reset`` and when keys or leak events are
made, and whatever moves with time (traffic counters, periodic health checks, breaker and fallback expiry,
memory growth) is moved by ``advance()``, which the app calls once per request. Times are epoch seconds;
pydantic turns them into UTC datetimes in the responses.
"""

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.platform_api import models as m
from sandbox.platform_api.fleet import FLEET, ModelSpec
from sandbox.releases import release_effect

Clock = Callable[[], float]

VERSION = "2.4.1-sandbox"
HISTORY_S = 86_400.0  # traffic already counted when the sandbox starts
CHECK_INTERVAL_S = 10.0  # the platform's periodic health checks of each model
DEGRADED_ERROR_RATE, DEGRADED_LATENCY_MS = 0.05, 3_000.0
HOME_REGION, SLOW_REGION_MS = "us-east-1", 6_000.0  # the slow_models fault: the provider's endpoint in HOME_REGION
QUANTILES = {"0.5": 0.9, "0.95": 1.8, "0.99": 2.6}  # latency quantiles as multiples of the mean
# The latency distribution behind both: a piecewise-linear CDF through the quantiles above (multiple of the mean,
# share of requests at or under it). The histogram's buckets are filled from it as traffic accumulates, so
# histogram_quantile over a rate() window follows a latency fault within a scrape or two.
LATENCY_CDF = ((0.0, 0.0), (0.9, 0.5), (1.8, 0.95), (2.6, 0.99), (4.0, 1.0))
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)  # 1.5 and 3 s: the thresholds
STATUS_CLASSES = ("2xx", "4xx", "5xx")
CLIENT_ERROR_SHARE = 0.02  # 4xx share of the requests that did not fail with a 5xx
LEAK_PER_HOUR, LEAK_HISTORY_S, LEAK_IPS = 2_400.0, 6 * 3_600.0, 40
SPIKE_PER_HOUR, SPIKE_HISTORY_S = 3_000.0, 3_600.0  # the spiking_user_id fault: on top of the user's own traffic
COST_SPIKE_FACTOR = 3.0  # the expensive_models fault: a request costs this many times the model's price
STUCK_BREAKER_S = 7 * 86_400.0  # the stuck_breakers fault: how long a stuck breaker would stay OPEN by itself
ADDRESS_WINDOW_S = 300.0  # ai_api_key_source_addresses: distinct addresses served with the key over this window
MIB, BASE_RSS_MB, BASE_HEAP_MB = 2**20, 900.0, 380.0
WINDOW_UNITS = {"m": 60, "h": 3_600, "d": 86_400}
ALERT_PERIODS = {"hourly": "1h", "daily": "24h", "weekly": "7d", "monthly": "30d"}
CHECK_OF: dict[m.ModelStatus, m.CheckStatus] = {
    "active": "ok",
    "degraded": "degraded",
    "down": "down",
    "disabled": "down",
}
COMPONENT_OF: dict[str, m.ComponentStatus] = {
    "ok": "operational",
    "active": "operational",
    "degraded": "degraded_performance",
    "down": "major_outage",
    "disabled": "under_maintenance",
}
DESCRIPTIONS: dict[m.Indicator, str] = {
    "none": "All Systems Operational",
    "minor": "Minor Service Outage",
    "major": "Partial System Outage",
    "critical": "Major System Outage",
}


class NotFound(LookupError):
    """An unknown model, provider, API key or user named in the path (HTTP 404)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")


class InvalidInput(ValueError):
    """A body field that is well-formed but names something unusable (HTTP 422)."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def window_seconds(window: str) -> int:
    return int(window[:-1]) * WINDOW_UNITS[window[-1]]


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def latency_share(bound_s: float, mean_ms: float) -> float:
    """Share of requests answered within ``bound_s`` when the mean response time is ``mean_ms`` (LATENCY_CDF)."""
    if mean_ms <= 0:
        return 1.0
    x = bound_s * 1000 / mean_ms
    for (x0, y0), (x1, y1) in zip(LATENCY_CDF, LATENCY_CDF[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return 1.0


def _aggregate(statuses: list[m.ModelStatus]) -> m.ModelStatus:
    live = [s for s in statuses if s != "disabled"]
    if not live:
        return "disabled"
    return "down" if all(s == "down" for s in live) else "active" if all(s == "active" for s in live) else "degraded"


@dataclass
class Model:
    spec: ModelSpec
    base_latency_ms: float
    base_error_rate: float
    weight: float
    last_check: float
    enabled: bool = True
    timeout_ms: int = 30_000
    retry_attempts: int = 3
    region: str = HOME_REGION
    fallback: str | None = None
    fallback_until: float = 0.0
    breaker: m.BreakerState = "CLOSED"
    failures: int = 0
    opened_at: float | None = None
    open_until: float | None = None
    requests: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0.0))
    # response-time histogram: cumulative counts per bound of LATENCY_BUCKETS_S (then +Inf = all), sum in seconds
    latency_buckets: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0
    lb_requests: float = 0.0  # since the last load-balancer stats reset
    cost_usd: float = 0.0  # spent on the model's requests (ai_cost_usd_total)

    def open_breaker(self, at: float, seconds: float) -> None:
        self.breaker, self.opened_at, self.open_until = "OPEN", at, at + seconds

    def close_breaker(self) -> None:
        self.breaker, self.failures, self.opened_at, self.open_until = "CLOSED", 0, None, None

    def expire_breaker(self, at: float) -> None:
        if self.breaker == "OPEN" and self.open_until is not None and at >= self.open_until:
            self.breaker = "HALF_OPEN"


@dataclass
class Key:
    id: str
    user_id: str
    name: str
    permissions: list[str]
    secret: str
    created_at: float
    per_hour: float  # normal traffic
    source_ips: int
    revoked_at: float | None = None
    requests_total: float = 0.0  # requests served with the key (ai_api_key_requests_total)

    def public(self) -> m.ApiKey:
        fields = ("id", "user_id", "name", "permissions", "created_at", "revoked_at")
        return m.ApiKey(prefix=self.secret[:11], **{f: getattr(self, f) for f in fields})


class PlatformState:
    def __init__(self, seed: int = 7, clock: Clock = time.time) -> None:
        self._seed, self._clock = seed, clock
        # what is deployed, observed (sandbox/platform_api/deployed.py), not injected: ``reset`` keeps it
        self.release = m.ReleaseStatus()
        self.reset()

    # ---- simulation ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial state for this seed: faults, models, keys, configs and logs."""
        rng = self._rng = random.Random(self._seed)
        self.now = self.started_at = self._clock()
        self.models = {
            s.name: Model(
                s, round(rng.uniform(200, 900), 1), round(rng.uniform(0.001, 0.012), 4), s.default_weight, self.now
            )
            for s in FLEET
        }
        self.rps = round(rng.uniform(40, 60), 2)
        self.algorithm: m.Algorithm = "weighted"
        self.breaker_config = m.CircuitBreakerConfig()
        self.faults, self.fault_since = m.Faults(), dict[str, float]()
        self.cost_strategy: m.CostStrategy | None = None
        self.blocked: dict[str, m.BlockedIp] = {}
        self.unauthorized_at = self.now  # traffic of the unauthorized_ips fault counted up to here
        self.throttles: dict[str, m.Throttle] = {}
        self.throttled_since: dict[str, float] = {}
        self.audit: list[m.AuditEvent] = []
        self.alerts = self.reports = 0
        self.lb_since, self.cpu_seconds = self.now - HISTORY_S, 0.0
        self.keys: dict[str, Key] = {}
        for user in range(1, 9):
            for _ in range(rng.randint(1, 2)):
                self._new_key(f"user-{user:03d}", "default", ["read", "ai_query"], per_hour=rng.uniform(3, 18))
        attackers = [f"203.0.113.{rng.randint(2, 254)}" for _ in range(3)]
        self.events = [
            m.SecurityEvent(
                type="unauthorized",
                source_ip=rng.choice(attackers),
                at=self.now - rng.uniform(0, 86_400),
                api_key_id=None,
                detail="invalid API key",
            )
            for _ in range(12)
        ]
        self._accumulate(HISTORY_S)

    def advance(self) -> None:
        """Move to the clock's now: traffic counters, periodic health checks, expiries."""
        now = max(self.now, self._clock())
        self._accumulate(now - self.now)
        self.now = now
        for x in self.models.values():
            due, start = int((now - x.last_check) // CHECK_INTERVAL_S), x.last_check
            for i in range(max(1, due - self.breaker_config.failure_threshold - 1), due + 1):  # the last few suffice
                self._check(x, start + i * CHECK_INTERVAL_S)
            x.expire_breaker(now)
            if x.fallback and now >= x.fallback_until:
                x.fallback = None

    def _accumulate(self, dt: float) -> None:
        if dt <= 0:
            return
        self._unauthorized_traffic()
        shares = self._shares()
        for name, x in self.models.items():
            served, err = self.rps * shares[name] * dt, self._error_rate(x)
            x.requests["5xx"] += served * err
            x.requests["4xx"] += served * (1 - err) * CLIENT_ERROR_SHARE
            x.requests["2xx"] += served * (1 - err) * (1 - CLIENT_ERROR_SHARE)
            latency_ms = self._latency(x)
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                x.latency_buckets[i] += served * latency_share(bound, latency_ms)
            x.latency_sum_s += served * latency_ms / 1000
            x.lb_requests += served
            x.cost_usd += served * self._cost_per_request(x)
        self._key_traffic(dt)
        self.cpu_seconds += self._cpu_ratio() * dt

    def _key_rate(self, key: Key) -> float:
        """Requests a second sent with ``key`` (its own, a leak's, a spike's); none once revoked."""
        if key.revoked_at is not None:
            return 0.0
        per_hour = key.per_hour + (LEAK_PER_HOUR if self.faults.leaked_key_id == key.id else 0.0)
        per_hour += SPIKE_PER_HOUR if self._spike_key() is key else 0.0
        return per_hour / 3_600

    def _spike_key(self) -> Key | None:
        """The key of the spiking_user_id fault's traffic: the user's first."""
        user = self.faults.spiking_user_id
        return next((k for k in self.keys.values() if k.user_id == user), None) if user else None

    def _key_traffic(self, dt: float) -> None:
        """Count the requests served per key; a throttle in force caps its user's at ``rate_limit`` a minute."""
        rates: dict[str, dict[str, float]] = {}
        for key in self.keys.values():
            rates.setdefault(key.user_id, {})[key.id] = self._key_rate(key)
        for user_id, per_key in rates.items():
            total, throttle = sum(per_key.values()), self.throttles.get(user_id)
            scale = 1.0
            if throttle is not None and throttle.until.timestamp() > self.now and total > 0:
                scale = min(1.0, throttle.rate_limit / 60 / total)
            for key_id, rate in per_key.items():
                self.keys[key_id].requests_total += rate * scale * dt

    def _unauthorized_traffic(self) -> None:
        """The unauthorized_ips fault: one unauthorized event per second from each address not blocked (at most
        600 per address per call); a blocked address is refused before it counts. A new fault starts with a
        minute of history."""
        start, end = self.unauthorized_at, self._clock()
        self.unauthorized_at = max(start, end)
        for ip in map(str, self.faults.unauthorized_ips):
            block = self.blocked.get(ip)
            first = int(start) + 1
            for sec in range(max(first, int(end) - 600), int(end) + 1):
                if block is not None and block.until.timestamp() > sec:
                    continue
                self.events.append(
                    m.SecurityEvent(
                        type="unauthorized", source_ip=ip, at=sec, api_key_id=None, detail="invalid API key"
                    )
                )

    def _check(self, x: Model, at: float) -> bool:
        """One health check of a model; consecutive failures open its circuit breaker."""
        x.last_check, ok = at, not self._down(x)
        if not x.enabled:
            return ok
        x.expire_breaker(at)
        if ok:
            x.failures = 0
            if x.breaker == "HALF_OPEN":
                x.close_breaker()
        else:
            x.failures += 1
            if x.breaker == "HALF_OPEN" or (
                x.breaker == "CLOSED" and x.failures >= self.breaker_config.failure_threshold
            ):
                x.open_breaker(at, self.breaker_config.retry_timeout / 1000)
        return ok

    def _audit(self, action: str, target: str, /, api_key_id: str | None = None, **detail: Any) -> None:
        event_id = f"aud-{len(self.audit) + 1:05d}"
        self.audit.append(
            m.AuditEvent(
                id=event_id,
                at=self.now,
                actor="admin",
                action=action,
                target=target,
                api_key_id=api_key_id,
                detail=detail,
            )
        )

    # ---- derived figures ----------------------------------------------------------------------------

    def _model(self, name: str) -> Model:
        if name not in self.models:
            raise NotFound("model", name)
        return self.models[name]

    def _cost_per_request(self, x: Model) -> float:
        factor = COST_SPIKE_FACTOR if x.spec.name in self.faults.expensive_models else 1.0
        return round(x.spec.cost_per_request * factor, 6)

    def _source_addresses(self, key: Key) -> int:
        """Distinct source addresses served with the key over the last ADDRESS_WINDOW_S (a revoked key: none once
        the window has passed its revocation)."""
        if key.revoked_at is not None and key.revoked_at <= self.now - ADDRESS_WINDOW_S:
            return 0
        return key.source_ips + (LEAK_IPS if self.faults.leaked_key_id == key.id else 0)

    def _down(self, x: Model) -> bool:
        return x.spec.name in self.faults.models_down

    def _error_rate(self, x: Model) -> float:
        if self._down(x):
            return 1.0
        return min(1.0, x.base_error_rate + self.faults.error_rate + self.release.error_rate)

    def _latency(self, x: Model) -> float:
        if self._down(x):
            return float(x.timeout_ms)
        slow = SLOW_REGION_MS if x.spec.name in self.faults.slow_models and x.region == HOME_REGION else 0.0
        return x.base_latency_ms + self.faults.latency_ms + self.release.latency_ms + slow

    def _status(self, x: Model) -> m.ModelStatus:
        if not x.enabled or self._down(x):
            return "disabled" if not x.enabled else "down"
        slow = self._latency(x) > DEGRADED_LATENCY_MS
        return "degraded" if slow or self._error_rate(x) > DEGRADED_ERROR_RATE else "active"

    def _error(self, x: Model) -> str | None:
        return {
            "active": None,
            "disabled": "disabled by operator",
            "down": f"{x.spec.provider} API unreachable: request timed out after {x.timeout_ms}ms",
            "degraded": f"error rate {self._error_rate(x):.1%}, latency {self._latency(x):.0f}ms",
        }[self._status(x)]

    def _info(self, x: Model) -> m.ModelInfo:
        return m.ModelInfo(
            name=x.spec.name,
            provider=x.spec.provider,
            status=self._status(x),
            last_check=x.last_check,
            error=self._error(x),
            response_time=round(self._latency(x), 1),
            error_rate=round(self._error_rate(x), 4),
        )

    def _shares(self) -> dict[str, float]:
        """Share of traffic per model, from algorithm, weights, breakers, fallbacks and the cost strategy."""
        routable = {n: x for n, x in self.models.items() if x.enabled and x.breaker != "OPEN"}
        strategy = self.cost_strategy
        if strategy and strategy.max_cost_per_request is not None:
            cap = strategy.max_cost_per_request
            routable = {n: x for n, x in routable.items() if self._cost_per_request(x) <= cap} or routable
        raw = {
            n: {"round_robin": 1.0, "weighted": x.weight}.get(self.algorithm, 1000 / self._latency(x))
            * (2.0 if strategy and n in strategy.prefer_models else 1.0)
            for n, x in routable.items()
        }
        for n, x in routable.items():  # an active fallback hands the model's traffic to its stand-in
            if x.fallback in raw:
                raw[x.fallback], raw[n] = raw[x.fallback] + raw[n], 0.0
        total = sum(raw.values())
        return {n: raw.get(n, 0.0) / total if total else 0.0 for n in self.models}

    def _traffic(self) -> tuple[dict[str, float], float, float]:
        """(shares, platform error rate, mean latency in ms), weighted by the current traffic."""
        shares = self._shares()
        err = sum(shares[n] * self._error_rate(x) for n, x in self.models.items())
        return shares, err, sum(shares[n] * self._latency(x) for n, x in self.models.items())

    def _cpu_ratio(self) -> float:
        return 0.35 + min(0.6, self.faults.latency_ms / 5_000 + self.faults.error_rate / 4)

    def _memory_growth_mb(self) -> float:
        since = self.fault_since.get("memory_growth_mb_per_min", self.now)
        return self.faults.memory_growth_mb_per_min * (self.now - since) / 60

    def _key(self, key_id: str) -> Key:
        if key_id not in self.keys:
            raise NotFound("api key", key_id)
        return self.keys[key_id]

    def _key_usage(self, key: Key, hours: int) -> tuple[float, float, int]:
        """(requests, errors, source IPs) of a key over the last ``hours``; a leaked key adds abuse traffic."""
        start, end = self.now - hours * 3_600, key.revoked_at if key.revoked_at is not None else self.now
        normal = key.per_hour * _overlap(start, self.now, key.created_at, end) / 3_600
        abuse = 0.0
        if self.faults.leaked_key_id == key.id:
            leak_start = self.fault_since["leaked_key_id"] - LEAK_HISTORY_S
            abuse = LEAK_PER_HOUR * _overlap(start, self.now, leak_start, end) / 3_600
        if self._spike_key() is key:  # a runaway client of the user's own: its addresses, its error rate
            spike_start = self.fault_since["spiking_user_id"] - SPIKE_HISTORY_S
            normal += SPIKE_PER_HOUR * _overlap(start, self.now, spike_start, end) / 3_600
        total = normal + abuse
        served = 1.0 - (self._throttled_away(key, start, total, hours) / total if total else 0.0)
        return total * served, (normal * 0.01 + abuse * 0.35) * served, key.source_ips + (LEAK_IPS if abuse else 0)

    def _throttled_away(self, key: Key, start: float, requests: float, hours: int) -> float:
        """Requests a throttle of the key's user refused: above ``rate_limit`` a minute while it was in force (the
        key's rate taken as its mean over the window)."""
        throttle, since = self.throttles.get(key.user_id), self.throttled_since.get(key.user_id)
        if throttle is None or since is None:
            return 0.0
        held = _overlap(start, self.now, since, throttle.until.timestamp())
        rate, cap = requests / (hours * 3_600), throttle.rate_limit / 60
        return max(0.0, rate - cap) * held

    def _new_key(self, user_id: str, name: str, permissions: list[str], per_hour: float = 0.0) -> Key:
        rng, history = self._rng, per_hour > 0  # seeded keys come with 30 days of traffic
        key = Key(
            id=f"key_{rng.getrandbits(48):012x}",
            user_id=user_id,
            name=name,
            permissions=permissions,
            secret=f"sk-sbx-{rng.getrandbits(160):040x}",
            created_at=self.now - 30 * 86_400 if history else self.now,
            per_hour=round(per_hour, 2),
            source_ips=rng.randint(1, 3) if history else 0,
        )
        self.keys[key.id] = key
        return key

    # ---- public reads -------------------------------------------------------------------------------

    def health(self) -> m.HealthResponse:
        _, err, _ = self._traffic()
        checks: dict[str, m.CheckStatus] = {
            "api": "down" if self.faults.service_down else "degraded" if err > DEGRADED_ERROR_RATE else "ok",
            "database": "ok",
            "redis": "ok",
            "models": CHECK_OF[_aggregate([self._status(x) for x in self.models.values()])],
            "memory": "degraded" if self._memory_growth_mb() > 1024 else "ok",
        }
        degraded = any(v != "ok" for v in checks.values())
        status = "unhealthy" if self.faults.service_down else "degraded" if degraded else "healthy"
        return m.HealthResponse(
            status=status, version=VERSION, uptime_s=round(self.now - self.started_at, 3), checks=checks
        )

    def metrics(self) -> str:
        """Prometheus text exposition, format 0.0.4."""
        _, err, latency = self._traffic()
        count = sum(sum(x.requests.values()) for x in self.models.values())
        rss, heap = (int((base + self._memory_growth_mb()) * MIB) for base in (BASE_RSS_MB, BASE_HEAP_MB))
        families: list[tuple[str, str, str, list[tuple[str, float]]]] = [
            (
                "http_requests_total",
                "counter",
                "AI requests served, by status class and model.",
                [
                    (f'{{status="{s}",model="{n}"}}', int(x.requests[s]))
                    for n, x in self.models.items()
                    for s in STATUS_CLASSES
                ],
            ),
            ("error_rate", "gauge", "Share of requests failing with a 5xx right now.", [("", round(err, 6))]),
            (
                "http_response_time_seconds",
                "histogram",
                "Response time of AI requests, by model.",
                [
                    (f'_bucket{{model="{n}",le="{b}"}}', int(c))
                    for n, x in self.models.items()
                    for b, c in zip(LATENCY_BUCKETS_S, x.latency_buckets, strict=True)
                ]
                + [
                    sample
                    for n, x in self.models.items()
                    for sample in (
                        (f'_bucket{{model="{n}",le="+Inf"}}', int(sum(x.requests.values()))),
                        (f'_sum{{model="{n}"}}', round(x.latency_sum_s, 3)),
                        (f'_count{{model="{n}"}}', int(sum(x.requests.values()))),
                    )
                ],
            ),
            (
                "http_response_time_recent_seconds",
                "summary",
                "Response time quantiles of AI requests over the last minute (a sliding-window summary).",
                [(f'{{quantile="{q}"}}', round(latency * f / 1000, 6)) for q, f in QUANTILES.items()]
                + [("_sum", round(count * latency / 1000, 3)), ("_count", int(count))],
            ),
            ("process_cpu_seconds_total", "counter", "CPU time consumed.", [("", round(self.cpu_seconds, 3))]),
            ("cpu_usage_ratio", "gauge", "CPU used over the CPU limit.", [("", round(self._cpu_ratio(), 4))]),
            ("process_resident_memory_bytes", "gauge", "Resident memory.", [("", rss)]),
            ("nodejs_heap_used_bytes", "gauge", "V8 heap used.", [("", heap)]),
            ("nodejs_heap_size_total_bytes", "gauge", "V8 heap size.", [("", int(heap * 1.3))]),
            (
                "ai_model_up",
                "gauge",
                "1 while the model is enabled and answers its health checks.",
                [
                    (f'{{model="{n}",provider="{x.spec.provider}"}}', int(self._status(x) in ("active", "degraded")))
                    for n, x in self.models.items()
                ],
            ),
            (
                "ai_circuit_breaker_open",
                "gauge",
                "1 while the model's circuit breaker is OPEN.",
                [(f'{{model="{n}"}}', int(x.breaker == "OPEN")) for n, x in self.models.items()],
            ),
            (
                "ai_lb_model_share",
                "gauge",
                "Share of the traffic the load balancer sends to the model right now.",
                [(f'{{model="{n}"}}', round(share, 4)) for n, share in self._shares().items()],
            ),
            (
                "ai_security_unauthorized_events_total",
                "counter",
                "Requests refused as unauthorized (invalid or revoked API keys).",
                [("", sum(1 for e in self.events if e.type == "unauthorized"))],
            ),
            (
                "ai_api_key_requests_total",
                "counter",
                "Requests served with the API key (a throttle of its user caps them).",
                [(f'{{key_id="{k.id}",user_id="{k.user_id}"}}', int(k.requests_total)) for k in self.keys.values()],
            ),
            (
                "ai_api_key_source_addresses",
                "gauge",
                f"Distinct source addresses served with the API key over the last {ADDRESS_WINDOW_S:.0f} s.",
                [(f'{{key_id="{k.id}",user_id="{k.user_id}"}}', self._source_addresses(k)) for k in self.keys.values()],
            ),
            (
                "ai_cost_usd_total",
                "counter",
                "USD spent on the model's requests (their blended prompt and completion price).",
                [(f'{{model="{n}"}}', round(x.cost_usd, 4)) for n, x in self.models.items()],
            ),
        ]
        lines = []
        for name, kind, help_, samples in families:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"] + [f"{name}{lb} {v}" for lb, v in samples]
        return "\n".join(lines) + "\n"

    def model_list(self) -> m.ModelList:
        return m.ModelList(models=[self._info(x) for x in self.models.values()])

    def model_health(self, target: str) -> m.HealthReport:
        """A model by name, or every model of a provider, as of the last periodic checks."""
        members = [x for x in self.models.values() if target in (x.spec.name, x.spec.provider)]
        if not members:
            raise NotFound("model or provider", target)
        infos = [self._info(x) for x in members]
        return m.HealthReport(
            target=target,
            kind="model" if target in self.models else "provider",
            status=_aggregate([i.status for i in infos]),
            response_time=round(sum(i.response_time for i in infos) / len(infos), 1),
            error_rate=round(sum(i.error_rate for i in infos) / len(infos), 4),
            checked_at=max(x.last_check for x in members),
            models=infos,
        )

    def probe(self, name: str) -> m.ProbeResult:
        """A live test call: it counts as a health check, so failures feed the circuit breaker."""
        x = self._model(name)
        ok = x.enabled and self._check(x, self.now)
        latency = round(self._latency(x), 1) if x.enabled else 0.0
        return m.ProbeResult(model=name, ok=ok, latency_ms=latency, error=None if ok else self._error(x), at=self.now)

    def lb_status(self) -> m.LoadBalancerStatus:
        shares = self._shares()

        def state(x: Model) -> m.BackendState:
            if not x.enabled or x.breaker == "OPEN":
                return "disabled" if not x.enabled else "circuit_open"
            return "down" if self._down(x) else "fallback" if x.fallback else "routable"

        backends = [
            m.Backend(model=n, state=state(x), weight=x.weight, share=round(shares[n], 4))
            for n, x in self.models.items()
        ]
        healthy = sum(b.state == "routable" for b in backends)
        return m.LoadBalancerStatus(
            status="healthy" if healthy == len(backends) else "degraded" if healthy else "unhealthy",
            algorithm=self.algorithm,
            healthy_backends=healthy,
            total_backends=len(backends),
            backends=backends,
        )

    def lb_stats(self) -> m.LoadBalancerStats:
        shares = self._shares()
        return m.LoadBalancerStats(
            algorithm=self.algorithm,
            since=self.lb_since,
            total_requests=int(sum(x.lb_requests for x in self.models.values())),
            requests_per_second=self.rps if any(shares.values()) else 0.0,
            model_distribution={n: round(s, 4) for n, s in shares.items()},
            requests_by_model={n: int(x.lb_requests) for n, x in self.models.items()},
        )

    def lb_config(self) -> m.LoadBalancerConfig:
        weights = {n: x.weight for n, x in self.models.items()}
        return m.LoadBalancerConfig(algorithm=self.algorithm, weights=weights, health_check_interval_s=CHECK_INTERVAL_S)

    def breakers(self) -> list[m.CircuitBreakerStatus]:
        return [self._breaker(x) for x in self.models.values()]

    def _breaker(self, x: Model) -> m.CircuitBreakerStatus:
        return m.CircuitBreakerStatus(
            model=x.spec.name, state=x.breaker, failures=x.failures, opened_at=x.opened_at, open_until=x.open_until
        )

    def latency(self, window: str) -> m.LatencyReport:
        rows = [(n, self._latency(x)) for n, x in self.models.items()]
        p95, p99 = QUANTILES["0.95"], QUANTILES["0.99"]
        return m.LatencyReport(
            window=window,
            models=[
                m.ModelLatency(
                    name=n, avg_latency=round(v, 1), p95_latency=round(v * p95, 1), p99_latency=round(v * p99, 1)
                )
                for n, v in rows
            ],
        )

    def costs(self, period: str) -> m.CostReport:
        """Requests and cost over ``period``, projected from the current traffic split."""
        shares, seconds = self._shares(), window_seconds(period)
        rows = [
            m.ModelCost(
                name=n,
                total_cost=round(r * self._cost_per_request(x), 2),
                cost_per_request=self._cost_per_request(x),
                requests=r,
            )
            for n, x in self.models.items()
            for r in [int(self.rps * shares[n] * seconds)]
        ]
        return m.CostReport(period=period, total_cost=round(sum(r.total_cost for r in rows), 2), models=rows)

    def summary(self, period: str) -> m.AnalyticsSummary:
        _, err, latency = self._traffic()
        rows = self.costs(period).models
        busiest, costliest = max(rows, key=lambda r: r.requests), max(rows, key=lambda r: r.total_cost)
        return m.AnalyticsSummary(
            period=period,
            total_requests=sum(r.requests for r in rows),
            error_rate=round(err, 4),
            avg_latency_ms=round(latency, 1),
            p95_latency_ms=round(latency * QUANTILES["0.95"], 1),
            total_cost=round(sum(r.total_cost for r in rows), 2),
            availability=0.0 if self.faults.service_down else round(1 - err, 4),
            busiest_model=busiest.name if busiest.requests else None,
            costliest_model=costliest.name if costliest.total_cost else None,
        )

    def top_users(self, hours: int) -> m.TopUsers:
        users: dict[str, m.TopUser] = {}
        for key in self.keys.values():
            requests, errors, _ = self._key_usage(key, hours)
            user = users.setdefault(key.user_id, m.TopUser(user_id=key.user_id, requests=0, errors=0, api_key_ids=[]))
            user.requests, user.errors = user.requests + int(requests), user.errors + int(errors)
            user.api_key_ids.append(key.id)
        return m.TopUsers(hours=hours, users=sorted(users.values(), key=lambda u: -u.requests))

    def anomalies(self, hours: int) -> m.AnomalyReport:
        """One anomaly per fault injected within the last ``hours``."""
        cutoff, found = self.now - hours * 3_600, list[m.Anomaly]()
        _, err, latency = self._traffic()

        def add(fault: str, kind: str, severity: m.Severity, subject: str, detail: str, **extra: str) -> None:
            if self.fault_since.get(fault, cutoff - 1) >= cutoff:
                at = self.fault_since[fault]
                found.append(
                    m.Anomaly(kind=kind, severity=severity, subject=subject, detected_at=at, detail=detail, **extra)
                )

        add("error_rate", "error_rate_spike", "high", "platform", f"error rate {err:.1%}")
        add("latency_ms", "latency_spike", "medium", "platform", f"mean latency {latency:.0f}ms")
        growth = f"heap growing {self.faults.memory_growth_mb_per_min} MB/min"
        add("memory_growth_mb_per_min", "memory_growth", "medium", "ai-multimodel-api", growth)
        add("service_down", "service_down", "critical", "ai-multimodel-api", "health checks failing")
        for name in self.faults.models_down:
            add("models_down", "model_unavailable", "high", name, self._error(self.models[name]) or "down")
        if (spike := self._spike_key()) is not None:
            requests, _, _ = self._key_usage(spike, hours)
            add(
                "spiking_user_id",
                "user_traffic_spike",
                "high",
                spike.user_id,
                f"{int(requests)} requests in {hours}h with key {spike.id}",
                api_key_id=spike.id,
                user_id=spike.user_id,
            )
        if (key_id := self.faults.leaked_key_id) is not None:
            key = self.keys[key_id]
            requests, _, ips = self._key_usage(key, hours)
            detail = f"{int(requests)} requests in {hours}h from {ips} source IPs"
            add(
                "leaked_key_id",
                "api_key_traffic_spike",
                "critical",
                key_id,
                detail,
                api_key_id=key_id,
                user_id=key.user_id,
            )
        return m.AnomalyReport(hours=hours, anomalies=found)

    def security_events(self, hours: int) -> m.SecurityEvents:
        cutoff = self.now - hours * 3_600
        return m.SecurityEvents(
            events=sorted((e for e in self.events if e.at.timestamp() >= cutoff), key=lambda e: e.at)
        )

    def rate_limits(self) -> m.RateLimits:
        return m.RateLimits(
            default_requests_per_minute=600,
            throttled_users=[t for t in self.throttles.values() if t.until.timestamp() > self.now],
            blocked_ips=[b for b in self.blocked.values() if b.until.timestamp() > self.now],
        )

    def status_page(self) -> m.StatusPageSummary:
        health = self.health()
        components = [
            m.StatusComponent(id="cmp-api", name="API", status=COMPONENT_OF[health.checks["api"]], updated_at=self.now)
        ]
        components += [
            m.StatusComponent(id=f"cmp-{n}", name=n, status=COMPONENT_OF[self._status(x)], updated_at=self.now)
            for n, x in self.models.items()
        ]
        level: m.Indicator = "none"
        if self.faults.service_down:
            level = "critical"
        elif self.faults.models_down or self._traffic()[1] > 2 * DEGRADED_ERROR_RATE:
            level = "major"
        elif self.fault_since or health.status != "healthy":
            level = "minor"
        incidents = []
        if self.fault_since:  # one open incident while any fault is injected
            opened = min(self.fault_since.values())
            incidents.append(
                m.StatusIncident(
                    id=f"inc-{int(opened)}",
                    name=f"Service disruption under investigation ({', '.join(sorted(self.fault_since))})",
                    status="investigating",
                    impact="minor" if level == "none" else level,
                    created_at=opened,
                    updated_at=max(self.fault_since.values()),
                )
            )
        page = m.StatusPageInfo(
            id="ai-multimodel-sandbox",
            name="AI Multi-Model Platform",
            url="https://status.ai-multimodel.genspark.ai",
            time_zone="Etc/UTC",
            updated_at=self.now,
        )
        status = m.StatusIndicator(indicator=level, description=DESCRIPTIONS[level])
        return m.StatusPageSummary(page=page, status=status, components=components, incidents=incidents)

    # ---- admin --------------------------------------------------------------------------------------

    def breaker_action(self, req: m.CircuitBreakerAction) -> m.CircuitBreakerStatus:
        x = self._model(req.model)
        if req.action == "open":
            x.open_breaker(self.now, req.duration)
        else:
            x.close_breaker()
        self._audit(f"circuit_breaker.{req.action}", req.model, duration=req.duration)
        return self._breaker(x)

    def reset_breaker(self, name: str) -> m.CircuitBreakerStatus:
        x = self._model(name)
        x.close_breaker()
        self._audit("circuit_breaker.reset", name)
        return self._breaker(x)

    def update_breaker_config(self, changes: dict[str, Any]) -> m.CircuitBreakerConfig:
        self.breaker_config = self.breaker_config.model_copy(update=changes)
        self._audit("circuit_breaker.config", "load-balancer", **changes)
        return self.breaker_config

    def set_enabled(self, name: str, enabled: bool) -> m.ModelInfo:
        x = self._model(name)
        x.enabled = enabled
        self._audit("model.enable" if enabled else "model.disable", name)
        return self._info(x)

    def model_config(self, name: str) -> m.ModelConfig:
        x = self._model(name)
        return m.ModelConfig(
            name=name,
            provider=x.spec.provider,
            enabled=x.enabled,
            timeout=x.timeout_ms,
            retry_attempts=x.retry_attempts,
            region=x.region,
            endpoint=f"https://{x.region}.{x.spec.provider}.sandbox.invalid/v1",
            api_key_status="valid",
            fallback_model=x.fallback,
            fallback_until=x.fallback_until if x.fallback else None,
        )

    def model_configs(self) -> list[m.ModelConfig]:
        return [self.model_config(n) for n in self.models]

    def update_model_config(self, name: str, update: m.ModelConfigUpdate) -> m.ModelConfig:
        x = self._model(name)
        x.timeout_ms = update.timeout if update.timeout is not None else x.timeout_ms
        x.retry_attempts = update.retry_attempts if update.retry_attempts is not None else x.retry_attempts
        self._audit("model.config", name, **update.model_dump(exclude_none=True))
        return self.model_config(name)

    def reconnect(self, name: str) -> m.ProbeResult:
        result = self.probe(name)
        if result.ok:
            self.models[name].close_breaker()
        self._audit("model.reconnect", name, ok=result.ok)
        return result

    def set_fallback(self, name: str, req: m.FallbackRequest) -> m.ModelConfig:
        x = self._model(name)
        if req.fallback_model == name:
            raise InvalidInput(("body", "fallback_model"), "a model cannot fall back to itself")
        x.fallback, x.fallback_until = req.fallback_model, self.now + req.duration
        self._audit("model.fallback", name, fallback_model=req.fallback_model, duration=req.duration)
        return self.model_config(name)

    def switch_endpoint(self, name: str, req: m.SwitchEndpointRequest) -> m.ModelConfig:
        x = self._model(name)
        self._audit("model.switch_endpoint", name, previous_region=x.region, region=req.region)
        x.region = req.region
        return self.model_config(name)

    def update_lb_config(self, update: m.LoadBalancerConfigUpdate) -> m.LoadBalancerConfig:
        self.algorithm = update.algorithm or self.algorithm
        if update.reset_stats:
            self.lb_since = self.now
            for x in self.models.values():
                x.lb_requests = 0.0
        self._audit("load_balancer.config", "load-balancer", **update.model_dump(exclude_none=True))
        return self.lb_config()

    def update_weights(self, weights: dict[str, float]) -> m.LoadBalancerConfig:
        for name, weight in weights.items():
            self._model(name).weight = weight
        self._audit("load_balancer.weights", "load-balancer", weights=weights)
        return self.lb_config()

    def block_ip(self, req: m.BlockIpRequest) -> m.BlockedIp:
        ip = str(req.ip)
        self._unauthorized_traffic()  # what it sent before the block counts
        self.blocked[ip] = m.BlockedIp(ip=ip, until=self.now + req.duration, reason=req.reason)
        self.events.append(
            m.SecurityEvent(type="blocked", source_ip=ip, at=self.now, api_key_id=None, detail=req.reason)
        )
        self._audit("security.block_ip", ip, duration=req.duration, reason=req.reason)
        return self.blocked[ip]

    def unblock_ip(self, ip: str) -> m.Unblocked:
        was = ip in self.blocked and self.blocked[ip].until.timestamp() > self.now
        self.blocked.pop(ip, None)
        if was:
            self._audit("security.unblock_ip", ip)
        return m.Unblocked(ip=ip, was_blocked=was)

    def unthrottle(self, user_id: str) -> m.Unthrottled:
        was = user_id in self.throttles and self.throttles[user_id].until.timestamp() > self.now
        self.throttles.pop(user_id, None)
        self.throttled_since.pop(user_id, None)
        if was:
            self._audit("user.unthrottle", user_id)
        return m.Unthrottled(user_id=user_id, was_throttled=was)

    def clear_fallback(self, name: str) -> m.ModelConfig:
        x = self._model(name)
        if x.fallback:
            self._audit("model.fallback_cleared", name, fallback_model=x.fallback)
        x.fallback, x.fallback_until = None, 0.0
        return self.model_config(name)

    def clear_cost_strategy(self) -> m.CostStrategy | None:
        before, self.cost_strategy = self.cost_strategy, None
        if before is not None:
            self._audit("optimization.cost_strategy_cleared", "load-balancer")
        return before

    def list_keys(self, user_id: str | None) -> m.ApiKeyList:
        return m.ApiKeyList(keys=[k.public() for k in self.keys.values() if user_id in (None, k.user_id)])

    def security_report(self, req: m.ReportRequest) -> m.SecurityReport:
        events = [e for e in self.events if req.start_time <= e.at <= req.end_time]
        self.reports += 1
        report = m.SecurityReport(
            id=f"rpt-{self.reports:04d}",
            type=req.type,
            start_time=req.start_time,
            end_time=req.end_time,
            generated_at=self.now,
            total_events=len(events),
            events_by_type=Counter(e.type for e in events),
            unique_source_ips=len({e.source_ip for e in events}),
            blocked_ips=[b.ip for b in self.rate_limits().blocked_ips],
            suspicious_api_keys=sorted({e.api_key_id for e in events if e.type == "threat" and e.api_key_id}),
        )
        self._audit("security.generate_report", report.id, type=req.type)
        return report

    def create_key(self, req: m.ApiKeyCreate) -> m.ApiKeyCreated:
        key = self._new_key(req.user_id, req.name, list(req.permissions))
        self._audit("api_key.create", req.user_id, api_key_id=key.id, name=req.name)
        return m.ApiKeyCreated(**key.public().model_dump(), secret=key.secret)

    def revoke_key(self, key_id: str) -> m.ApiKeyRevocation:
        key = self._key(key_id)
        already = key.revoked_at is not None
        if key.revoked_at is None:
            key.revoked_at = self.now
            self._audit("api_key.revoke", key.user_id, api_key_id=key_id)
        return m.ApiKeyRevocation(id=key_id, revoked=True, revoked_at=key.revoked_at, already_revoked=already)

    def key_usage(self, key_id: str, hours: int) -> m.ApiKeyUsage:
        key = self._key(key_id)
        requests, errors, ips = self._key_usage(key, hours)
        used = requests >= 1
        return m.ApiKeyUsage(
            id=key_id,
            user_id=key.user_id,
            hours=hours,
            requests=int(requests),
            errors=int(errors),
            unique_source_ips=ips if used else 0,
            revoked=key.revoked_at is not None,
            last_used_at=(key.revoked_at or self.now) if used else None,
        )

    def audit_search(self, req: m.AuditSearch) -> m.AuditEvents:
        """Admin actions, plus the security events of the key when one is given."""
        cutoff = self.now - req.hours * 3_600
        found = [e for e in self.audit if e.at.timestamp() >= cutoff and req.api_key_id in (None, e.api_key_id)]
        found += [
            m.AuditEvent(
                id=f"sec-{i:05d}",
                at=e.at,
                actor=e.source_ip,
                action=f"security.{e.type}",
                target=e.api_key_id,
                api_key_id=e.api_key_id,
                detail={"detail": e.detail},
            )
            for i, e in enumerate(self.events)
            if req.api_key_id is not None and e.api_key_id == req.api_key_id and e.at.timestamp() >= cutoff
        ]
        return m.AuditEvents(events=sorted(found, key=lambda e: e.at))

    def throttle(self, user_id: str, req: m.ThrottleRequest) -> m.Throttle:
        if not any(k.user_id == user_id for k in self.keys.values()):
            raise NotFound("user", user_id)
        current = self.throttles.get(user_id)
        if current is None or current.until.timestamp() <= self.now:
            self.throttled_since[user_id] = self.now  # a new throttle (an extension keeps its start)
        self.throttles[user_id] = m.Throttle(user_id=user_id, rate_limit=req.rate_limit, until=self.now + req.duration)
        self._audit("user.throttle", user_id, rate_limit=req.rate_limit, duration=req.duration)
        return self.throttles[user_id]

    def set_cost_strategy(self, req: m.CostStrategyRequest) -> m.CostStrategy:
        self.cost_strategy = m.CostStrategy(**req.model_dump(), applied_at=self.now)
        self._audit("optimization.cost_strategy", "load-balancer", **req.model_dump())
        return self.cost_strategy

    def add_cost_alert(self, req: m.CostAlertRequest) -> m.CostAlert:
        spend = self.costs(ALERT_PERIODS[req.period]).total_cost
        self.alerts += 1
        alert = m.CostAlert(
            **req.model_dump(), id=f"alert-{self.alerts:04d}", created_at=self.now, triggered=spend > req.threshold
        )
        self._audit("alerts.cost", alert.id, **req.model_dump())
        return alert

    # ---- sandbox faults -----------------------------------------------------------------------------

    def observe_release(self, ready_pods: dict[str, int] | None, at: float | None) -> m.ReleaseStatus:
        """Record the ready pods per image (None: nothing observable, no release effect); traffic up to now is
        counted with the release it was served by."""
        self.advance()
        error_rate, latency_ms = release_effect(ready_pods or {})
        self.release = m.ReleaseStatus(
            images=dict(sorted((ready_pods or {}).items())),
            error_rate=round(error_rate, 6),
            latency_ms=round(latency_ms, 3),
            observed_at=at,
        )
        return self.release

    def _config_faults(self, old: m.Faults, new: m.Faults) -> None:
        """Faults that change the load balancer's configuration once, when turned on, and put it back when off."""
        for name, weight in new.skewed_weights.items():
            if old.skewed_weights.get(name) != weight:
                self.models[name].weight = weight
        for name, weight in old.skewed_weights.items():
            if name not in new.skewed_weights and self.models[name].weight == weight:
                self.models[name].weight = self.models[name].spec.default_weight
        for name in set(new.stuck_breakers) - set(old.stuck_breakers):
            self.models[name].open_breaker(self.now, STUCK_BREAKER_S)
        for name in set(old.stuck_breakers) - set(new.stuck_breakers):
            if self.models[name].breaker == "OPEN":
                self.models[name].close_breaker()

    def fault_status(self) -> m.FaultsStatus:
        return m.FaultsStatus(**self.faults.model_dump(), active=bool(self.fault_since))

    def set_faults(self, faults: m.Faults) -> m.FaultsStatus:
        if faults.leaked_key_id is not None and faults.leaked_key_id not in self.keys:
            raise InvalidInput(("body", "leaked_key_id"), f"unknown api key {faults.leaked_key_id!r}")
        if faults.spiking_user_id is not None and not any(
            k.user_id == faults.spiking_user_id for k in self.keys.values()
        ):
            raise InvalidInput(("body", "spiking_user_id"), f"unknown user {faults.spiking_user_id!r}")
        old, self.faults = self.faults, faults
        if set(faults.unauthorized_ips) - set(old.unauthorized_ips):
            self.unauthorized_at = min(self.unauthorized_at, self.now - 60)
        for name in m.Faults.model_fields:
            if getattr(faults, name) == getattr(old, name):
                continue
            if getattr(faults, name):
                self.fault_since[name] = self.now
            else:
                self.fault_since.pop(name, None)
        for name in set(old.models_down) ^ set(faults.models_down):  # the health checker notices at once
            self._check(self.models[name], self.now)
        self._config_faults(old, faults)
        # the history a new leak or spike comes with was served: its requests are counted at once
        if faults.leaked_key_id not in (None, old.leaked_key_id):
            self.keys[faults.leaked_key_id].requests_total += LEAK_PER_HOUR * LEAK_HISTORY_S / 3_600
        if faults.spiking_user_id not in (None, old.spiking_user_id) and (spike := self._spike_key()) is not None:
            spike.requests_total += SPIKE_PER_HOUR * SPIKE_HISTORY_S / 3_600
        if faults.leaked_key_id not in (None, old.leaked_key_id):
            self.events += [
                m.SecurityEvent(
                    type="rate_limited" if i % 3 == 0 else "threat",
                    source_ip=f"198.51.100.{self._rng.randint(2, 254)}",
                    at=self.now - LEAK_HISTORY_S * (1 - i / 30),
                    api_key_id=faults.leaked_key_id,
                    detail="request burst from an unrecognised network",
                )
                for i in range(1, 31)
            ]
        return self.fault_status()
