"""The public API surface is pinned; scanning never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ckptguard
from ckptguard import Report, ScanInputError, Verdict

EXPECTED_ALL = [
    "CkptGuardError", "Engine", "FileChangedError", "Finding", "Format", "IncompleteScanError", "Limits",
    "LoaderUnavailableError", "Location", "Policy", "PolicyError", "Problem", "Report",
    "ScanInputError", "Severity", "TensorInfo", "UnsafeCheckpointError", "Verdict",
    "__version__", "guard_torch_load", "iter_state_dict", "load_state_dict", "safe_load", "scan",
]


def test_all_is_pinned() -> None:
    assert sorted(ckptguard.__all__) == sorted(EXPECTED_ALL)
    for name in ckptguard.__all__:
        assert getattr(ckptguard, name) is not None


def test_missing_path_is_misuse(tmp_path: Path) -> None:
    with pytest.raises(ScanInputError, match="no such file"):
        ckptguard.scan(tmp_path / "nope.bin")


def test_report_round_trips_through_json(tmp_path: Path) -> None:
    p = tmp_path / "x.pkl"
    p.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG101" in r.rule_ids()
    again = Report.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r


SCAN_WITHOUT_TORCH = r"""
import sys, ckptguard
for path in sys.argv[1:]:
    ckptguard.scan(path)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "safetensors", "fickling"))
print(",".join(heavy))
"""


def test_scan_path_never_imports_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    z = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, z)
    legacy = tmp_path / "l.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "r.pkl"
    raw.write_bytes(b"\x80\x02cposix\nsystem\nX\x01\x00\x00\x00x\x85R.")
    out = subprocess.run([sys.executable, "-c", SCAN_WITHOUT_TORCH, str(z), str(legacy), str(raw),
                          str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout


def test_refusal_of_a_critical_file_offers_no_policy(tmp_path: Path) -> None:
    from ckptguard import UnsafeCheckpointError

    p = tmp_path / "x.pkl"
    p.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    msg = str(UnsafeCheckpointError(ckptguard.scan(p)))
    assert "CKG101" in msg and "no policy can allow" in msg and "[tool.ckptguard]" not in msg
