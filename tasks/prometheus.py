"""PromQL against the environment's Prometheus: instant and range queries with typed results.

"No data" is a result of its own (:attr:`InstantResult.no_data`, :meth:`InstantResult.value` is ``None``), never
0: an error rate of 0 says the platform answers well; no series says nobody is measuring, and a runbook must
not read the second as the first. A NaN sample (``0/0``, a rate over no requests) counts as no data too.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from blocks.prometheus import PrometheusServer
from kernel.errors import PrometheusError
from kernel.redact import quote_body
from kernel.retry import read_task


class Sample(BaseModel):
    labels: dict[str, str] = Field(default_factory=dict)
    timestamp: float
    value: float


class InstantResult(BaseModel):
    """``/api/v1/query``: one sample per series at one instant."""

    query: str
    result_type: Literal["vector", "scalar", "string", "matrix"]
    samples: list[Sample] = Field(default_factory=list)

    @property
    def no_data(self) -> bool:
        return all(math.isnan(s.value) for s in self.samples)

    def value(self) -> float | None:
        """The one figure the query asks for; ``None`` when there is no data. Several series are an error."""
        values = [s.value for s in self.samples if not math.isnan(s.value)]
        if not values:
            return None
        if len(values) > 1:
            raise PrometheusError(
                f"{self.query!r} returned {len(values)} series where one figure was expected",
                hint="aggregate it (sum, max, histogram_quantile ... by ()) or pick one series by its labels",
                transient=False,
            )
        return values[0]


class Series(BaseModel):
    labels: dict[str, str] = Field(default_factory=dict)
    points: list[tuple[float, float]] = Field(default_factory=list)  # (unix seconds, value)


class RangeResult(BaseModel):
    """``/api/v1/query_range``: points per series over a window."""

    query: str
    series: list[Series] = Field(default_factory=list)

    @property
    def no_data(self) -> bool:
        return not any(not math.isnan(v) for s in self.series for _, v in s.points)


async def _get(prometheus: PrometheusServer, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """One API call; Prometheus' own error (bad_data, execution, timeout) becomes a PrometheusError."""
    where = f"{prometheus.display_name} ({prometheus.url})"
    try:
        async with prometheus.get_client() as client:
            response = await client.get(path, params=params)
    except httpx.TransportError as err:
        raise PrometheusError(f"cannot reach Prometheus at {where}: {err}", hint="check the block's url") from err
    if response.status_code in (401, 403):
        raise PrometheusError(
            f"Prometheus at {where} refused the query ({response.status_code})",
            status_code=response.status_code,
            hint="check the Prometheus block's bearer_token",
        )
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or body.get("status") != "success":
        error = body.get("error") or quote_body(response.text)
        raise PrometheusError(
            f"Prometheus refused {params.get('query')!r}: {body.get('errorType', response.status_code)}: {error}",
            status_code=response.status_code,
            hint="fix the PromQL" if response.status_code in (400, 422) else None,
        )
    data: dict[str, Any] = body.get("data") or {}
    return data


def _labels(item: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (item.get("metric") or {}).items()}


def _unix(at: datetime | float) -> float:
    return at.timestamp() if isinstance(at, datetime) else float(at)


@read_task(task_run_name="promql {query}")
async def query_instant(prometheus: PrometheusServer, query: str, at: datetime | float | None = None) -> InstantResult:
    """``GET /api/v1/query``: the value of ``query`` now (or ``at``)."""
    params: dict[str, Any] = {"query": query}
    if at is not None:
        params["time"] = _unix(at)
    data = await _get(prometheus, "/api/v1/query", params)
    kind = data.get("resultType", "vector")
    raw = data.get("result")
    samples: list[Sample] = []
    if kind in ("scalar", "string") and isinstance(raw, list) and len(raw) == 2:
        samples = [Sample(timestamp=float(raw[0]), value=float(raw[1]) if kind == "scalar" else math.nan)]
    elif kind == "vector":
        samples = [
            Sample(labels=_labels(item), timestamp=float(item["value"][0]), value=float(item["value"][1]))
            for item in raw or []
        ]
    elif kind == "matrix":  # a range selector in an instant query: the newest point of each series
        samples = [
            Sample(labels=_labels(item), timestamp=float(item["values"][-1][0]), value=float(item["values"][-1][1]))
            for item in raw or []
            if item.get("values")
        ]
    return InstantResult(query=query, result_type=kind, samples=samples)


@read_task(task_run_name="promql range {query}")
async def query_range(
    prometheus: PrometheusServer,
    query: str,
    start: datetime | float,
    end: datetime | float,
    step_s: float = 15.0,
) -> RangeResult:
    """``GET /api/v1/query_range``: ``query`` from ``start`` to ``end`` every ``step_s`` seconds."""
    if step_s <= 0 or _unix(end) < _unix(start):
        raise PrometheusError(f"bad range for {query!r}: step {step_s}s, {start} .. {end}", transient=False)
    params = {"query": query, "start": _unix(start), "end": _unix(end), "step": step_s}
    data = await _get(prometheus, "/api/v1/query_range", params)
    series = [
        Series(labels=_labels(item), points=[(float(t), float(v)) for t, v in item.get("values") or []])
        for item in data.get("result") or []
    ]
    return RangeResult(query=query, series=series)
