"""The smoke suite (``tasks/smoke/suite.yaml``): the seed's ``./tests/smoke-tests.sh`` as data.

Read at each run (:func:`load_suite`), never cached for the process: an edited suite applies to the next run. A bad
file is a :class:`~kernel.errors.PolicyError` naming the file and the case.

A case asks one HTTP request of one target and judges the answer::

    - name: api health                 # unique in the suite
      target: api                      # api | frontend | status_page (the PlatformAPI block's URLs)
      method: GET                      # GET (default) or HEAD: smoke tests only read, so a retry is safe
      path: /health
      expect_status: 200               # an int or a list of ints
      max_latency_ms: 2000             # the request's own latency, measured per request
      admin: false                     # send the admin token (target api only)
      contains: "<title>"              # text the body must contain
      prometheus_metrics: [error_rate] # the body parses as Prometheus text and has these samples
      json:                            # assertions on the JSON body (one mapping or a list)
        - {path: status, in: [healthy, degraded]}
        - {path: models, min_items: 1}

A JSON assertion names a ``path`` (keys separated by dots, a number indexes a list: ``models.0.name``) and exactly
one check: ``equals: <value>``, ``in: [<values>]``, ``min_items: <n>`` (a list or object with at least n entries),
or ``exists: true|false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kernel.errors import PolicyError

SUITE_PATH = Path(__file__).with_name("suite.yaml")
Target = Literal["api", "frontend", "status_page"]
_MISSING = object()


class JsonAssertion(BaseModel):
    """One check on the value at ``path`` of a JSON body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str = Field(min_length=1, description="dot-separated keys; a number indexes a list")
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    min_items: int | None = Field(default=None, ge=0)
    exists: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_check(cls, data: Any) -> Any:
        if isinstance(data, dict):
            checks = [k for k in ("equals", "in", "in_", "min_items", "exists") if k in data]
            if len(checks) != 1:
                raise ValueError(
                    f"a json assertion on {data.get('path')!r} needs exactly one of equals, in, min_items, exists "
                    f"(has {checks or 'none'})"
                )
        return data

    def describe(self) -> str:
        if self.in_ is not None:
            return f"{self.path} in {self.in_}"
        if self.min_items is not None:
            return f"{self.path} has at least {self.min_items} item(s)"
        if self.exists is not None:
            return f"{self.path} {'exists' if self.exists else 'is absent'}"
        return f"{self.path} == {self.equals!r}"

    def check(self, body: Any) -> str | None:
        """None when the body satisfies the assertion, else what is wrong (one line)."""
        value = _resolve(body, self.path)
        if self.exists is not None:
            present = value is not _MISSING
            return None if present == self.exists else f"{self.path} {'is missing' if self.exists else 'is present'}"
        if value is _MISSING:
            return f"{self.path} is missing (expected {self.describe()})"
        if self.in_ is not None:
            return None if value in self.in_ else f"{self.path} is {value!r}, expected one of {self.in_}"
        if self.min_items is not None:
            if not isinstance(value, list | dict):
                return f"{self.path} is {type(value).__name__}, expected a list of at least {self.min_items}"
            n = len(value)
            return None if n >= self.min_items else f"{self.path} has {n} item(s), expected at least {self.min_items}"
        return None if value == self.equals else f"{self.path} is {value!r}, expected {self.equals!r}"


def _resolve(body: Any, path: str) -> Any:
    current = body
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit() and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


class SmokeCase(BaseModel):
    """One request of the smoke suite and how its answer is judged."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    target: Target
    method: Literal["GET", "HEAD"] = "GET"
    path: str = Field(pattern=r"^/")
    expect_status: tuple[int, ...] = Field(min_length=1)
    max_latency_ms: float = Field(gt=0)
    json_: tuple[JsonAssertion, ...] = Field(default=(), alias="json")
    admin: bool = False
    contains: str | None = Field(default=None, min_length=1)
    prometheus_metrics: tuple[str, ...] = ()

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [v for v in value if not 100 <= v <= 599]
        if bad:
            raise ValueError(f"not HTTP statuses: {bad}")
        return value

    @field_validator("json_", mode="before")
    @classmethod
    def _assertion_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> SmokeCase:
        if self.admin and self.target != "api":
            raise ValueError(f"admin: true only applies to target api (this case targets {self.target})")
        if self.method == "HEAD" and (self.json_ or self.contains or self.prometheus_metrics):
            raise ValueError("a HEAD answer has no body: drop json, contains and prometheus_metrics")
        return self


class SmokeSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cases: list[SmokeCase] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SmokeSuite:
        names = [c.name for c in self.cases]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"case names must be unique: {twice} appear more than once")
        return self


def load_suite(path: Path | None = None) -> SmokeSuite:
    """The suite as the file says now (``tasks/smoke/suite.yaml`` unless ``path``)."""
    path = path or SUITE_PATH
    hint = "fix the smoke suite file (its format is described in tasks/smoke/suite.py)"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PolicyError(f"cannot read the smoke suite {path}: {err}", hint=hint, transient=False) from err
    try:
        return SmokeSuite.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        problems = "; ".join(f"{_where(raw, e['loc']) or 'suite'}: {e['msg']}" for e in errors[:5])
        raise PolicyError(f"invalid smoke suite {path}: {problems}", hint=hint, transient=False) from err


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    """``case 'api health'.expect_status`` for the location ``('cases', 0, 'expect_status')``."""
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        case = raw["cases"][loc[1]] if isinstance(raw, dict) and isinstance(raw.get("cases"), list) else None
        name = case.get("name") if isinstance(case, dict) else None
        head = f"case {name!r}" if name else f"case #{loc[1] + 1}"
        rest = ".".join(str(p) for p in loc[2:])
        return f"{head}.{rest}" if rest else head
    return ".".join(str(p) for p in loc)
