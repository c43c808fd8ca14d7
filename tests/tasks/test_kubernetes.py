"""The Kubernetes tasks against the sandbox's real API server, with the flows' RBAC-bound credentials.

Read-only tests look at the seeded ``production`` namespace; tests that change things make their own namespace
(set up with the admin kubeconfig, removed afterwards) with Deployments whose progress deadline is 15 s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import config
from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    AutoscalingV1Api,
    Configuration,
    CoreV1Api,
    CustomObjectsApi,
)
from kubernetes_asyncio.client.exceptions import ApiException

from blocks.kubernetes import KubernetesCluster
from kernel.errors import KubernetesError
from sandbox.manager import Sandbox
from tasks.kubernetes import (
    CERTIFICATE,
    FLOOR_ANNOTATION,
    LAST_KNOWN_GOOD,
    LastKnownGood,
    RolloutFailedError,
    RolloutTimeoutError,
    annotate_custom_resource,
    claim_turn,
    create_namespace,
    delete_configmaps_by_prefix,
    delete_old_replicasets,
    delete_pod,
    deployment_logs,
    describe_pod,
    exec_in_deployment,
    exec_in_pod,
    export_custom_resources,
    export_resources,
    get_custom_resource,
    get_deployment,
    label_namespace,
    list_configmaps_by_prefix,
    list_events,
    list_hpas,
    list_ingresses,
    list_nodes,
    list_old_replicasets,
    list_pods,
    list_services,
    pod_logs,
    read_last_known_good,
    record_last_known_good,
    release_hpa_floors,
    release_turn,
    rollout_history,
    rollout_restart,
    rollout_status,
    rollout_undo,
    scale_deployment,
    scale_out_deployment,
    set_image,
    set_resources,
    top_nodes,
    top_pods,
)
from tasks.kubernetes._api import kube
from tasks.kubernetes.custom import CustomResourceType
from tasks.kubernetes.secrets import copy_secret, delete_secret, read_tls_secret, restore_secret

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")

REGISTRY = "ghcr.io/genspark"
API = "ai-multimodel-api"
RULES = ("kube-system", "sandbox-node-behaviour")


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
async def admin(admin_kubeconfig: Path) -> AsyncIterator[ApiClient]:
    """Cluster admin, for set-up and for checking what the tasks did; never for the operations under test."""
    configuration = Configuration()
    await config.load_kube_config(config_file=str(admin_kubeconfig), client_configuration=configuration)
    async with ApiClient(configuration) as api:
        yield api


@pytest.fixture()
async def scratch(admin: ApiClient, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A namespace of this test's own, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"rb-{slug}-{uuid.uuid4().hex[:5]}"
    core = CoreV1Api(admin)
    await core.create_namespace({"metadata": {"name": name, "labels": {"runbooks-test": "true"}}})
    yield name
    await core.delete_namespace(name)


async def make_deployment(
    admin: ApiClient,
    namespace: str,
    name: str,
    *,
    image: str = f"{REGISTRY}/demo-api:v1",
    replicas: int = 2,
    behaviour: str | None = None,
) -> None:
    """A small Deployment like production's, with a 15 s progress deadline; ``behaviour`` steers the node."""
    pod_annotations = {"sandbox.runbooks.io/behaviour": behaviour} if behaviour else {}
    await AppsV1Api(admin).create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "annotations": {"kubernetes.io/change-cause": f"deploy {image}"}},
            "spec": {
                "replicas": replicas,
                "progressDeadlineSeconds": 15,
                "revisionHistoryLimit": 10,
                "selector": {"matchLabels": {"app": name}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": pod_annotations},
                    "spec": {
                        "containers": [
                            {
                                "name": name,
                                "image": image,
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            }
                        ]
                    },
                },
            },
        },
    )


async def ready(cluster: KubernetesCluster, namespace: str, name: str) -> None:
    await rollout_status(cluster, name, namespace, timeout_s=60, poll_s=0.5)


@pytest.fixture()
async def broken_images_fail(admin: ApiClient) -> AsyncIterator[None]:
    """The node makes containers of ``*:broken`` images crash-loop; the previous rules come back afterwards."""
    core = CoreV1Api(admin)
    try:
        previous: dict[str, str] | None = (await core.read_namespaced_config_map(RULES[1], RULES[0])).data or {}
    except ApiException as err:
        if err.status != 404:
            raise
        previous = None
    rules = json.loads((previous or {}).get("rules.json") or "{}")
    rules["failing_images"] = sorted({*rules.get("failing_images", []), "*:broken"})
    body = {"metadata": {"name": RULES[1], "namespace": RULES[0]}, "data": {"rules.json": json.dumps(rules)}}
    if previous is None:
        await core.create_namespaced_config_map(RULES[0], body)
    else:
        await core.patch_namespaced_config_map(RULES[1], RULES[0], body)
    yield
    if previous is None:
        await core.delete_namespaced_config_map(RULES[1], RULES[0])
    else:
        await core.replace_namespaced_config_map(
            RULES[1], RULES[0], {"metadata": {"name": RULES[1], "namespace": RULES[0]}, "data": previous}
        )


