"""SARIF output validated by Microsoft's SARIF multitool (``@microsoft/sarif-multitool``).

The multitool is a .NET program shipped through npm. ``.ci/run`` installs it when npm is
available (``npm install --prefix .ci/node @microsoft/sarif-multitool``); point
``CKPTGUARD_SARIF_MULTITOOL`` at the ``sarif-multitool`` launcher to use another copy. The
test is skipped, with the reason, when no copy is found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import evil_pickle, hf_cache, namespace_pickle, safetensors_bytes, write

ROOT = Path(__file__).resolve().parents[1]


def multitool() -> str | None:
    env = os.environ.get("CKPTGUARD_SARIF_MULTITOOL")
    if env:
        return env
    local = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "sarif-multitool"
    if local.exists():
        return str(local)
    return shutil.which("sarif-multitool")


TOOL = multitool()
pytestmark = pytest.mark.skipif(
    TOOL is None, reason="SARIF multitool not installed (npm install --prefix .ci/node "
                         "@microsoft/sarif-multitool, or set CKPTGUARD_SARIF_MULTITOOL)")


def _scan_sarif(cwd: Path, *args: str) -> Path:
    out = cwd / "report.sarif"
    res = subprocess.run([sys.executable, "-m", "ckptguard", "scan", "--format", "sarif",
                          "-o", str(out), *args], cwd=cwd, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 1, res.stderr  # the inputs hold unsafe files
    return out


def _validate(sarif: Path) -> list[dict]:
    log = sarif.with_suffix(".validation.sarif")
    assert TOOL is not None
    res = subprocess.run([TOOL, "validate", str(sarif), "-o", str(log), "--log",
                          "ForceOverwrite", "--level", "Error", "Warning"],
                         capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(log.read_text(encoding="utf-8-sig"))
    return [r for run in doc["runs"] for r in run.get("results", [])]


@pytest.mark.slow
def test_multitool_finds_no_error_or_warning(tmp_path: Path) -> None:
    write(tmp_path / "m" / "ok.safetensors", safetensors_bytes())
    write(tmp_path / "m" / "evil.pkl", evil_pickle())
    write(tmp_path / "m" / "ns.pkl", namespace_pickle())
    write(tmp_path / "m" / "empty.bin", b"")              # a finding without an offset
    write(tmp_path / "m" / "sub" / "a b#c%.pkl", evil_pickle())  # characters URIs escape
    cache = hf_cache(tmp_path / "hub")
    sarif = _scan_sarif(tmp_path, "m", str(ROOT / "fixtures" / "hostile"), "--hf-cache",
                        str(cache))
    doc = json.loads(sarif.read_text(encoding="utf-8"))
    run = doc["runs"][0]
    # every result has a region and a URI that resolves against originalUriBaseIds
    bases = run["originalUriBaseIds"]
    for result in run["results"]:
        phys = result["locations"][0]["physicalLocation"]
        assert "byteOffset" in phys["region"] and "byteLength" in phys["region"]
        loc = phys["artifactLocation"]
        assert loc["uri"].startswith("file://") or loc["uriBaseId"] in bases
    problems = _validate(sarif)
    assert problems == [], [(p["ruleId"], p["message"]) for p in problems[:5]]


@pytest.mark.slow
def test_multitool_flags_a_missing_region(tmp_path: Path) -> None:
    """The check itself can fail: the same log with regions removed draws warnings."""
    write(tmp_path / "evil.pkl", evil_pickle())
    sarif = _scan_sarif(tmp_path, "evil.pkl")
    doc = json.loads(sarif.read_text(encoding="utf-8"))
    for result in doc["runs"][0]["results"]:
        del result["locations"][0]["physicalLocation"]["region"]
    broken = tmp_path / "broken.sarif"
    broken.write_text(json.dumps(doc), encoding="utf-8")
    assert {p["ruleId"] for p in _validate(broken)} == {"SARIF2017"}
