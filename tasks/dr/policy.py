"""The disaster-recovery policy (``tasks/dr/policy.yaml``): objectives, timeouts, what is switched, the drill's
names. Read at each run (:func:`load_dr_policy`): an edit applies to the next run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.policyfile import read_policy_file

POLICY_PATH = Path(__file__).with_name("policy.yaml")


class DrPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rpo_objective_s: float = Field(gt=0)
    rta_objective_s: float = Field(gt=0)
    deployments_timeout_s: float = Field(gt=0, le=3600)
    deployments_poll_s: float = Field(gt=0, le=30)
    redis_key_tolerance: float = Field(ge=0, le=0.5)
    pg_restore_jobs: int = Field(ge=1, le=16)
    pg_restore_no_owner: bool
    pg_restore_no_privileges: bool
    namespace_label: str = Field(pattern=r"^[a-z0-9./-]+=[a-z0-9._-]+$")
    switch_services: list[str] = Field(min_length=1)
    drill_namespace_prefix: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    approval_timeout_s: int = Field(ge=60, le=86400)
    approval_poll_s: float = Field(gt=0, le=60)

    @property
    def label(self) -> dict[str, str]:
        key, _, value = self.namespace_label.partition("=")
        return {key: value}


def load_dr_policy(path: Path = POLICY_PATH) -> DrPolicy:
    return read_policy_file(DrPolicy, path, "the disaster-recovery policy")