# ------------------------------------------------------------------------------------- reads of production
async def test_list_pods_wide(kubernetes_cluster: KubernetesCluster) -> None:
    pods = [p for p in await list_pods(kubernetes_cluster, label_selector=f"app={API}") if p.status != "Terminating"]
    assert len(pods) == 3
    for pod in pods:
        assert pod.namespace == "production" and pod.phase == "Running" and pod.status == "Running"
        assert pod.ready == "1/1" and pod.is_ready and pod.restarts == 0 and pod.reason is None
        assert pod.node == "sandbox-node-1" and pod.pod_ip and pod.age_s is not None
        assert pod.images == [f"{REGISTRY}/{API}:v2.5.0"]
    everything = await list_pods(kubernetes_cluster)
    assert {p.labels.get("app") for p in everything} >= {API, "ai-multimodel-frontend", "postgresql", "redis"}


async def test_list_nodes_with_conditions(kubernetes_cluster: KubernetesCluster) -> None:
    (node,) = await list_nodes(kubernetes_cluster)
    assert node.name == "sandbox-node-1" and node.ready and node.problems == []
    assert {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"} <= {c.type for c in node.conditions}
    assert node.addresses["InternalIP"] and node.kubelet_version == "v1.20.2"
    assert node.allocatable["cpu"] == "8" and node.capacity["memory"] == "32Gi" and "worker" in node.roles


async def test_list_events_sorted_last_and_warnings(kubernetes_cluster: KubernetesCluster) -> None:
    events = await list_events(kubernetes_cluster)
    assert events, "the seeded rollouts leave events behind"
    times = [e.last_seen for e in events]
    assert all(t is not None for t in times) and times == sorted(times)  # type: ignore[type-var]
    last = await list_events(kubernetes_cluster, last=3)
    assert len(last) == 3 and last[-1].last_seen == events[-1].last_seen
    about = await list_events(kubernetes_cluster, involved_object=API)
    assert f"Deployment/{API}" in {e.object for e in about} and all(e.object.endswith(f"/{API}") for e in about)
    warnings = await list_events(kubernetes_cluster, warnings_only=True)
    assert all(e.type == "Warning" for e in warnings)


async def test_list_services(kubernetes_cluster: KubernetesCluster) -> None:
    services = {s.name: s for s in await list_services(kubernetes_cluster)}
    assert {API, "ai-multimodel-frontend", "postgresql", "redis"} <= set(services)
    api = services[API]
    assert api.type == "ClusterIP" and api.cluster_ip and api.ports == ["8000/TCP"] and api.selector == {"app": API}


async def test_list_ingresses(kubernetes_cluster: KubernetesCluster) -> None:
    (ingress,) = await list_ingresses(kubernetes_cluster)
    hosts = ["ai-multimodel.genspark.ai", "api.ai-multimodel.genspark.ai"]
    assert ingress.name == "ai-multimodel" and ingress.hosts == hosts
    assert [(t.hosts, t.secret_name) for t in ingress.tls] == [(hosts, "ai-multimodel-tls")]
    assert {(b.host, b.path, b.service, b.port) for b in ingress.backends} == {
        (hosts[0], "/", "ai-multimodel-frontend", "3000"),
        (hosts[1], "/", API, "8000"),
    }
    assert ingress.annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"


async def test_list_hpas(kubernetes_cluster: KubernetesCluster) -> None:
    (hpa,) = await list_hpas(kubernetes_cluster)
    assert hpa.name == API and hpa.target == f"Deployment/{API}"
    assert (hpa.min_replicas, hpa.max_replicas, hpa.target_cpu_percent) == (3, 10, 70)


async def test_get_deployment_and_history(kubernetes_cluster: KubernetesCluster) -> None:
    """Production's API Deployment; other test modules may roll it out and back, so no fixed revision numbers
    here (the exact history is checked in a namespace of our own, below)."""
    api = await get_deployment(kubernetes_cluster, API)
    assert (api.replicas, api.updated, api.ready, api.available, api.unavailable) == (3, 3, 3, 3, 0)
    assert api.revision is not None and api.images and api.images[0].startswith(f"{REGISTRY}/{API}:")
    assert api.change_cause and api.change_cause.startswith("deploy ")
    assert api.containers[0].requests == {"cpu": "500m", "memory": "1Gi"}
    assert {(c.type, c.status) for c in api.conditions} >= {("Available", "True"), ("Progressing", "True")}
    assert api.last_rollout_at is not None and api.selector == f"app={API}" and api.progress_deadline_s == 600

    history = await rollout_history(kubernetes_cluster, API)
    revisions = [r.revision for r in history.revisions]
    assert revisions == sorted(set(revisions)) and history.current_revision == api.revision
    (current,) = [r for r in history.revisions if r.current]
    assert current.revision == api.revision and current.images == api.images and current.replicas == 3
    assert current.change_cause == api.change_cause and current.replicaset.startswith(f"{API}-")
    assert all(r.created_at and r.images for r in history.revisions)
    assert api.last_rollout_at == max(r.created_at for r in history.revisions if r.created_at)


async def test_top_pods_and_nodes(kubernetes_cluster: KubernetesCluster) -> None:
    by_memory = await top_pods(kubernetes_cluster, sort_by="memory")
    assert len(by_memory) >= 7 and all(p.cpu_m > 0 and p.memory_bytes > 2**20 for p in by_memory)
    assert [p.memory_bytes for p in by_memory] == sorted((p.memory_bytes for p in by_memory), reverse=True)
    by_cpu = await top_pods(kubernetes_cluster, sort_by="cpu", label_selector=f"app={API}")
    assert len(by_cpu) == 3 and [p.cpu_m for p in by_cpu] == sorted((p.cpu_m for p in by_cpu), reverse=True)
    assert by_cpu[0].containers[0].name == API
    (node,) = await top_nodes(kubernetes_cluster)
    assert node.name == "sandbox-node-1" and node.cpu_m >= sum(p.cpu_m for p in by_memory)
    assert node.cpu_percent is not None and 0 < node.cpu_percent < 100
    assert node.memory_percent is not None and 0 < node.memory_percent < 100


async def test_get_certificate(kubernetes_cluster: KubernetesCluster) -> None:
    cert = await get_custom_resource(kubernetes_cluster, CERTIFICATE, "ai-multimodel-tls")
    assert cert.kind == "Certificate" and cert.api_version == "cert-manager.io/v1"
    assert cert.spec["secretName"] == "ai-multimodel-tls" and cert.spec["issuerRef"]["name"] == "letsencrypt-prod"


async def test_exec_in_deployment_and_pod(kubernetes_cluster: KubernetesCluster, sandbox: Sandbox) -> None:
    ping = await exec_in_deployment(
        kubernetes_cluster, "redis", ["redis-cli", "-u", sandbox.settings.redis_url, "ping"]
    )
    assert ping.ok and ping.stdout.strip() == "PONG" and ping.pod.startswith("redis-")
    script = "echo out; echo err >&2; exit 3"
    result = await exec_in_pod(kubernetes_cluster, ping.pod, ["sh", "-c", script])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    missing = await exec_in_pod(kubernetes_cluster, ping.pod, ["no-such-command-xyz"])
    assert missing.exit_code == 127 and not missing.ok


async def test_errors_name_the_object_and_rbac(kubernetes_cluster: KubernetesCluster) -> None:
    with pytest.raises(KubernetesError) as info:
        await get_deployment(kubernetes_cluster, "no-such-deployment")
    assert info.value.status_code == 404 and not info.value.transient
    assert "production/no-such-deployment" in str(info.value) and '"no-such-deployment" not found' in str(info.value)
    # nodes are read-only for the flows' user: the 403 says so and where to fix it (dry run: harmless anyway)
    with pytest.raises(KubernetesError) as denied:
        async with kube(kubernetes_cluster, "deleting node sandbox-node-1") as k:
            await k.core.delete_node("sandbox-node-1", dry_run="All")
    assert denied.value.status_code == 403 and not denied.value.transient
    assert "runbooks-flows" in str(denied.value) and "RBAC" in str(denied.value)


# ----------------------------------------------------------------------------------------------- exports
async def test_export_custom_resources_which_all_leaves_out(kubernetes_cluster: KubernetesCluster) -> None:
    export = await export_custom_resources(kubernetes_cluster, [CERTIFICATE])
    assert export.counts == {"certificates.cert-manager.io": 1} and not export.skipped
    [certificate] = yaml.safe_load(export.manifest)["items"]
    assert (certificate["kind"], certificate["metadata"]["name"]) == ("Certificate", "ai-multimodel-tls")
    # a type the flows' role may not read is an error, never a silent gap in the backup
    widgets = CustomResourceType(group="example.com", version="v1", plural="widgets")
    with pytest.raises(KubernetesError, match="widgets"):
        await export_custom_resources(kubernetes_cluster, [widgets])


async def test_export_resources_keeps_secrets_out_of_logs_and_repr(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = await CoreV1Api(admin).read_namespaced_secret("ai-multimodel-secrets", "production")
    encoded = list(secret.data.values())
    plain = [base64.b64decode(v).decode() for v in encoded]
    prefect_logger = logging.getLogger("prefect")
    prefect_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG):
            export = await export_resources(kubernetes_cluster, include_secrets=True)
    finally:
        prefect_logger.removeHandler(caplog.handler)
    assert export.secrets_manifest is not None
    text = export.secrets_manifest.get_secret_value()
    assert all(value in text for value in encoded)
    for value in [*encoded, *plain]:
        assert value not in caplog.text and value not in repr(export) and value not in str(export)
        assert value not in export.manifest and value not in export.model_dump_json()
    secrets = yaml.safe_load(text)
    assert {s["metadata"]["name"] for s in secrets["items"]} == {
        "ai-multimodel-secrets",
        "postgresql-credentials",
        "ai-multimodel-tls",
    }
    manifest = yaml.safe_load(export.manifest)
    assert manifest["kind"] == "List" and manifest["apiVersion"] == "v1"
    kinds = {(i["kind"], i["metadata"]["name"]) for i in manifest["items"]}
    assert {("Deployment", API), ("Service", API), ("HorizontalPodAutoscaler", API)} <= kinds
    assert ("ConfigMap", "ai-multimodel-config") in kinds and not any(k == "Secret" for k, _ in kinds)
    assert export.counts["deployments"] == 4 and export.counts["replicasets"] >= 4 and export.counts["secrets"] == 3
    for item in manifest["items"]:
        assert not {"managedFields", "resourceVersion", "uid"} & set(item["metadata"])
    only = await export_resources(kubernetes_cluster, kinds=["configmaps"])
    assert only.secrets_manifest is None and only.kinds == ["configmaps"] and list(only.counts) == ["configmaps"]
    names = {i["metadata"]["name"] for i in yaml.safe_load(only.manifest)["items"]}
    assert {"ai-multimodel-config", "deployment-alerts-20261106-120000"} <= names


# ----------------------------------------------------------------------------------- changes, own namespace
async def test_create_and_label_namespace(kubernetes_cluster: KubernetesCluster, admin: ApiClient) -> None:
    name = f"rb-recovery-{uuid.uuid4().hex[:6]}"
    try:
        created = await create_namespace(kubernetes_cluster, name, {"purpose": "test"})
        assert created.created and created.labels == {"purpose": "test"}
        again = await create_namespace(kubernetes_cluster, name, {"disaster-recovery": "true"})
        assert not again.created and again.labels["purpose"] == "test" and again.labels["disaster-recovery"] == "true"
        labelled = await label_namespace(kubernetes_cluster, name, {"disaster-recovery": "false", "purpose": None})
        assert labelled.labels.get("disaster-recovery") == "false" and "purpose" not in labelled.labels
        ns = await CoreV1Api(admin).read_namespace(name)
        assert ns.metadata.labels.get("disaster-recovery") == "false"
    finally:
        await CoreV1Api(admin).delete_namespace(name)


async def test_scale_and_set_resources(kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=1)
    await ready(kubernetes_cluster, scratch, "demo-api")
    scaled = await scale_deployment(kubernetes_cluster, "demo-api", 3, scratch)
    assert (scaled.previous_replicas, scaled.replicas, scaled.changed, scaled.hpa) == (1, 3, True, None)
    again = await scale_deployment(kubernetes_cluster, "demo-api", 3, scratch)
    assert (again.previous_replicas, again.changed) == (3, False)
    done = await rollout_status(kubernetes_cluster, "demo-api", scratch, timeout_s=60, poll_s=0.5)
    assert done.deployment.available == 3 and done.message == "successfully rolled out"
    change = await set_resources(
        kubernetes_cluster, "demo-api", scratch, requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "4Gi"}
    )
    assert change.changed and change.previous == {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {}}
    info = await get_deployment(kubernetes_cluster, "demo-api", scratch)
    assert info.containers[0].requests == {"cpu": "1", "memory": "2Gi"} and info.containers[0].limits == {
        "memory": "4Gi"
    }
    same = await set_resources(kubernetes_cluster, "demo-api", scratch, requests={"cpu": "1000m"})
    assert not same.changed
    with pytest.raises(KubernetesError, match="no container 'nope'"):
        await set_resources(kubernetes_cluster, "demo-api", scratch, container="nope", limits={"cpu": "1"})
    with pytest.raises(KubernetesError, match="not a Kubernetes quantity"):
        await set_resources(kubernetes_cluster, "demo-api", scratch, limits={"cpu": "lots"})


