"""Human size strings <-> bytes.

``parse_size`` understands SI units (``kB``/``KB``, ``MB``, ``GB``, ``TB`` = powers of 1000) and IEC
units (``KiB``, ``MiB``, ``GiB``, ``TiB`` = powers of 1024), case-insensitively, with an optional
``B`` and optional whitespace: ``"50MB"`` -> 50_000_000, ``"512KiB"`` -> 524_288, ``"1.5 GB"`` ->
1_500_000_000, ``"2g"`` -> 2_000_000_000, ``"4096"`` -> 4096.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_size"]

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Return the number of bytes that ``value`` denotes.

    Raises ``ValueError`` (with the offending input in the message) for empty strings, negative or
    non-numeric amounts, unknown units, and booleans / other non-size types.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected a string like '50MB' or a byte count")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: expected a string like '50MB' or a byte count")
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(
            f"invalid size {value!r}: expected a non-negative number with an optional unit "
            "(B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '50MB' or '512KiB'"
        )
    unit = match.group("unit").lower()
    if unit not in _UNITS:
        raise ValueError(
            f"invalid size {value!r}: unknown unit {match.group('unit')!r} "
            "(use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
        )
    amount = float(match.group("num")) * _UNITS[unit]
    if not math.isfinite(amount):
        raise ValueError(f"invalid size {value!r}: too large")
    return int(round(amount))


def format_size(num_bytes: float) -> str:
    """Format a byte count with SI units (``format_size(52_428_800) == '52.4 MB'``, ``'1.95 GB'``)."""
    amount = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(amount) < 1000:
            if unit == "B":
                return f"{amount:.0f} B"
            return f"{amount:.2f} {unit}" if abs(amount) < 10 else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.2f} TB" if abs(amount) < 10 else f"{amount:.1f} TB"
