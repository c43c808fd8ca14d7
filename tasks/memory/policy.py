"""The memory policy (``tasks/memory/policy.yaml``): thresholds, the limit's step and cap, and the modes of
high-memory.

Read at each run (:func:`load_policy`); a bad file is a :class:`~kernel.errors.PolicyError` naming the field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.diagnostics.policy import Modes
from tasks.kubernetes.quantity import memory_bytes
from tasks.policyfile import read_policy_file

POLICY_PATH = Path(__file__).with_name("policy.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitRaise(Strict):
    step: str = Field(description="a Kubernetes quantity added to the memory limit per raise (1Gi)")
    cap: str = Field(description="the highest limit a raise sets without an approval (6Gi)")

    @field_validator("step", "cap")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if memory_bytes(value) <= 0:
            raise ValueError(f"{value!r} is not a positive memory quantity")
        return value

    @property
    def step_bytes(self) -> int:
        return memory_bytes(self.step)

    @property
    def cap_bytes(self) -> int:
        return memory_bytes(self.cap)


class MemoryPolicy(Strict):
    alert_ratio: float = Field(gt=0, le=1)
    delete_pod_ratio: float = Field(gt=0, le=1.5)
    limit: LimitRaise
    modes: Modes
    approval_timeout_s: int = Field(ge=10, le=86_400)
    replacement_timeout_s: float = Field(gt=0, le=1800)
    top: int = Field(ge=1, le=100)


def load_policy(path: Path | None = None) -> MemoryPolicy:
    """The policy as the file says now (``path``: another file, for a test)."""
    return read_policy_file(MemoryPolicy, path or POLICY_PATH, "the memory policy")