async def test_last_known_good_is_an_annotation_that_does_not_roll_out(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=1)
    await ready(kubernetes_cluster, scratch, "demo-api")
    assert await read_last_known_good(kubernetes_cluster, "demo-api", scratch) is None
    before = await get_deployment(kubernetes_cluster, "demo-api", scratch)
    record = LastKnownGood(revision=before.revision or 0, images=before.images, time="2026-12-04T12:00:00Z", run="r1")
    await record_last_known_good(kubernetes_cluster, "demo-api", record, scratch)
    assert await read_last_known_good(kubernetes_cluster, "demo-api", scratch) == record
    raw = (await AppsV1Api(admin).read_namespaced_deployment("demo-api", scratch)).metadata.annotations[LAST_KNOWN_GOOD]
    assert json.loads(raw) == {
        "revision": before.revision,
        "images": before.images,
        "time": "2026-12-04T12:00:00Z",
        "run": "r1",
    }
    assert (await get_deployment(kubernetes_cluster, "demo-api", scratch)).revision == before.revision  # no rollout
    await AppsV1Api(admin).patch_namespaced_deployment(
        "demo-api", scratch, {"metadata": {"annotations": {LAST_KNOWN_GOOD: "not json"}}}
    )
    assert await read_last_known_good(kubernetes_cluster, "demo-api", scratch) is None


