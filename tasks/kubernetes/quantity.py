"""Kubernetes resource quantities ("250m", "1200000n", "524288Ki", "2Gi", "1e3") as millicores and bytes.

The grammar is the API's (``k8s.io/apimachinery/pkg/api/resource``): a signed decimal number, then a binary
suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix (n u m "" k M G T P E) or a decimal exponent (e3, E-2). Fractions
round up, as ``kubectl`` rounds them (``MilliValue``/``Value``).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))(?:[eE](?P<exponent>[+-]?\d+)|(?P<suffix>[KMGTPE]i|[numkMGTPE]?))$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(quantity: str | int | float) -> Decimal:
    """The exact value of a quantity, in base units (cores, bytes); ``ValueError`` if it is not one."""
    if isinstance(quantity, int | float) and not isinstance(quantity, bool):
        return Decimal(str(quantity))
    text = str(quantity).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r} (e.g. 250m, 1.5, 512Mi, 2Gi, 1e3)")
    try:
        number = Decimal(match["number"])
    except InvalidOperation as err:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}") from err
    if match["exponent"] is not None:
        return number.scaleb(int(match["exponent"]))
    suffix = match["suffix"]
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def _ceil(value: Decimal) -> int:
    return int(math.ceil(value))


def cpu_millicores(quantity: str | int | float) -> int:
    """CPU as millicores: "250m" → 250, "2" → 2000, "1200000n" → 2 (1.2m rounds up)."""
    return _ceil(parse_quantity(quantity) * 1000)


def memory_bytes(quantity: str | int | float) -> int:
    """Memory as bytes: "524288Ki" → 536870912, "2Gi" → 2147483648, "1G" → 10**9."""
    return _ceil(parse_quantity(quantity))
