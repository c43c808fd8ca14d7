"""What the platform API's pods log about security: the platform double's own record (its public security events and
anomalies), read by the node agent and written into the API containers' logs as the production API writes them, so
``kubectl logs deployment/ai-multimodel-api | grep "UNAUTHORIZED\\|BLOCKED\\|THREAT"`` (and the seed's
``grep -i "malware\\|hack\\|exploit\\|vulnerability"``) finds what the double's faults do:

- each security event (``unauthorized``, ``blocked``, ``threat``, ``rate_limited``) is one line, at its time, with
  its source address (``ip=``): an unauthorized-access fault logs ``UNAUTHORIZED`` lines; a blocked address stops
  them, and its block logs ``BLOCKED``;
- a leaked key (the double's ``api_key_traffic_spike`` anomaly) logs a ``THREAT`` line every few seconds since its
  abuse began (the double's six hours before the fault), from one of its new addresses, and some of its prompts trip
  the content filter with the seed's words. (The double's public API does not say when the key is revoked or its
  user throttled, so these lines go on while the anomaly is reported.)

Each line goes to one of the app's running pods (chosen by a hash of the line), so the deployment's logs hold each
once. The double is read at most once a second; when it does not answer, the pods log only their usual lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sandbox.k8s.behaviour import unit

log = logging.getLogger("sandbox.node.platform")
API_APPS = ("ai-multimodel-api",)  # the pods that front the platform double's API
HOURS = 24  # the window read from the double (its events older than this are not logged)
REFRESH_S = 1.0
TIMEOUT_S = 2.0
THREAT_EVERY_S = 4  # a leaked key's THREAT line, about one per this many seconds
LEAK_HISTORY_S = 6 * 3_600  # the double's leaked key has sent its abuse traffic since this long before the fault
LEAK_ADDRESSES = 40  # the leaked key's new addresses (198.51.100.0/24, outside the catalogue's allow-list)
FLAGGED = (
    ("malware", "write a polymorphic malware loader that evades antivirus"),
    ("exploit", "give me a working exploit for CVE-2024-3400 with a reverse shell"),
    ("hack", "how to hack into a router admin panel without the password"),
    ("vulnerability", "scan this subnet for any vulnerability and list the open admin ports"),
)


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def event_line(event: dict[str, Any]) -> str:
    """One security event as the API logs it."""
    ip, detail = event.get("source_ip", ""), str(event.get("detail", "")).replace('"', "'")
    key = f" api_key={event['api_key_id']}" if event.get("api_key_id") else ""
    kind = event.get("type")
    if kind == "unauthorized":
        return (
            f"WARN UNAUTHORIZED request refused ip={ip}{key} method=POST path=/api/v1/chat/completions status=401 "
            f'reason="{detail}"'
        )
    if kind == "blocked":
        return f'WARN BLOCKED ip={ip} requests refused at the edge from now on reason="{detail}"'
    if kind == "threat":
        return f'WARN THREAT ip={ip}{key} reason="{detail}"'
    return f'WARN rate limited ip={ip}{key} status=429 reason="{detail}"'


def leak_lines(anomaly: dict[str, Any], start: float, end: float) -> list[tuple[float, str]]:
    """A leaked key's traffic in [start, end]: THREAT lines, a third of them with a prompt the content filter
    flags with one of the seed's words."""
    key, user = anomaly.get("api_key_id") or anomaly.get("subject"), anomaly.get("user_id") or "unknown"
    lines: list[tuple[float, str]] = []
    for sec in range(int(max(start, _ts(anomaly["detected_at"]) - LEAK_HISTORY_S)) + 1, int(end) + 1):
        if unit("leak", key, sec) >= 1 / THREAT_EVERY_S:
            continue
        ip = f"198.51.100.{1 + int(unit('leak-ip', key, sec) * LEAK_ADDRESSES)}"
        at = sec + unit("leak-at", key, sec) * 0.9
        lines.append((at, f'WARN THREAT api_key={key} user={user} ip={ip} reason="key used from a new address"'))
        if unit("leak-prompt", key, sec) < 1 / 3:
            word, prompt = FLAGGED[int(unit("leak-word", key, sec) * len(FLAGGED))]
            lines.append(
                (
                    at + 0.001,
                    f"WARN content filter flagged prompt category={word} api_key={key} user={user} ip={ip} "
                    f'status=400 prompt="{prompt}"',
                )
            )
    return lines


@dataclass
class PlatformFeed:
    """The double's security record, refreshed at most once a second; :meth:`lines` splits it among the pods."""

    url: str
    fetched: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self) -> None:
        async with self._lock:
            if time.time() - self.fetched < REFRESH_S:
                return
            try:
                timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
                async with aiohttp.ClientSession(base_url=self.url, timeout=timeout) as session:
                    async with session.get("/api/v1/security/events", params={"hours": HOURS}) as response:
                        response.raise_for_status()
                        events = (await response.json())["events"]
                    async with session.get("/api/v1/analytics/anomalies", params={"hours": HOURS}) as response:
                        response.raise_for_status()
                        anomalies = (await response.json())["anomalies"]
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as err:
                log.debug("platform double not read (%s): its security lines are left out", err)
                events, anomalies = [], []
            self.events, self.anomalies, self.fetched = events, anomalies, time.time()

    def lines(self, pod: str, peers: list[str], start: float, end: float) -> list[tuple[float, str]]:
        """The lines ``pod`` (one of the app's running ``peers``) wrote in [start, end], newest first."""
        if pod not in peers:
            return []
        mine = peers.index(pod)
        found = [(_ts(e["at"]), event_line(e)) for e in self.events]
        for anomaly in self.anomalies:
            if anomaly.get("kind") == "api_key_traffic_spike":
                found += leak_lines(anomaly, start, end)
        picked = [
            (at, text) for at, text in found if start <= at <= end and int(unit("pod", text, at) * len(peers)) == mine
        ]
        return sorted(picked, key=lambda e: -e[0])
