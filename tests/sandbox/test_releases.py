"""The release catalogue (sandbox/releases.py): the tag grammar, the ready-pod-weighted effect, and how the node's
behaviour and the platform double's figures take it in. Fast: no services (the live sandbox is exercised in
tests/sandbox/k8s/test_releases.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sandbox.k8s.behaviour import Rules, resolve
from sandbox.platform_api.deployed import ready_pods_by_image
from sandbox.platform_api.state import PlatformState
from sandbox.releases import (
    DEFAULT_MEMORY_LEAK_MIB_PER_MIN,
    DEFAULT_SLOW_READY_S,
    HEALTHY,
    ReleaseBehaviour,
    image_tag,
    release_behaviour,
    release_effect,
)

API = "ghcr.io/genspark/ai-multimodel-api"


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        (f"{API}:v2.6.0-errors-0.25", "v2.6.0-errors-0.25"),
        ("registry.local:5000/org/app:v1", "v1"),
        ("registry.local:5000/org/app", "latest"),
        ("app", "latest"),
        ("app:v3@sha256:" + "a" * 64, "v3"),
    ],
)
def test_image_tag(image: str, tag: str) -> None:
    assert image_tag(image) == tag


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("v2.5.0", HEALTHY),
        ("v2.6.0", HEALTHY),
        ("latest", HEALTHY),
        ("v2.6.0-healthy", HEALTHY),
        ("v9.9.9-broken", HEALTHY),
        ("v9.1.0-crashloop", ReleaseBehaviour(kind="crashloop", crash=True)),
        ("crashloop", ReleaseBehaviour(kind="crashloop", crash=True)),
        ("v2.6.0-errors-0.25", ReleaseBehaviour(kind="errors", error_rate=0.25, error_logs=True)),
        ("v9.1.0-errors-1", ReleaseBehaviour(kind="errors", error_rate=1.0, error_logs=True)),
        ("v2.6.0-latency-1500", ReleaseBehaviour(kind="latency", latency_ms=1500.0)),
        ("v2.6.0-slow-ready", ReleaseBehaviour(kind="slow-ready", ready_after_s=DEFAULT_SLOW_READY_S)),
        ("v2.6.0-slow-ready-45", ReleaseBehaviour(kind="slow-ready", ready_after_s=45.0)),
        ("v2.6.0-slow-ready-2.5", ReleaseBehaviour(kind="slow-ready", ready_after_s=2.5)),
        (
            "v2.6.0-memory-leak",
            ReleaseBehaviour(kind="memory-leak", memory_growth_mib_per_min=DEFAULT_MEMORY_LEAK_MIB_PER_MIN),
        ),
        ("v2.6.0-memory-leak-120", ReleaseBehaviour(kind="memory-leak", memory_growth_mib_per_min=120.0)),
        # outside the catalogue: healthy
        ("v2.6.0-errors-1.5", HEALTHY),
        ("v2.6.0-errors", HEALTHY),
        ("v2.6.0-latency-fast", HEALTHY),
        ("v2.6.0-crashloop-x", HEALTHY),
        ("v2.6.0xcrashloop", HEALTHY),
    ],
)
def test_release_behaviour_follows_the_tag(tag: str, expected: ReleaseBehaviour) -> None:
    assert release_behaviour(f"{API}:{tag}") == expected


def test_the_default_slow_ready_and_leak_are_the_documented_ones() -> None:
    assert DEFAULT_SLOW_READY_S == 30.0
    assert DEFAULT_MEMORY_LEAK_MIB_PER_MIN == 40.0


def test_a_tag_in_the_repository_path_does_not_count() -> None:
    assert release_behaviour("registry.local:5000/crashloop/app:v1") == HEALTHY
    assert release_behaviour("registry.local:5000/app-crashloop") == HEALTHY


def test_release_effect_is_weighted_by_ready_pods() -> None:
    assert release_effect({}) == (0.0, 0.0)
    assert release_effect({f"{API}:v9.1.0-errors-0.3": 0}) == (0.0, 0.0)
    error_rate, latency = release_effect({f"{API}:v2.5.0": 2, f"{API}:v9.1.0-errors-0.3": 1})
    assert error_rate == pytest.approx(0.1)
    assert latency == 0.0
    error_rate, latency = release_effect({f"{API}:v9.1.0-latency-1500": 3, f"{API}:v9.1.0-errors-0.2": 1})
    assert (error_rate, latency) == (pytest.approx(0.05), pytest.approx(1125.0))


# ---------------------------------------------------------------------------------------- the simulated node
def _pod(image: str, app: str = "ai-multimodel-api", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": {"app": app}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": app, "image": image}]},
    }


def _resolve(image: str, rules: Rules | None = None, annotations: dict[str, str] | None = None) -> Any:
    pod = _pod(image, annotations=annotations)
    return resolve(pod, pod["spec"]["containers"][0], rules or Rules())


def test_the_node_runs_a_release_as_its_tag_says() -> None:
    assert _resolve(f"{API}:v2.5.0") == _resolve(f"{API}:v2.6.0-healthy")
    crash = _resolve(f"{API}:v9.1.0-crashloop")
    assert (crash.crash, crash.reason) == (True, "release")
    errors = _resolve(f"{API}:v9.1.0-errors-0.3")
    assert (errors.crash, errors.error_logs) == (False, True)
    assert _resolve(f"{API}:v9.1.0-slow-ready-12").ready_after_s == 12.0
    assert _resolve(f"{API}:v9.1.0-memory-leak").memory_growth_mib_per_min == 40.0


def test_the_rules_still_apply_and_combine_with_the_release() -> None:
    rules = Rules(
        failing_images=["*:v9.9.9-broken"],
        slow_ready_seconds={"ai-multimodel-api": 5.0},
        memory_growth_mib_per_min={"ai-multimodel-api": 10.0},
    )
    broken = _resolve(f"{API}:v9.9.9-broken", rules)
    assert (broken.crash, broken.reason) == (True, "image")
    assert _resolve(f"{API}:v2.5.0", rules).ready_after_s == 5.0
    assert _resolve(f"{API}:v9.1.0-slow-ready", rules).ready_after_s == 30.0  # the later readiness
    assert _resolve(f"{API}:v9.1.0-memory-leak-5", rules).memory_growth_mib_per_min == 15.0  # leaks add up
    flagged = _resolve(f"{API}:v2.5.0", annotations={"sandbox.runbooks.io/behaviour": "crashloop,error-logs"})
    assert (flagged.crash, flagged.reason, flagged.error_logs) == (True, "crashloop", True)


# ---------------------------------------------------------------------------------------- the platform double
def _k8s_pod(image: str, ready: bool, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "labels": {"app": "ai-multimodel-api"}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "ai-multimodel-api", "image": image}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_only_ready_pods_that_are_not_terminating_count() -> None:
    pods = [
        _k8s_pod(f"{API}:v2.5.0", ready=True),
        _k8s_pod(f"{API}:v2.5.0", ready=True, terminating=True),
        _k8s_pod(f"{API}:v9.1.0-errors-0.3", ready=True),
        _k8s_pod(f"{API}:v9.1.0-errors-0.3", ready=False),
        {"metadata": {"name": "pending"}, "spec": {"containers": [{"name": "x", "image": "y"}]}, "status": {}},
    ]
    assert ready_pods_by_image(pods) == {f"{API}:v2.5.0": 1, f"{API}:v9.1.0-errors-0.3": 1}


def _gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} missing from the metrics"
    return float(match.group(1))


def test_the_double_adds_the_release_effect_to_the_faults_and_reset_keeps_it() -> None:
    now = [1_000_000.0]
    state = PlatformState(seed=7, clock=lambda: now[0])
    base = _gauge(state.metrics(), "error_rate")
    release = state.observe_release({f"{API}:v9.1.0-errors-0.3": 3}, now[0])
    assert release.error_rate == pytest.approx(0.3)
    assert _gauge(state.metrics(), "error_rate") == pytest.approx(base + 0.3, abs=1e-4)
    assert state.health().checks["api"] == "degraded"
    state.set_faults(state.faults.model_copy(update={"error_rate": 0.1}))
    assert _gauge(state.metrics(), "error_rate") == pytest.approx(base + 0.4, abs=1e-4)
    state.reset()  # faults go, the observed release stays
    assert state.release.images == {f"{API}:v9.1.0-errors-0.3": 3}
    assert _gauge(state.metrics(), "error_rate") == pytest.approx(base + 0.3, abs=1e-4)
    state.observe_release(None, None)  # nothing observable: exactly as without a cluster
    assert _gauge(state.metrics(), "error_rate") == pytest.approx(base, abs=1e-6)
    assert state.health().checks["api"] == "ok"


def test_the_double_counts_traffic_with_the_release_that_served_it() -> None:
    now = [1_000_000.0]
    state = PlatformState(seed=7, clock=lambda: now[0])

    def five_xx() -> float:
        return sum(x.requests["5xx"] for x in state.models.values())

    before = five_xx()
    now[0] += 60
    state.observe_release({f"{API}:v9.1.0-errors-0.5": 1}, now[0])  # the minute before was served healthy
    healthy_minute = five_xx() - before
    now[0] += 60
    state.advance()
    bad_minute = five_xx() - before - healthy_minute
    assert bad_minute > healthy_minute + 0.4 * state.rps * 60
    latency = state.observe_release({f"{API}:v9.1.0-latency-1500": 2}, now[0]).latency_ms
    assert latency == 1500.0
    assert all(info.response_time > 1500 for info in state.model_list().models)
