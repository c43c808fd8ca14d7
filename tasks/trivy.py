"""Vulnerability scans of container images with Trivy (``trivy image --format json``), the seed's
``trivy image ghcr.io/genspark/ai-multimodel:latest``.

Trivy runs through :mod:`kernel.processes` (an argument list, its own process group, a timeout). Its JSON report
(``Results[].Vulnerabilities[]`` with ``VulnerabilityID``, ``PkgName``, ``InstalledVersion``, ``FixedVersion``,
``Severity``) is parsed into counts by severity and the fixable ones. Where trivy is not installed,
:func:`trivy_available` says so and the caller reports the scan as skipped, never as passed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from kernel import processes
from kernel.errors import RunbookError
from kernel.retry import read_task

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")


class TrivyError(RunbookError):
    system = "trivy"


class Vulnerability(BaseModel):
    id: str
    package: str
    installed: str = ""
    fixed: str = Field(default="", description="the version that fixes it; empty when no fix exists")
    severity: str = "UNKNOWN"
    target: str = ""


class ImageScan(BaseModel):
    image: str
    vulnerabilities: list[Vulnerability] = Field(default_factory=list)
    trivy_version: str | None = None

    @property
    def by_severity(self) -> dict[str, int]:
        counts = Counter(v.severity for v in self.unique)
        return {s: counts.get(s, 0) for s in SEVERITIES}

    @property
    def unique(self) -> list[Vulnerability]:
        """One per (id, package): trivy lists a package once per target it finds it in."""
        seen: dict[tuple[str, str], Vulnerability] = {}
        for v in self.vulnerabilities:
            seen.setdefault((v.id, v.package), v)
        return list(seen.values())

    @property
    def fixable(self) -> int:
        return sum(1 for v in self.unique if v.fixed)


def trivy_available(executable: str = "trivy") -> str | None:
    """The path of ``trivy`` on PATH, or None."""
    return shutil.which(executable)


def parse_trivy_report(image: str, document: dict[str, Any]) -> ImageScan:
    """Trivy's JSON report (schema 2: ``Results[].Vulnerabilities[]``; ``Vulnerabilities`` is absent or null for
    a clean target)."""
    if not isinstance(document, dict) or not isinstance(document.get("Results", []), list | type(None)):
        raise TrivyError(f"trivy's report of {image} is not a trivy JSON report", transient=False)
    found: list[Vulnerability] = []
    for result in document.get("Results") or []:
        for v in result.get("Vulnerabilities") or []:
            severity = str(v.get("Severity") or "UNKNOWN").upper()
            found.append(
                Vulnerability(
                    id=str(v.get("VulnerabilityID", "")),
                    package=str(v.get("PkgName", "")),
                    installed=str(v.get("InstalledVersion") or ""),
                    fixed=str(v.get("FixedVersion") or ""),
                    severity=severity if severity in SEVERITIES else "UNKNOWN",
                    target=str(result.get("Target", "")),
                )
            )
    version = (document.get("Trivy") or {}).get("Version") if isinstance(document.get("Trivy"), dict) else None
    return ImageScan(image=image, vulnerabilities=found, trivy_version=version)


@read_task
async def scan_image(image: str, *, executable: str = "trivy", timeout_s: float = 900) -> ImageScan:
    """``trivy image --format json --quiet <image>``; a scan that fails or prints no JSON is a :class:`TrivyError`
    with the end of its stderr."""
    argv = [executable, "image", "--format", "json", "--quiet", image]
    try:
        done = await asyncio.to_thread(processes.run, argv, timeout_s=timeout_s)
    except processes.ProcessError as err:
        raise TrivyError(f"trivy scan of {image} failed: {err}", transient=False) from err
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[:500]
        raise TrivyError(f"trivy scan of {image} exited {done.returncode}: {tail}", transient=False)
    try:
        document = json.loads(done.stdout)
    except ValueError as err:
        raise TrivyError(f"trivy scan of {image} printed no JSON report", transient=False) from err
    return parse_trivy_report(image, document)
