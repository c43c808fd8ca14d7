"""The pure parts of the Kubernetes tasks: quantities, rollout judgement, undo's patch, clean-up choices, errors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from kubernetes_asyncio.client import (
    V1CrossVersionObjectReference,
    V1Deployment,
    V1DeploymentCondition,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1HorizontalPodAutoscaler,
    V1HorizontalPodAutoscalerSpec,
    V1LabelSelector,
    V1LabelSelectorRequirement,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodStatus,
    V1PodTemplateSpec,
)
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from pydantic import SecretStr

from blocks.kubernetes import KubernetesCluster
from kernel.errors import ConfigurationError, KubernetesError
from kernel.retry import is_transient
from tasks.kubernetes._api import api_error, kube, pick_pod, selector_string
from tasks.kubernetes.autoscaling import FLOOR_ANNOTATION, HpaFloor
from tasks.kubernetes.cleanup import choose_old_by_prefix, choose_old_replicasets, protected_revisions
from tasks.kubernetes.deployments import previous_revision, rollback_patch, rollout_state
from tasks.kubernetes.export import ResourceExport, clean
from tasks.kubernetes.logs import DeploymentLogs, PodLogs, grep_lines
from tasks.kubernetes.pod_exec import exit_code_of
from tasks.kubernetes.quantity import cpu_millicores, memory_bytes, parse_quantity

UTC = dt.UTC


# ------------------------------------------------------------------------------------------------ quantities
@pytest.mark.parametrize(
    ("text", "millicores"),
    [("250m", 250), ("2", 2000), ("1.5", 1500), ("1200000n", 2), ("100000000n", 100), ("500u", 1), ("0", 0), (3, 3000)],
)
def test_cpu_millicores(text: str | int, millicores: int) -> None:
    assert cpu_millicores(text) == millicores


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("524288Ki", 512 * 2**20),
        ("2Gi", 2 * 2**30),
        ("1.5Gi", 3 * 2**29),
        ("256Mi", 256 * 2**20),
        ("1G", 10**9),
        ("500M", 5 * 10**8),
        ("128974848", 128974848),
        ("129e6", 129 * 10**6),
        ("1E3", 1000),
        ("1E", 10**18),
        ("12345678901m", 12345679),  # milli-bytes round up
    ],
)
def test_memory_bytes(text: str, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["", "abc", "1Kb", "1.2.3", "Gi", "1 Gi", "--1", "1e"])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_quantities_are_exact() -> None:
    assert parse_quantity("0.1") + parse_quantity("0.2") == Decimal("0.3")
    assert parse_quantity("1000m") == parse_quantity("1") and parse_quantity("1Ki") == 1024


# ------------------------------------------------------------------------------------------------- rollouts
def _deployment(
    *, desired: int = 3, generation: int = 2, observed: int = 2, progressing: str | None = None, **status: int
) -> V1Deployment:
    conditions = [V1DeploymentCondition(type="Progressing", status="False", reason=progressing, message="boom")]
    return V1Deployment(
        metadata=V1ObjectMeta(name="api", namespace="ns", generation=generation),
        spec=V1DeploymentSpec(
            replicas=desired, selector=V1LabelSelector(match_labels={"app": "api"}), template=V1PodTemplateSpec()
        ),
        status=V1DeploymentStatus(
            observed_generation=observed, conditions=conditions if progressing else None, **status
        ),
    )


def test_rollout_state_follows_kubectl() -> None:
    assert "observed" in rollout_state(_deployment(generation=3, observed=2)).message
    failed = rollout_state(_deployment(progressing="ProgressDeadlineExceeded", updated_replicas=1, replicas=4))
    assert failed.failed and not failed.done and failed.message == "boom"
    waiting = rollout_state(_deployment(updated_replicas=1, replicas=4, available_replicas=3))
    assert not waiting.done and waiting.message == "1 out of 3 new replicas have been updated"
    old = rollout_state(_deployment(updated_replicas=3, replicas=4, available_replicas=3))
    assert old.message == "1 old replicas are pending termination"
    unavailable = rollout_state(_deployment(updated_replicas=3, replicas=3, available_replicas=2))
    assert unavailable.message == "2 of 3 updated replicas are available"
    assert rollout_state(_deployment(updated_replicas=3, replicas=3, available_replicas=3)).done
    assert rollout_state(_deployment(desired=0)).done


def _template(image: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "api", **labels}},
        "spec": {"containers": [{"name": "api", "image": image}]},
    }


def test_rollback_patch_copies_template_without_hash_and_change_cause() -> None:
    deployment = {
        "metadata": {
            "annotations": {
                "deployment.kubernetes.io/revision": "3",
                "kubernetes.io/change-cause": "deploy v3",
                "team": "sre",
            }
        },
        "spec": {"template": _template("api:v3")},
    }
    replicaset = {
        "metadata": {
            "annotations": {
                "deployment.kubernetes.io/revision": "2",
                "deployment.kubernetes.io/desired-replicas": "3",
                "kubernetes.io/change-cause": "deploy v2",
            }
        },
        "spec": {"template": _template("api:v2", **{"pod-template-hash": "abc123"})},
    }
    patch = rollback_patch(deployment, replicaset)
    assert patch is not None
    template, annotations = patch[0], patch[1]
    assert template == {"op": "replace", "path": "/spec/template", "value": _template("api:v2")}
    # the Deployment's own revision stays; the ReplicaSet's change-cause comes along; the rest is kubectl's rule
    assert annotations["value"] == {"deployment.kubernetes.io/revision": "3", "kubernetes.io/change-cause": "deploy v2"}
    assert replicaset["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "abc123"  # input untouched


def test_rollback_keeps_the_deployments_mitigation_claims() -> None:
    """A claim guards the rollback it precedes: the rollback keeps the Deployment's, never a ReplicaSet's copy."""
    claim = "runbooks.io/mitigation.inc-1"
    deployment = {"metadata": {"annotations": {claim: "mine"}}, "spec": {"template": _template("api:v3")}}
    replicaset = {
        "metadata": {"annotations": {claim: "stale", "runbooks.io/mitigation.inc-0": "old"}},
        "spec": {"template": _template("api:v2")},
    }
    patch = rollback_patch(deployment, replicaset)
    assert patch is not None and patch[1]["value"] == {claim: "mine"}


def test_claim_annotation_is_a_valid_annotation_name() -> None:
    from tasks.kubernetes.claims import claim_annotation

    assert claim_annotation("inc-1a2b") == "runbooks.io/mitigation.inc-1a2b"
    long = claim_annotation("alertmanager:" + "x" * 200)
    prefix, name = long.split("/")
    assert prefix == "runbooks.io" and len(name) <= 63 and name[-1].isalnum()


def test_rollback_to_the_running_template_is_skipped() -> None:
    deployment = {"metadata": {}, "spec": {"template": _template("api:v3")}}
    replicaset = {"metadata": {}, "spec": {"template": _template("api:v3", **{"pod-template-hash": "h"})}}
    assert rollback_patch(deployment, replicaset) is None


def test_previous_revision() -> None:
    assert previous_revision([1, 2, 3]) == 2
    assert previous_revision([5, 2, 9]) == 5
    assert previous_revision([4]) is None


# -------------------------------------------------------------------------------------------------- clean-up
def test_old_replicasets_keep_current_scaled_and_newest_history() -> None:
    def rs(name: str, deployment: str, revision: int, replicas: int = 0, current: bool = False) -> dict[str, Any]:
        return {"name": name, "deployment": deployment, "revision": revision, "replicas": replicas, "current": current}

    items = [
        rs("api-1", "api", 1),
        rs("api-2", "api", 2, replicas=1),  # still has pods (an undo in progress): never deleted
        rs("api-3", "api", 3),
        rs("api-4", "api", 4),
        rs("api-5", "api", 5, replicas=3, current=True),
        rs("web-1", "web", 1),
        rs("web-2", "web", 2, current=True),
    ]
    kept, old = choose_old_replicasets(items, keep=1)
    assert [r["name"] for r in old] == ["api-1", "api-3"]
    assert kept == ["api-2", "api-4", "api-5", "web-1", "web-2"]
    kept, old = choose_old_replicasets(items, keep=0)
    assert [r["name"] for r in old] == ["api-1", "api-3", "api-4", "web-1"]


def test_protected_revisions_stay_beyond_the_history_and_a_lower_limit_wins() -> None:
    assert protected_revisions(8, [1, 2, 3, 7, 8], 2) == {
        2: "last known good",
        7: "previous revision",
        8: "current revision",
    }
    assert protected_revisions(1, [1], None) == {1: "current revision"}
    guard = protected_revisions(8, list(range(1, 9)), 2)
    items = [
        {"name": f"api-{r}", "deployment": "api", "revision": r, "replicas": 0, "current": r == 8, "keep": 3}
        | ({"protected": guard[r]} if r in guard else {})
        for r in range(1, 9)
    ]
    kept, old = choose_old_replicasets(items, keep=5)  # the Deployment's revisionHistoryLimit (3) is lower: it wins
    assert kept == ["api-2", "api-5", "api-6", "api-7", "api-8"]  # 7 (protected) counts as history, 2 stays anyway
    assert [r["name"] for r in old] == ["api-1", "api-3", "api-4"]


def test_configmaps_by_prefix_newest_by_time_then_name() -> None:
    t = dt.datetime(2026, 11, 1, tzinfo=UTC)
    same = [(f"deployment-alerts-2026110{d}-120000", t) for d in range(1, 7)]
    kept, old = choose_old_by_prefix(same, keep=3)
    assert kept == [f"deployment-alerts-2026110{d}-120000" for d in (6, 5, 4)]
    assert old == [f"deployment-alerts-2026110{d}-120000" for d in (3, 2, 1)]
    later = [("b", t), ("a", t + dt.timedelta(seconds=1)), ("c", None)]
    assert choose_old_by_prefix(later, keep=1) == (["a"], ["b", "c"])
    assert choose_old_by_prefix(later, keep=5) == (["a", "b", "c"], [])


# --------------------------------------------------------------------------------------------------- helpers
def test_selector_string() -> None:
    selector = V1LabelSelector(
        match_labels={"tier": "backend", "app": "api"},
        match_expressions=[
            V1LabelSelectorRequirement(key="env", operator="In", values=["prod", "staging"]),
            V1LabelSelectorRequirement(key="canary", operator="DoesNotExist"),
        ],
    )
    assert selector_string(selector) == "app=api,tier=backend,env in (prod,staging),!canary"
    assert selector_string(None) == ""


def _pod(name: str, ready: bool, minute: int, terminating: bool = False) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            creation_timestamp=dt.datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
            deletion_timestamp=dt.datetime(2026, 1, 1, tzinfo=UTC) if terminating else None,
        ),
        status=V1PodStatus(phase="Running", conditions=[V1PodCondition(type="Ready", status=str(ready))]),
    )


def test_pick_pod_prefers_ready_then_newest_and_skips_terminating() -> None:
    pods = [_pod("old-ready", True, 1), _pod("new-crashing", False, 5), _pod("gone", True, 9, terminating=True)]
    picked = pick_pod(pods)
    assert picked is not None and picked.metadata.name == "old-ready"
    assert pick_pod([]) is None


def test_grep_lines_and_log_prefixes() -> None:
    lines = ["INFO ok", "ERROR boom", "WARN slow", "error lower"]
    assert grep_lines(lines, "ERROR|WARN") == ["ERROR boom", "WARN slow"]
    assert grep_lines(lines, "error", ignore_case=True) == ["ERROR boom", "error lower"]
    logs = DeploymentLogs(
        deployment="api",
        namespace="ns",
        pods=[
            PodLogs(pod="a", namespace="ns", container="api", lines=["ERROR x"]),
            PodLogs(pod="b", namespace="ns", container="api", lines=["INFO y"]),
        ],
    )
    assert logs.grep("ERROR") == ["[pod/a/api] ERROR x"]


def test_exit_code_of_the_error_channel() -> None:
    assert exit_code_of('{"metadata":{},"status":"Success"}') == 0
    failure = (
        '{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}'
    )
    assert exit_code_of(failure) == 3
    with pytest.raises(KubernetesError, match="exec failed: no such file"):
        exit_code_of('{"status":"Failure","reason":"InternalError","message":"no such file"}')
    with pytest.raises(KubernetesError, match="without an exit status"):
        exit_code_of("")


# ---------------------------------------------------------------------------------------------------- errors
def _cluster(server: str = "https://127.0.0.1:1") -> KubernetesCluster:
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }
    config = KubernetesClusterConfig(config=kubeconfig, context_name="c")
    return KubernetesCluster(credentials=KubernetesCredentials(cluster_config=config))


def test_api_errors_say_what_to_do_and_whether_to_retry() -> None:
    cluster = _cluster()
    body = '{"kind":"Status","message":"deployments.apps \\"nope\\" not found","reason":"NotFound","code":404}'
    missing = api_error(404, "Not Found", body, "reading Deployment production/nope", cluster)
    assert 'deployments.apps "nope" not found' in str(missing) and "production/nope" in str(missing)
    assert not is_transient(missing)
    forbidden = api_error(403, "Forbidden", b'{"message":"cannot patch"}', "patching", cluster)
    assert "RBAC" in str(forbidden) and "runbooks-kubernetes" in str(forbidden) and not is_transient(forbidden)
    assert "credentials" in str(api_error(401, "Unauthorized", None, "x", cluster))
    assert not is_transient(api_error(409, "Conflict", None, "x", cluster))
    assert not is_transient(api_error(422, "Unprocessable", None, "x", cluster))
    assert is_transient(api_error(429, "Too Many Requests", None, "x", cluster))
    assert is_transient(api_error(503, "Service Unavailable", "not json", "x", cluster))


async def test_unreachable_cluster_is_transient() -> None:
    with pytest.raises(KubernetesError) as info:
        async with kube(_cluster(), "listing pods in production") as k:
            await k.core.list_namespaced_pod("production")
    assert info.value.transient and "127.0.0.1:1" in str(info.value) and "listing pods" in str(info.value)


async def test_unusable_kubeconfig_names_the_block() -> None:
    broken = KubernetesCluster(
        credentials=KubernetesCredentials(
            cluster_config=KubernetesClusterConfig(config={"contexts": []}, context_name="missing")
        )
    )
    with pytest.raises(ConfigurationError, match="'credentials'"):
        async with kube(broken, "listing pods"):
            pass


# ---------------------------------------------------------------------------------------------------- export
def test_export_strips_bookkeeping_and_hides_secrets() -> None:
    item = {
        "metadata": {"name": "x", "uid": "u", "resourceVersion": "1", "managedFields": [{}], "labels": {"a": "b"}},
        "data": {"k": "v"},
    }
    assert clean(item, "v1", "ConfigMap") == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "labels": {"a": "b"}},
        "data": {"k": "v"},
    }
    export = ResourceExport(namespace="ns", kinds=["secrets"], manifest="", secrets_manifest=SecretStr("hunter2"))
    assert "hunter2" not in repr(export) and "hunter2" not in str(export)
    assert "hunter2" not in export.model_dump_json()


def _hpa(annotations: dict[str, str] | None) -> V1HorizontalPodAutoscaler:
    return V1HorizontalPodAutoscaler(
        metadata=V1ObjectMeta(name="api", namespace="production", annotations=annotations),
        spec=V1HorizontalPodAutoscalerSpec(
            scale_target_ref=V1CrossVersionObjectReference(kind="Deployment", name="api"), max_replicas=10
        ),
    )


def test_hpa_floor_record_round_trips_and_a_broken_one_says_what_to_do() -> None:
    assert HpaFloor.of(_hpa(None)) is None
    floor = HpaFloor(min_replicas=3, max_replicas=10, incidents=["inc-1"], since="2026-11-26T00:00:00+00:00")
    assert HpaFloor.of(_hpa({FLOOR_ANNOTATION: floor.annotation()})) == floor
    with pytest.raises(KubernetesError, match="unreadable runbooks.io/raised-floor") as err:
        HpaFloor.of(_hpa({FLOOR_ANNOTATION: '{"minReplicas": "three"}'}))
    assert "by hand" in (err.value.hint or "") and not is_transient(err.value)


def test_the_token_lives_in_a_secret_field_and_reaches_the_kubeconfig_only_in_memory(tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(_cluster().credentials.cluster_config.config))  # type: ignore[union-attr]
    cluster = KubernetesCluster.from_kubeconfig(path)
    assert cluster.token is not None and cluster.token.get_secret_value() == "t0ken"
    stored = cluster.credentials.cluster_config.config  # type: ignore[union-attr]
    assert "t0ken" not in str(stored) and "t0ken" not in repr(cluster)
    assert cluster.clear_credentials_in_config() == []
    assert cluster.kubeconfig()["users"][0]["user"] == {"token": "t0ken"}  # type: ignore[index]
    assert "t0ken" not in str(stored)  # the stored dict was not touched
    assert _cluster().clear_credentials_in_config() == ["users[u].user.token"]  # what `runbooks check` warns of
