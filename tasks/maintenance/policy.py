"""The weekly maintenance's policy (``tasks/maintenance/policy.yaml``): every threshold a step judges by, read at
each run (:func:`load_maintenance_policy`), never a constant in code."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernel.errors import PolicyError

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
    try:
        return MaintenancePolicy.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as err:
        raise PolicyError(
            f"cannot read the maintenance policy {path}: {err}", hint="fix the file", transient=False
        ) from err
    except ValidationError as err:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        raise PolicyError(
            f"the maintenance policy {path} is invalid: {where}", hint="fix the file", transient=False
        ) from err
