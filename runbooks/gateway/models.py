"""Incoming alert payloads (validated with pydantic) and the one shape they are normalised to."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

Status = Literal["firing", "resolved"]
MAX_STRING = 10_000  # every string of an incoming payload (``_Strict``'s str_max_length)
MAX_NAME = 200  # an alert's name, as NormalizedAlert keeps it


class NormalizedAlert(BaseModel):
    fingerprint: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=200)
    status: Status
    severity: str | None = None
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    source: str


def _fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", str_max_length=MAX_STRING)


class PayloadJsonSchema(GenerateJsonSchema):
    """The JSON schema of the payloads as they are validated: ``str_max_length`` (a config, which pydantic leaves
    out of the schema) written on every string, so a document-valid body is never refused."""

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        json_schema = super().str_schema(schema)
        json_schema.setdefault("maxLength", MAX_STRING)
        return json_schema


class AlertmanagerAlert(_Strict):
    status: Status
    labels: dict[str, str] = Field(
        min_length=1,
        json_schema_extra={
            "required": ["alertname"],
            "properties": {"alertname": {"type": "string", "minLength": 1, "maxLength": MAX_NAME}},
        },
    )
    annotations: dict[str, str] = Field(default_factory=dict)
    # RFC 3339 strings only (strict): lax mode would also take a number of seconds, which the schema's date-time is not
    startsAt: datetime | None = Field(default=None, strict=True)  # noqa: N815 - Alertmanager's field names
    endsAt: datetime | None = Field(default=None, strict=True)  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str | None = Field(default=None, max_length=128)

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("labels.alertname is required")
        if len(labels["alertname"]) > MAX_NAME:
            raise ValueError(f"labels.alertname is over {MAX_NAME} characters")
        return labels


class AlertmanagerWebhook(_Strict):
    """Alertmanager's webhook payload, version 4."""

    version: Literal["4"]
    groupKey: str = ""  # noqa: N815
    status: Status
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    alerts: list[AlertmanagerAlert] = Field(min_length=1, max_length=1000)

    def normalize(self, source: str = "alertmanager") -> list[NormalizedAlert]:
        return [
            NormalizedAlert(
                fingerprint=a.fingerprint or _fingerprint(a.labels),
                name=a.labels["alertname"],
                status=a.status,
                severity=a.labels.get("severity"),
                summary=a.annotations.get("summary", a.annotations.get("description", "")),
                labels=a.labels,
                annotations=a.annotations,
                starts_at=a.startsAt,
                source=source,
            )
            for a in self.alerts
        ]


class GrafanaWebhook(AlertmanagerWebhook):
    """Grafana alerting's webhook: Alertmanager's shape plus title/state/message."""

    version: Literal["1", "4"]  # type: ignore[assignment]
    title: str = ""
    state: str = ""
    message: str = ""

    def normalize(self, source: str = "grafana") -> list[NormalizedAlert]:
        return super().normalize(source)


class GenericAlert(_Strict):
    """Anything else that can say: a name, firing or resolved, and what it is about."""

    name: str = Field(min_length=1, max_length=200)
    status: Status = "firing"
    severity: str | None = Field(default=None, max_length=20)
    summary: str = ""
    fingerprint: str | None = Field(default=None, max_length=128)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    def normalize(self) -> list[NormalizedAlert]:
        labels = {"alertname": self.name, **self.labels}
        return [
            NormalizedAlert(
                fingerprint=self.fingerprint or _fingerprint(labels),
                name=self.name,
                status=self.status,
                severity=self.severity,
                summary=self.summary,
                labels=labels,
                annotations=self.annotations,
                starts_at=datetime.now(UTC),
                source="generic",
            )
        ]


def event_payload(alert: NormalizedAlert, incident_id: str) -> dict[str, Any]:
    return {"incident_id": incident_id, **json.loads(alert.model_dump_json())}
