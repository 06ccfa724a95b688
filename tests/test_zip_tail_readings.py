"""A zip archive at the end of another format, with bytes after its end record (review round 8,
fixtures/families/zip_tail_readings.py): miniz (torch.jit.load, any file name) and CPython's
zipfile find the record without checking that its comment ends the file. Every host and
trailer is UNSAFE with CKG005 (native and pure paths alike), the folder walk audits such
files, the payload fires under the real torch.jit.load, and tail bytes that only look like
an end record stay SAFE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

import ckptguard
from ckptguard.model import Verdict

torch = pytest.importorskip("torch")

FAM: dict[str, Any] = family("zip_tail_readings")
HOSTS: tuple[str, ...] = FAM["TAIL_HOSTS"]
TRAILERS: list[str] = list(FAM["TRAILERS"])
NAMES = {"legacy": "model.pt", "safetensors": "model.bin", "npy": "model.pt",
         "pickle": "model.pth"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    import warnings

    marker = tmp_path_factory.mktemp("marker") / "ckptguard_marker"
    with warnings.catch_warnings():  # torch.jit.save is deprecated: that is what it writes
        warnings.simplefilter("ignore", DeprecationWarning)
        return FAM["torchscript_archive"](str(marker)), marker


def _scan(path: Path, pure: bool, monkeypatch: pytest.MonkeyPatch) -> ckptguard.Report:
    monkeypatch.setenv("CKPTGUARD_PURE", "1" if pure else "0")
    return ckptguard.scan(str(path))


@pytest.mark.parametrize("trailer", TRAILERS)
@pytest.mark.parametrize("host", HOSTS)
def test_every_host_and_trailer_is_unsafe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          archive: tuple[bytes, Path], host: str,
                                          trailer: str) -> None:
    p = tmp_path / NAMES[host]
    p.write_bytes(FAM["tail_polyglot"](host, trailer, archive[0]))
    native, pure = (_scan(p, x, monkeypatch) for x in (False, True))
    for r in (native, pure):
        assert r.verdict is Verdict.UNSAFE, [f.rule_id for f in r.findings]
        assert "CKG005" in {f.rule_id for f in r.findings}
    assert sorted(f.rule_id for f in native.findings) == sorted(f.rule_id for f in pure.findings)


@pytest.mark.parametrize("host", HOSTS)
def test_the_folder_walk_audits_them(tmp_path: Path, archive: tuple[bytes, Path],
                                     host: str) -> None:
    """Named like something no loader picks by name, the file is still audited by the
    walk (analysis/skipped.py: a reader that looks from the end opens it)."""
    p = tmp_path / "notes.dat"
    p.write_bytes(FAM["tail_polyglot"](host, "five_bytes", archive[0]))
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE
    assert [c.path for c in r.children if "CKG005" in {f.rule_id for f in c.findings}] == \
        [str(p)], [(c.path, c.verdict, [f.rule_id for f in c.findings]) for c in r.children]


@pytest.mark.parametrize("kind", ["nowhere", "short", "empty"])
@pytest.mark.parametrize("host", HOSTS)
def test_an_end_record_that_names_nothing_stays_safe(tmp_path: Path, host: str,
                                                     kind: str) -> None:
    p = tmp_path / NAMES[host]
    p.write_bytes(FAM["benign_tail"](host, kind))
    r = ckptguard.scan(str(p))
    rules = {f.rule_id for f in r.findings}
    if kind == "empty":  # an empty archive is still one: counted, as it always was
        assert r.verdict is Verdict.UNSAFE and "CKG005" in rules, rules
        return
    assert "CKG005" not in rules, r.findings
    assert r.verdict is Verdict.SAFE, rules


_JIT = """
import os, sys, torch
try:
    torch.jit.load(sys.argv[1])
except Exception as e:  # the payload runs in __setstate__, before anything can fail
    print(type(e).__name__, str(e)[:200])
print("fired" if os.path.exists(sys.argv[2]) else "quiet")
"""


@pytest.mark.slow
@pytest.mark.parametrize(("host", "trailer"), [
    ("legacy", "five_bytes"), ("safetensors", "comment_longer"), ("npy", "text"),
    ("pickle", "one_byte"), ("legacy", "past_python_window")])
def test_the_payload_fires_under_torch_jit_load(tmp_path: Path, archive: tuple[bytes, Path],
                                                host: str, trailer: str) -> None:
    data, marker = archive
    if marker.exists():
        marker.unlink()
    p = tmp_path / NAMES[host]
    p.write_bytes(FAM["tail_polyglot"](host, trailer, data))
    out = subprocess.run([sys.executable, "-c", _JIT, str(p), str(marker)],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.stdout.strip().endswith("fired"), out.stdout + out.stderr[-2000:]
    marker.unlink()


def test_the_host_reads_its_own_format(tmp_path: Path, archive: tuple[bytes, Path]) -> None:
    """Each host stays a valid file of its format (the polyglot is not a broken file)."""
    import pickle

    import numpy as np
    from safetensors.torch import load_file

    data = archive[0]
    n = len(data) + 5
    p = tmp_path / "a.safetensors"
    p.write_bytes(FAM["tail_polyglot"]("safetensors", "five_bytes", data))
    assert load_file(p)["blob"].numel() == n
    p = tmp_path / "a.npy"
    p.write_bytes(FAM["tail_polyglot"]("npy", "five_bytes", data))
    assert np.load(p).size == n
    p = tmp_path / "a.pkl"
    p.write_bytes(FAM["tail_polyglot"]("pickle", "five_bytes", data))
    assert len(pickle.loads(p.read_bytes())) == n
    p = tmp_path / "a.pt"
    p.write_bytes(FAM["tail_polyglot"]("legacy", "five_bytes", data))
    assert torch.load(p, weights_only=True)["blob"].numel() == n
