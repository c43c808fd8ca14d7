"""Tasks on Kubernetes: every ``kubectl`` step of the runbooks as a typed Prefect task over the Kubernetes API.

Each task takes the environment's ``KubernetesCluster`` block (``namespace`` defaults to the block's), returns a
pydantic model, and raises ``KubernetesError`` (401/403: the block's credentials or RBAC; 404: names the object;
409/422: not retried; 429, 5xx and network failures: transient). Reads and idempotent sets retry on transient
failures; undo, restart and exec never retry. One module per area:

- ``inventory``: list_pods, list_deployment_images, list_nodes, list_events, list_services, list_ingresses, list_hpas
- ``logs``: pod_logs, deployment_logs, grep_lines
- ``metrics``: top_pods, top_nodes (metrics.k8s.io); ``quantity``: cpu_millicores, memory_bytes
- ``pods``: describe_pod (limits, restarts, last termination reason, owner, events), wait_pod_replaced
- ``deployments``: get_deployment, rollout_history, rollout_status, rollout_undo, rollout_restart,
  scale_deployment, set_image, set_resources
- ``autoscaling``: scale_out_deployment (raises the HPA's floor so the HPA does not undo it), release_hpa_floors
- ``claims``: claim_mitigation, complete_mitigation_claim, read_mitigation_claim, release_mitigation_claim (a
  destructive mitigation's idempotency key, an annotation on the Deployment written with a compare-and-set);
  claim_turn, release_turn (one run at a time disrupts a Deployment's pods)
- ``cleanup``: delete_pod, list/delete_old_replicasets, list/delete_configmaps_by_prefix (with ``dry_run``)
- ``namespaces``: create_namespace, label_namespace; ``export``: export_resources, export_custom_resources
- ``releases``: read_last_known_good, record_last_known_good (the ``runbooks.io/last-known-good`` annotation)
- ``custom``: get_custom_resource, annotate_custom_resource (``CERTIFICATE``); ``pod_exec``: exec_in_pod,
  exec_in_deployment
- ``secrets`` (imported from the module): read_tls_secret (tls.crt only), copy_secret (a ``SecretStr`` to keep),
  delete_secret, restore_secret
"""

from tasks.kubernetes.autoscaling import (
    FLOOR_ANNOTATION,
    FloorRelease,
    HpaFloor,
    ScaleOut,
    release_hpa_floors,
    scale_out_deployment,
)
from tasks.kubernetes.claims import (
    MitigationClaim,
    Turn,
    claim_annotation,
    claim_mitigation,
    claim_turn,
    complete_mitigation_claim,
    read_mitigation_claim,
    release_mitigation_claim,
    release_turn,
)
from tasks.kubernetes.cleanup import (
    CleanupResult,
    ConfigMapPlan,
    Deletion,
    ReplicaSetPlan,
    delete_configmaps_by_prefix,
    delete_old_replicasets,
    delete_pod,
    list_configmaps_by_prefix,
    list_old_replicasets,
)
from tasks.kubernetes.custom import (
    CERTIFICATE,
    AnnotationChange,
    CustomResource,
    CustomResourceType,
    annotate_custom_resource,
    get_custom_resource,
)
from tasks.kubernetes.deployments import (
    DeploymentInfo,
    ImageChange,
    ResourcesChange,
    RestartResult,
    RolloutError,
    RolloutFailedError,
    RolloutHistory,
    RolloutStatus,
    RolloutTimeoutError,
    ScaleResult,
    UndoResult,
    get_deployment,
    rollout_history,
    rollout_restart,
    rollout_status,
    rollout_undo,
    scale_deployment,
    set_image,
    set_resources,
)
from tasks.kubernetes.export import ResourceExport, export_custom_resources, export_resources
from tasks.kubernetes.inventory import (
    EventInfo,
    HPAInfo,
    IngressInfo,
    NodeInfo,
    PodInfo,
    ServiceInfo,
    list_deployment_images,
    list_events,
    list_hpas,
    list_ingresses,
    list_nodes,
    list_pods,
    list_services,
)
from tasks.kubernetes.logs import DeploymentLogs, PodLogs, deployment_logs, grep_lines, pod_logs
from tasks.kubernetes.metrics import NodeUsage, PodUsage, top_nodes, top_pods
from tasks.kubernetes.namespaces import NamespaceResult, create_namespace, label_namespace
from tasks.kubernetes.pod_exec import ExecResult, exec_in_deployment, exec_in_pod
from tasks.kubernetes.pods import ContainerState, PodDescription, PodReplacement, describe_pod, wait_pod_replaced
from tasks.kubernetes.quantity import cpu_millicores, memory_bytes, parse_quantity
from tasks.kubernetes.releases import (
    LAST_KNOWN_GOOD,
    LastKnownGood,
    parse_last_known_good,
    read_last_known_good,
    record_last_known_good,
)

__all__ = [
    "LAST_KNOWN_GOOD",
    "LastKnownGood",
    "parse_last_known_good",
    "read_last_known_good",
    "record_last_known_good",
    "FLOOR_ANNOTATION",
    "FloorRelease",
    "HpaFloor",
    "ScaleOut",
    "release_hpa_floors",
    "scale_out_deployment",
    "MitigationClaim",
    "claim_annotation",
    "claim_mitigation",
    "claim_turn",
    "complete_mitigation_claim",
    "read_mitigation_claim",
    "release_mitigation_claim",
    "release_turn",
    "Turn",
    "CERTIFICATE",
    "AnnotationChange",
    "CleanupResult",
    "ContainerState",
    "ConfigMapPlan",
    "CustomResource",
    "CustomResourceType",
    "Deletion",
    "DeploymentInfo",
    "DeploymentLogs",
    "EventInfo",
    "ExecResult",
    "HPAInfo",
    "ImageChange",
    "IngressInfo",
    "NamespaceResult",
    "NodeInfo",
    "NodeUsage",
    "PodDescription",
    "PodInfo",
    "PodReplacement",
    "PodLogs",
    "PodUsage",
    "ReplicaSetPlan",
    "ResourceExport",
    "ResourcesChange",
    "RestartResult",
    "RolloutError",
    "RolloutFailedError",
    "RolloutHistory",
    "RolloutStatus",
    "RolloutTimeoutError",
    "ScaleResult",
    "ServiceInfo",
    "UndoResult",
    "annotate_custom_resource",
    "cpu_millicores",
    "create_namespace",
    "delete_configmaps_by_prefix",
    "delete_old_replicasets",
    "delete_pod",
    "deployment_logs",
    "describe_pod",
    "exec_in_deployment",
    "exec_in_pod",
    "export_custom_resources",
    "export_resources",
    "get_custom_resource",
    "get_deployment",
    "grep_lines",
    "label_namespace",
    "list_configmaps_by_prefix",
    "list_deployment_images",
    "list_events",
    "list_hpas",
    "list_ingresses",
    "list_nodes",
    "list_old_replicasets",
    "list_pods",
    "list_services",
    "memory_bytes",
    "parse_quantity",
    "pod_logs",
    "rollout_history",
    "rollout_restart",
    "rollout_status",
    "rollout_undo",
    "scale_deployment",
    "set_image",
    "set_resources",
    "top_nodes",
    "top_pods",
    "wait_pod_replaced",
]
