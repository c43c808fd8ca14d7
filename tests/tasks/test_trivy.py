"""tasks/trivy.py: trivy's JSON report parsed into counts by severity and fixable ones; the scan run through
kernel.processes against an executable that prints a report shaped exactly like trivy's; failures named."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from tasks.trivy import TrivyError, parse_trivy_report, scan_image, trivy_available
from tests.flows.test_maintenance import TRIVY_DOC


def fake(tmp_path: Path, body: str) -> str:
    script = tmp_path / "trivy"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_parse_counts_by_severity_fixable_and_once_per_package() -> None:
    doc = json.loads(json.dumps(TRIVY_DOC))
    doc["Results"].append({"Target": "again", "Vulnerabilities": [doc["Results"][0]["Vulnerabilities"][0]]})
    scan = parse_trivy_report("ghcr.io/genspark/ai-multimodel-api:v2.5.0", doc)
    assert scan.by_severity == {"CRITICAL": 1, "HIGH": 1, "MEDIUM": 1, "LOW": 0, "UNKNOWN": 0}
    assert scan.fixable == 1 and len(scan.vulnerabilities) == 4 and len(scan.unique) == 3
    clean = parse_trivy_report("x", {"Results": [{"Target": "t", "Vulnerabilities": None}]})
    assert clean.unique == [] and clean.fixable == 0
    with pytest.raises(TrivyError):
        parse_trivy_report("x", {"Results": "nope"})


async def test_scan_runs_trivy_image_format_json(tmp_path: Path) -> None:
    (tmp_path / "doc.json").write_text(json.dumps(TRIVY_DOC))
    exe = fake(
        tmp_path,
        f"assert sys.argv[1:5] == ['image', '--format', 'json', '--quiet'], sys.argv\n"
        f"print(open({str(tmp_path / 'doc.json')!r}).read())",
    )
    assert trivy_available(exe) == exe
    scan = await scan_image.fn("ghcr.io/genspark/ai-multimodel-api:v2.5.0", executable=exe)
    assert scan.image.endswith(":v2.5.0") and scan.by_severity["CRITICAL"] == 1 and scan.fixable == 1


async def test_scan_failures_are_named(tmp_path: Path) -> None:
    failing = fake(tmp_path, "print('FATAL image not found', file=sys.stderr); sys.exit(1)")
    with pytest.raises(TrivyError, match="exited 1: FATAL image not found"):
        await scan_image.fn("ghcr.io/none:v0", executable=failing)
    (tmp_path / "trivy").unlink()
    garbage = fake(tmp_path, "print('not json')")
    with pytest.raises(TrivyError, match="printed no JSON"):
        await scan_image.fn("ghcr.io/none:v0", executable=garbage)
    with pytest.raises(TrivyError, match="not found"):
        await scan_image.fn("ghcr.io/none:v0", executable=str(tmp_path / "missing-trivy"))
