"""Reading a policy file: YAML validated by its pydantic model, read at each run (an edit applies to the next run),
and a bad file is one :class:`PolicyError` naming the file and the fields. The deploy, maintenance and diagnostics
policies load through :func:`read_policy_file`."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kernel.errors import PolicyError

M = TypeVar("M", bound=BaseModel)


def read_policy_file(model: type[M], path: Path, what: str) -> M:
    """``path`` as ``model``; ``what`` names it in the error ("the deploy policy")."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PolicyError(f"cannot read {what} {path}: {err}", hint="fix the file", transient=False) from err
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        raise PolicyError(f"{what} {path} is invalid: {where}", hint="fix the file", transient=False) from err
