"""The sandbox's release catalogue: how a release behaves follows from its image tag, so deploying a tag is all
it takes to put a good or a bad release in front of the runbooks. The simulated node (sandbox/k8s/behaviour.py)
runs its containers accordingly and the platform double (sandbox/platform_api) serves traffic accordingly,
weighted by the ready pods of each image. Pure functions, no I/O.

The tag is what follows the last ``:`` of the image's last path segment (a ``@sha256:...`` digest is ignored;
no tag reads as ``latest``). It ends in one of these suffixes (after a ``-``, or the whole tag):

===============================  =============  ==============================================================
tag suffix (example)             kind           behaviour
===============================  =============  ==============================================================
``-healthy``                     healthy        as any other tag: ``v2.5.0``, ``v2.6.0``, ``latest``
``-crashloop``                   crashloop      the container exits 1 at start-up: CrashLoopBackOff, never Ready
``-errors-<rate>``               errors         Ready; ``<rate>`` (a fraction 0..1, e.g. ``v2.6.0-errors-0.25``)
                                                more 5xx, and ERROR lines in its logs
``-latency-<ms>``                latency        Ready; ``<ms>`` more mean latency (e.g. ``v2.6.0-latency-1500``)
``-slow-ready`` / ``-<s>``       slow-ready     Ready only 30 s (or ``<s>`` s) after it starts
``-memory-leak`` / ``-<mib>``    memory-leak    working set grows 40 (or ``<mib>``) MiB per minute
===============================  =============  ==============================================================

Numbers are plain decimals (``0.3``, ``1500``, ``2.5``); a suffix with a malformed number (``-errors-1.5``,
``-latency-fast``) is not in the catalogue, so that tag is healthy like any unknown tag.

Deploy a bad release by hand::

    kubectl set image deployment/ai-multimodel-api \\
        ai-multimodel-api=ghcr.io/genspark/ai-multimodel-api:v9.0.0-errors-0.2 -n production
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SLOW_READY_S = 30.0
DEFAULT_MEMORY_LEAK_MIB_PER_MIN = 40.0
KINDS = ("healthy", "crashloop", "errors", "latency", "slow-ready", "memory-leak")

_NUMBER = r"\d+(?:\.\d+)?"
_SUFFIX = re.compile(
    rf"(?:^|-)(?:(?P<healthy>healthy)|(?P<crashloop>crashloop)|errors-(?P<errors>{_NUMBER})"
    rf"|latency-(?P<latency>{_NUMBER})|(?P<slow>slow-ready)(?:-(?P<slow_s>{_NUMBER}))?"
    rf"|(?P<leak>memory-leak)(?:-(?P<leak_mib>{_NUMBER}))?)$"
)


@dataclass(frozen=True)
class ReleaseBehaviour:
    """What a release does, from its image tag (see the module's table)."""

    kind: str = "healthy"
    crash: bool = False
    error_rate: float = 0.0  # added share of 5xx, 0..1
    latency_ms: float = 0.0  # added mean latency
    ready_after_s: float = 0.0
    memory_growth_mib_per_min: float = 0.0
    error_logs: bool = False


HEALTHY = ReleaseBehaviour()


def image_tag(image: str) -> str:
    """The tag of ``image`` (``registry:5000/org/app:v1`` -> ``v1``); ``latest`` when it has none."""
    last = image.rsplit("/", 1)[-1].split("@", 1)[0]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def release_behaviour(image: str) -> ReleaseBehaviour:
    """How a release of ``image`` behaves; any tag outside the catalogue is healthy."""
    match = _SUFFIX.search(image_tag(image))
    if match is None or match["healthy"]:
        return HEALTHY
    if match["crashloop"]:
        return ReleaseBehaviour(kind="crashloop", crash=True)
    if match["errors"] is not None:
        rate = float(match["errors"])
        return ReleaseBehaviour(kind="errors", error_rate=rate, error_logs=True) if rate <= 1.0 else HEALTHY
    if match["latency"] is not None:
        return ReleaseBehaviour(kind="latency", latency_ms=float(match["latency"]))
    if match["slow"]:
        seconds = float(match["slow_s"]) if match["slow_s"] is not None else DEFAULT_SLOW_READY_S
        return ReleaseBehaviour(kind="slow-ready", ready_after_s=seconds)
    mib = float(match["leak_mib"]) if match["leak_mib"] is not None else DEFAULT_MEMORY_LEAK_MIB_PER_MIN
    return ReleaseBehaviour(kind="memory-leak", memory_growth_mib_per_min=mib)


def release_effect(ready_pods: Mapping[str, int]) -> tuple[float, float]:
    """(added error rate, added mean latency in ms) of traffic spread evenly over the ready pods, given the number
    of ready pods per image; (0, 0) without a ready pod."""
    total = sum(n for n in ready_pods.values() if n > 0)
    if not total:
        return 0.0, 0.0
    rows = [(n / total, release_behaviour(image)) for image, n in ready_pods.items() if n > 0]
    return sum(w * b.error_rate for w, b in rows), sum(w * b.latency_ms for w, b in rows)
