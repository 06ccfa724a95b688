"""``.storage_alignment`` records torch cannot use are CKG311
(fixtures/families/storage_alignment.py).

torch computes record offsets modulo the archive's ``.storage_alignment`` on every meta
load: 0 kills the process with SIGFPE, 2**64 and more fail its 64-bit argument. Both were
SAFE (the audit only checked for digits). Every spelling of the family is UNSAFE with
exactly CKG311 (native and pure alike), the usable ones stay SAFE and the report names
their alignment; the crash is shown to happen under the real ``torch.load`` in a child
process, and ckptguard's own meta loads refuse the file instead of dying.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

import ckptguard
from ckptguard.analysis import engine
from ckptguard.errors import UnsafeCheckpointError
from ckptguard.model import Report, Verdict
from ckptguard.policy import DEFAULT_LIMITS, Policy

FAM = family("storage_alignment")
alignment_archive = FAM["alignment_archive"]
ZERO: tuple[bytes, ...] = FAM["ZERO"]
TOO_BIG: tuple[bytes, ...] = FAM["TOO_BIG"]
USABLE: dict[bytes, int] = FAM["USABLE"]


def _report(text: bytes, pure: bool, monkeypatch: pytest.MonkeyPatch) -> Report:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
        return engine.audit_bytes(alignment_archive(text), "model.pt", policy=Policy(),
                                  limits=DEFAULT_LIMITS)


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
@pytest.mark.parametrize("text", ZERO + TOO_BIG, ids=lambda t: repr(t[:24]))
def test_unusable_alignment_is_ckg311(text: bytes, pure: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    r = _report(text, pure, monkeypatch)
    assert r.verdict is Verdict.UNSAFE
    assert [f.rule_id for f in r.findings] == ["CKG311"]
    assert ("division by zero" if text in ZERO else "64-bit") in r.findings[0].message
    assert "torch.storage_alignment" not in dict(r.metadata)


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
@pytest.mark.parametrize("text", list(USABLE), ids=repr)
def test_usable_alignment_is_safe(text: bytes, pure: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    r = _report(text, pure, monkeypatch)
    assert r.verdict is Verdict.SAFE, r.findings
    assert dict(r.metadata)["torch.storage_alignment"] == str(USABLE[text])


_META_LOAD = ("import sys, torch\n"
              "try:\n"
              "    torch.load(sys.argv[1], weights_only=True, map_location='meta')\n"
              "except Exception as e:\n"
              "    print(type(e).__name__)\n"
              "    sys.exit(3)\n")


def _torch_meta_load(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _META_LOAD, str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("text", [b"0", b" 0", b"18446744073709551616", b"64", b"3"],
                         ids=repr)
def test_the_real_torch_load_fails_exactly_there(tmp_path: Path, text: bytes) -> None:
    """The payload fires: torch's own meta load dies of SIGFPE on 0 and raises on 2**64;
    the usable alignments load."""
    p = tmp_path / "m.pt"
    p.write_bytes(alignment_archive(text))
    out = _torch_meta_load(p)
    if text.strip() == b"0":
        assert out.returncode == -signal.SIGFPE, (out.returncode, out.stderr[-500:])
    elif text in TOO_BIG:
        assert out.returncode == 3 and out.stdout.strip() == "TypeError", out
    else:
        assert out.returncode == 0, out.stderr[-500:]


def _gate_meta(p: Path) -> Any:
    import torch

    with ckptguard.guard_torch_load():
        return torch.load(p, map_location="meta")


@pytest.mark.parametrize("load", [lambda p: ckptguard.safe_load(p, map_location="meta"),
                                  _gate_meta], ids=["safe_load", "gate"])
def test_ckptguard_meta_loads_refuse_instead_of_crashing(tmp_path: Path, load: Any) -> None:
    p = tmp_path / "m.pt"
    p.write_bytes(alignment_archive(b"0"))
    with pytest.raises(UnsafeCheckpointError) as info:
        load(p)
    assert "CKG311" in str(info.value)
