"""The weekly maintenance's policy (``tasks/maintenance/policy.yaml``): every threshold a step judges by, read at
each run (:func:`load_maintenance_policy`), never a constant in code."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.policyfile import read_policy_file

POLICY_PATH = Path(__file__).with_name("policy.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthRules(Strict):
    transient_statuses: list[str] = Field(default_factory=list)


class ResourceRules(Strict):
    warn_node_cpu_percent: float = Field(gt=0, le=100)
    warn_node_memory_percent: float = Field(gt=0, le=100)
    top_pods: int = Field(ge=1, le=100)


class LogRules(Strict):
    hours: int = Field(ge=1, le=24 * 31)
    deployments: list[str] = Field(default_factory=list)


class DatabaseRules(Strict):
    top: int = Field(ge=1, le=100)
    warn_xid_percent: float = Field(gt=0, le=100)
    fail_xid_percent: float = Field(gt=0, le=100)
    warn_bloat_percent: float = Field(ge=0, le=100)
    warn_bloat_min_bytes: int = Field(ge=0)
    warn_on_duplicate_indexes: bool = True


class SecurityRules(Strict):
    fail_on: list[str] = Field(default_factory=list)
    warn_on: list[str] = Field(default_factory=list)
    timeout_s: float = Field(gt=0)


class PerformanceRules(Strict):
    period: str = "7d"
    warn_error_rate: float = Field(ge=0, le=1)
    warn_availability_below: float = Field(ge=0, le=1)
    warn_relative_increase: float = Field(ge=0)


class BackupRules(Strict):
    kind: str = "daily"
    max_age_hours: float = Field(gt=0)
    max_verification_age_days: float = Field(gt=0)
    run_verification_when_stale: bool = True
    #: the environment block whose PostgreSQL server takes the verification's restore; None: ``<env>-recovery``
    #: when it exists, else the application's own server (said loudly); ``source``: that server knowingly
    verification_target: str | None = None


class CleanupRules(Strict):
    keep_replicasets: int = Field(ge=1, le=100)
    configmap_prefix: str = Field(min_length=1)
    keep_configmaps: int = Field(ge=1, le=100)
    approval_timeout_s: int = Field(ge=10, le=86400)
    approval_poll_s: float = Field(ge=1, le=60)


class MaintenancePolicy(Strict):
    health: HealthRules
    resources: ResourceRules
    logs: LogRules
    database: DatabaseRules
    security: SecurityRules
    performance: PerformanceRules
    backups: BackupRules
    cleanup: CleanupRules


def load_maintenance_policy(path: Path = POLICY_PATH) -> MaintenancePolicy:
    """The policy as the file says now; a bad file is a :class:`PolicyError` naming the field."""
    return read_policy_file(MaintenancePolicy, path, "the maintenance policy")
