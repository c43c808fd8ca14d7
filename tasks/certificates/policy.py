"""The certificates' policy (``tasks/certificates/policy.yaml``): thresholds, escalation and renewal timing, read
at each run (:func:`load_certificate_policy`), never a constant in code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.diagnostics.policy import Modes
from tasks.policyfile import read_policy_file

POLICY_PATH = Path(__file__).with_name("policy.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Expiry(Strict):
    warn_days: float = Field(gt=0, le=365)
    page_days: float = Field(gt=0, le=365)

    @model_validator(mode="after")
    def _ordered(self) -> Expiry:
        if self.page_days > self.warn_days:
            raise ValueError("page_days must not be above warn_days")
        return self


class Agreement(Strict):
    not_after_tolerance_s: float = Field(ge=0, le=86400)


class Handshake(Strict):
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(gt=0, le=120)


class Escalation(Strict):
    """Rows of the triage policy's escalation matrix."""

    warn: Literal["P0", "P1", "P2", "P3"]
    page: Literal["P0", "P1", "P2", "P3"]


class Renewal(Strict):
    annotations: dict[str, str] = Field(default_factory=dict)
    requested_at_annotation: str = Field(min_length=1)
    timeout_s: float = Field(gt=0, le=3600)
    serve_timeout_s: float = Field(gt=0, le=3600)
    poll_s: float = Field(gt=0, le=60)
    copies_prefix: str = Field(min_length=1)
    approval_timeout_s: int = Field(ge=10, le=86400)
    modes: Modes


class CertificatePolicy(Strict):
    certificate: str = Field(min_length=1)
    secret: str = Field(min_length=1)
    expiry: Expiry
    agreement: Agreement
    handshake: Handshake
    escalation: Escalation
    renewal: Renewal


def load_certificate_policy(path: Path = POLICY_PATH) -> CertificatePolicy:
    """The policy as the file says now; a bad file is a :class:`PolicyError` naming the field."""
    return read_policy_file(CertificatePolicy, path, "the certificate policy")