async def test_scale_out_raises_the_hpa_floor_until_every_incident_releases_it(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    """``kubectl scale`` alone is undone by the HPA; the scale-out holds the HPA's floor for its incidents."""
    autoscaling = AutoscalingV1Api(admin)
    await make_deployment(admin, scratch, "demo-api", replicas=2)
    await autoscaling.create_namespaced_horizontal_pod_autoscaler(
        scratch,
        {
            "metadata": {"name": "demo-api"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo-api"},
                "minReplicas": 2,
                "maxReplicas": 4,
                "targetCPUUtilizationPercentage": 70,
            },
        },
    )

    async def bounds() -> tuple[int, int, str | None]:
        hpa = await autoscaling.read_namespaced_horizontal_pod_autoscaler("demo-api", scratch)
        return hpa.spec.min_replicas, hpa.spec.max_replicas, (hpa.metadata.annotations or {}).get(FLOOR_ANNOTATION)

    out = await scale_out_deployment(kubernetes_cluster, "demo-api", 6, "inc-a", scratch)
    assert (out.previous_replicas, out.replicas, out.hpa, out.changed) == (2, 6, "demo-api", True)
    assert (out.hpa_min_replicas, out.hpa_max_replicas, out.original_min_replicas) == (6, 6, 2)
    low, high, record = await bounds()
    assert (low, high) == (6, 6) and record is not None
    assert json.loads(record) | {"since": ""} == {
        "minReplicas": 2,
        "maxReplicas": 4,
        "incidents": ["inc-a"],
        "since": "",
    }

    again = await scale_out_deployment(kubernetes_cluster, "demo-api", 6, "inc-a", scratch)
    assert not again.changed and (await bounds())[2] == record  # a re-run changes nothing, records nothing new
    # a second incident joins the floor; the bounds found before the first raise stay recorded
    other = await scale_out_deployment(kubernetes_cluster, "demo-api", 5, "inc-b", scratch)
    assert (other.replicas, other.hpa_min_replicas, other.original_min_replicas) == (6, 6, 2)  # never scales in
    assert json.loads((await bounds())[2] or "{}")["incidents"] == ["inc-a", "inc-b"]

    [dry] = await release_hpa_floors(kubernetes_cluster, "inc-a", scratch, dry_run=True)
    assert dry.remaining_incidents == ["inc-b"] and (await bounds())[:2] == (6, 6)
    [first] = await release_hpa_floors(kubernetes_cluster, "inc-a", scratch)
    assert (first.restored, first.remaining_incidents, first.min_replicas) == (False, ["inc-b"], 6)
    assert (await bounds())[:2] == (6, 6)  # inc-b still holds the floor
    assert await release_hpa_floors(kubernetes_cluster, "inc-a", scratch) == []  # idempotent
    [last] = await release_hpa_floors(kubernetes_cluster, "inc-b", scratch)
    assert (last.restored, last.deployment, last.min_replicas, last.max_replicas) == (True, "demo-api", 2, 4)
    assert await bounds() == (2, 4, None)


async def test_scale_out_without_an_hpa_is_kubectl_scale_that_never_scales_in(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=3)
    out = await scale_out_deployment(kubernetes_cluster, "demo-api", 1, "inc-x", scratch)
    assert (out.previous_replicas, out.replicas, out.hpa, out.changed) == (3, 3, None, False)
    out = await scale_out_deployment(kubernetes_cluster, "demo-api", 4, "inc-x", scratch)
    assert (out.previous_replicas, out.replicas, out.changed) == (3, 4, True)
    assert await release_hpa_floors(kubernetes_cluster, "inc-x", scratch) == []


async def test_broken_image_fails_rollout_then_undo_restores(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str, broken_images_fail: None
) -> None:
    good, bad = f"{REGISTRY}/demo-api:v1", f"{REGISTRY}/demo-api:broken"
    await make_deployment(admin, scratch, "demo-api", image=good, replicas=2)
    await ready(kubernetes_cluster, scratch, "demo-api")
    change = await set_image(kubernetes_cluster, "demo-api", bad, scratch)
    assert (change.previous_image, change.image, change.changed, change.container) == (good, bad, True, "demo-api")
    with pytest.raises(RolloutTimeoutError) as slow:
        await rollout_status(kubernetes_cluster, "demo-api", scratch, timeout_s=2, poll_s=0.5)
    assert "within 2s" in str(slow.value) and "undo" in str(slow.value)
    with pytest.raises(RolloutFailedError) as failed:
        await rollout_status(kubernetes_cluster, "demo-api", scratch, timeout_s=60, poll_s=1)
    message = str(failed.value)
    assert "ProgressDeadlineExceeded" in message and "rollout undo deployment/demo-api" in message
    assert "CrashLoopBackOff" in message and bad in message
    assert failed.value.deployment == "demo-api" and not failed.value.transient

    undo = await rollout_undo(kubernetes_cluster, "demo-api", scratch)
    assert (undo.outcome, undo.from_revision, undo.to_revision, undo.images) == ("rolled-back", 2, 1, [good])
    assert undo.change_cause == f"deploy {good}"
    done = await rollout_status(kubernetes_cluster, "demo-api", scratch, timeout_s=60, poll_s=0.5)
    assert done.deployment.images == [good] and done.deployment.available == 2
    pods = [p for p in await list_pods(kubernetes_cluster, scratch) if p.status != "Terminating"]
    assert len(pods) == 2 and all(p.is_ready and p.images == [good] for p in pods)
    history = await rollout_history(kubernetes_cluster, "demo-api", scratch)
    assert [(r.revision, r.images, r.current) for r in history.revisions] == [(2, [bad], False), (3, [good], True)]
    assert history.revisions[-1].change_cause == f"deploy {good}"
    assert history.revisions[0].change_cause == f"set image demo-api={bad}"

    skipped = await rollout_undo(kubernetes_cluster, "demo-api", scratch, to_revision=3)
    assert skipped.outcome == "skipped" and "already runs" in skipped.message
    with pytest.raises(KubernetesError, match="revision 7 is not in its history"):
        await rollout_undo(kubernetes_cluster, "demo-api", scratch, to_revision=7)


async def test_rollout_restart(kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=1)
    await ready(kubernetes_cluster, scratch, "demo-api")
    before = {p.name for p in await list_pods(kubernetes_cluster, scratch)}
    restart = await rollout_restart(kubernetes_cluster, "demo-api", scratch)
    done = await rollout_status(kubernetes_cluster, "demo-api", scratch, timeout_s=60, poll_s=0.5)
    assert done.deployment.revision == 2
    dep = await AppsV1Api(admin).read_namespaced_deployment("demo-api", scratch)
    assert dep.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"] == restart.restarted_at
    live = {p.name for p in await list_pods(kubernetes_cluster, scratch) if p.status != "Terminating"}
    assert live and not live & before


async def test_logs_of_pods_and_deployments(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=2, behaviour="error-logs")
    await make_deployment(admin, scratch, "crashing-api", replicas=1, behaviour="crashloop")
    await ready(kubernetes_cluster, scratch, "demo-api")
    for _ in range(60):  # the app logs about a line a second, a third of them errors
        one = await deployment_logs(kubernetes_cluster, "demo-api", scratch, tail_lines=40)
        if one.grep("ERROR|WARN") and len(one.lines) >= 5:
            break
        await asyncio.sleep(0.5)
    assert len(one.pods) == 1 and 5 <= len(one.lines) <= 40
    errors = one.grep("ERROR|WARN")
    assert errors and all("ERROR" in line or "WARN" in line for line in errors)
    both = await deployment_logs(kubernetes_cluster, "demo-api", scratch, all_pods=True, since_seconds=3600)
    assert len(both.pods) == 2 and all(line.startswith("[pod/demo-api-") for line in both.lines)
    pod = one.pods[0]
    tail = await pod_logs(kubernetes_cluster, pod.pod, scratch, tail_lines=3, container="demo-api")
    assert len(tail.lines) == 3 and tail.container == "demo-api" and tail.pod == pod.pod

    for _ in range(40):  # --previous needs a crashed run behind the current one (one every 6 s)
        crashing = (await list_pods(kubernetes_cluster, scratch, label_selector="app=crashing-api"))[0]
        if crashing.restarts >= 1:
            break
        await asyncio.sleep(0.5)
    assert crashing.status == "CrashLoopBackOff" and crashing.reason == "CrashLoopBackOff" and not crashing.is_ready
    assert crashing.last_termination_reason == "Error"
    previous = await pod_logs(kubernetes_cluster, crashing.name, scratch, previous=True)
    assert previous.previous and previous.lines[-1] == "FATAL crashing-api exited with status 1"
    with pytest.raises(KubernetesError) as info:
        await pod_logs(kubernetes_cluster, pod.pod, scratch, previous=True)
    assert (
        info.value.status_code == 400
        and not info.value.transient
        and "previous terminated container" in str(info.value)
    )


async def test_delete_pod(kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=1)
    await ready(kubernetes_cluster, scratch, "demo-api")
    (pod,) = await list_pods(kubernetes_cluster, scratch)
    dry = await delete_pod(kubernetes_cluster, pod.name, scratch, dry_run=True)
    assert dry.outcome == "would-delete"
    assert (await CoreV1Api(admin).read_namespaced_pod(pod.name, scratch)).metadata.deletion_timestamp is None
    deleted = await delete_pod(kubernetes_cluster, pod.name, scratch)
    assert deleted.outcome == "deleted"
    gone = await delete_pod(kubernetes_cluster, "no-such-pod", scratch)
    assert gone.outcome == "already-gone"


async def test_describe_pod_as_kubectl_describe(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    """A production API pod: its limits, its owner up to the Deployment; a crash-looping one: restarts and the last
    termination's reason and exit code, as the pod's status says (high-memory reads OOMKilled there)."""
    (pod, *_) = await list_pods(kubernetes_cluster, label_selector="app=ai-multimodel-api")
    described = await describe_pod(kubernetes_cluster, pod.name)
    api = described.container()
    assert (api.name, api.limits["memory"], api.requests["memory"]) == ("ai-multimodel-api", "4Gi", "1Gi")
    assert described.owner is not None and described.owner.startswith("ReplicaSet/ai-multimodel-api-")
    assert described.deployment == "ai-multimodel-api" and api.state == "Running"
    with pytest.raises(KubernetesError, match="no container 'sidecar'"):
        described.container("sidecar")

    await make_deployment(admin, scratch, "crasher", replicas=1, behaviour="crashloop")

    async def restarted() -> Any:
        pods = await list_pods(kubernetes_cluster, scratch)
        return pods and pods[0].restarts >= 1 and (await describe_pod(kubernetes_cluster, pods[0].name, scratch))

    deadline = asyncio.get_running_loop().time() + 60
    while not (crashed := await restarted()):
        assert asyncio.get_running_loop().time() < deadline, "the crashloop pod never restarted"
        await asyncio.sleep(1)
    c = crashed.container()
    raw = (await CoreV1Api(admin).read_namespaced_pod(crashed.pod.name, scratch)).status.container_statuses[0]
    assert c.restarts >= 1 and c.state.startswith("Waiting (CrashLoopBackOff")
    assert (c.last_termination_reason, c.last_termination_exit_code) == ("Error", 1)
    assert raw.last_state.terminated.reason == "Error" and c.limits == {}  # no limit: none reported
    assert crashed.deployment == "crasher"


async def test_one_turn_at_a_time_on_a_deployment(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    """claim_turn: of two runs one holds it, the other is told who; released, the other gets it; a turn older than
    hold_s (its run died) is taken over; a run never releases another's."""
    await make_deployment(admin, scratch, "demo-api", replicas=1)
    a = await claim_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-a", hold_s=600, namespace=scratch)
    b = await claim_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-b", hold_s=600, namespace=scratch)
    assert (a.granted, b.granted, b.run) == (True, False, "run-a")
    assert (
        await claim_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-a", hold_s=600, namespace=scratch)
    ).granted
    assert not await release_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-b", scratch)
    assert await release_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-a", scratch)
    annotations = (await AppsV1Api(admin).read_namespaced_deployment("demo-api", scratch)).metadata.annotations or {}
    assert "runbooks.io/turn.delete-pod" not in annotations  # given back: gone from the object
    assert (
        await claim_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-b", hold_s=600, namespace=scratch)
    ).granted
    stale = await claim_turn(kubernetes_cluster, "demo-api", "delete-pod", "run-c", hold_s=0, namespace=scratch)
    assert stale.granted and stale.run == "run-c"


async def test_old_replicasets_clean_up(kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str) -> None:
    await make_deployment(admin, scratch, "demo-api", replicas=0)  # no pods: each image is a new revision at once
    for tag in ("v2", "v3", "v4"):
        await set_image(kubernetes_cluster, "demo-api", f"{REGISTRY}/demo-api:{tag}", scratch)
        await ready(kubernetes_cluster, scratch, "demo-api")
    history = await rollout_history(kubernetes_cluster, "demo-api", scratch)
    names = {r.revision: r.replicaset for r in history.revisions}
    assert sorted(names) == [1, 2, 3, 4]
    plan = await list_old_replicasets(kubernetes_cluster, scratch, keep=1)
    assert [(r.deployment, r.revision) for r in plan.old] == [("demo-api", 1), ("demo-api", 2)]
    assert sorted(plan.kept) == sorted([names[3], names[4]])
    dry = await delete_old_replicasets(kubernetes_cluster, scratch, keep=1, dry_run=True)
    assert dry.dry_run and sorted(dry.deleted) == sorted([names[1], names[2]])
    assert {d.outcome for d in dry.deletions} == {"would-delete"}
    rs = await AppsV1Api(admin).list_namespaced_replica_set(scratch)
    assert len(rs.items) == 4, "a dry run deletes nothing"
    done = await delete_old_replicasets(kubernetes_cluster, scratch, keep=1, deployment="demo-api")
    assert {d.outcome for d in done.deletions} == {"deleted"} and len(done.deletions) == 2
    after = await rollout_history(kubernetes_cluster, "demo-api", scratch)
    assert [r.revision for r in after.revisions] == [3, 4]
    rerun = await delete_old_replicasets(kubernetes_cluster, scratch, keep=1)
    assert rerun.deletions == []


async def test_configmaps_by_prefix_clean_up(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    core = CoreV1Api(admin)
    names = [f"deployment-alerts-2026110{day}-120000" for day in range(1, 6)]
    for name in [*names, "ai-multimodel-config"]:
        await core.create_namespaced_config_map(scratch, {"metadata": {"name": name}, "data": {"k": "v"}})
    plan = await list_configmaps_by_prefix(kubernetes_cluster, "deployment-alerts-", scratch, keep=3)
    assert plan.kept == names[:1:-1] and plan.old == [names[1], names[0]]
    dry = await delete_configmaps_by_prefix(kubernetes_cluster, "deployment-alerts-", scratch, keep=3, dry_run=True)
    assert dry.deleted == [names[1], names[0]] and {d.outcome for d in dry.deletions} == {"would-delete"}

    def left(items: Any) -> set[str]:
        return {c.metadata.name for c in items.items if c.metadata.name != "kube-root-ca.crt"}

    assert left(await core.list_namespaced_config_map(scratch)) == {*names, "ai-multimodel-config"}
    done = await delete_configmaps_by_prefix(kubernetes_cluster, "deployment-alerts-", scratch, keep=3)
    assert done.deleted == [names[1], names[0]] and {d.outcome for d in done.deletions} == {"deleted"}
    assert left(await core.list_namespaced_config_map(scratch)) == {*names[2:], "ai-multimodel-config"}
    rerun = await delete_configmaps_by_prefix(kubernetes_cluster, "deployment-alerts-", scratch, keep=3)
    assert rerun.deletions == [] and rerun.kept == names[:1:-1]


async def test_annotate_certificate(kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str) -> None:
    await CustomObjectsApi(admin).create_namespaced_custom_object(
        "cert-manager.io",
        "v1",
        scratch,
        "certificates",
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": "ai-multimodel-tls"},
            "spec": {"secretName": "ai-multimodel-tls", "dnsNames": ["x.example"], "issuerRef": {"name": "le"}},
        },
    )
    key = "cert-manager.io/issue-temporary-certificate"
    change = await annotate_custom_resource(
        kubernetes_cluster, CERTIFICATE, "ai-multimodel-tls", {key: "true"}, scratch
    )
    assert change.changed and change.annotations[key] == "true" and key not in change.previous
    same = await annotate_custom_resource(kubernetes_cluster, CERTIFICATE, "ai-multimodel-tls", {key: "true"}, scratch)
    assert not same.changed
    with pytest.raises(KubernetesError, match="already has a value"):
        await annotate_custom_resource(kubernetes_cluster, CERTIFICATE, "ai-multimodel-tls", {key: "false"}, scratch)
    removed = await annotate_custom_resource(kubernetes_cluster, CERTIFICATE, "ai-multimodel-tls", {key: None}, scratch)
    assert removed.changed and key not in removed.annotations
    cert = await get_custom_resource(kubernetes_cluster, CERTIFICATE, "ai-multimodel-tls", scratch)
    assert key not in cert.annotations and cert.spec["dnsNames"] == ["x.example"]


async def test_tls_secret_read_copied_deleted_and_created_again(
    kubernetes_cluster: KubernetesCluster, admin: ApiClient, scratch: str
) -> None:
    """The renewal's Secret steps (tasks/kubernetes/secrets.py): the certificate is read and the key never is, the
    copy shows nothing, a delete is idempotent, the copy creates the same Secret again and never overwrites one."""
    crt = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = b"-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n"
    data = {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}
    await CoreV1Api(admin).create_namespaced_secret(
        scratch,
        {"metadata": {"name": "edge-tls", "annotations": {"a": "b"}}, "type": "kubernetes.io/tls", "data": data},
    )
    read = await read_tls_secret.fn(kubernetes_cluster, "edge-tls", scratch)
    assert read is not None and read.certificate_pem == crt.decode() and read.has_key and read.annotations == {"a": "b"}
    assert "secret-key-material" not in read.model_dump_json()
    assert await read_tls_secret.fn(kubernetes_cluster, "missing-tls", scratch) is None

    copy = await copy_secret.fn(kubernetes_cluster, "edge-tls", scratch)
    assert data["tls.key"] not in repr(copy) and data["tls.key"] not in copy.model_dump_json()
    assert [(await delete_secret.fn(kubernetes_cluster, "edge-tls", scratch)).outcome for _ in range(2)] == [
        "deleted",
        "already-gone",
    ]
    restored = await restore_secret.fn(kubernetes_cluster, copy.manifest)
    assert restored.outcome == "created"
    again = await CoreV1Api(admin).read_namespaced_secret("edge-tls", scratch)
    assert again.data == data and again.type == "kubernetes.io/tls" and again.metadata.annotations == {"a": "b"}
    with pytest.raises(KubernetesError) as err:
        await restore_secret.fn(kubernetes_cluster, copy.manifest)
    assert err.value.status_code == 409
