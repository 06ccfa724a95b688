"""The zip prover (``_native/zipcore.c`` via ``readers/zipfast.py``) proves or declines.

Differential, both ways, with the native module and with ``CKPTGUARD_PURE=1``:
- every zip fixture of ``fixtures/manifest.json`` (and every other fixture file): the same
  Report (verdict, rule IDs, findings, tensors, members, metadata, bytes read, identity);
- >= 10,000 seeded archives (tests/ckg_zip_archives.py: zipfile, torch.save and a raw
  writer with layout knobs, then byte-level mutations): ``read_archive`` returns the same
  entries, findings, recorded regions and bytes read (or raises the same limit); wherever
  the prover accepts, the Python reader records no finding; it accepts the plain ones.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ckg_zip_archives import Member, archive, read_outcome, torch_pool, write

from ckptguard._native import native
from ckptguard.analysis import engine
from ckptguard.analysis.zipdefects import record_defects
from ckptguard.context import AuditContext, Source
from ckptguard.policy import DEFAULT_LIMITS, Policy
from ckptguard.readers import zipfast
from ckptguard.readers.zipfile import read_archive

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((ROOT / "fixtures" / "manifest.json").read_text())
ZIP_FIXTURES = sorted(
    f["path"] for f in MANIFEST["fixtures"]
    if (ROOT / "fixtures" / f["path"]).read_bytes()[:4] in (b"PK\x03\x04", b"PK\x05\x06"))
N_GENERATED = int(os.environ.get("CKG_ZIPCORE_EXAMPLES", "10000"))

needs_native = pytest.mark.skipif(native("zipcore") is None,
                                  reason="zipcore not built (pure-Python install)")


def _read(data: bytes, pure: bool, monkeypatch: pytest.MonkeyPatch,
          limits: Any = DEFAULT_LIMITS, *, fd: bool = False) -> tuple[Any, bool]:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
        return read_outcome(data, limits, fd=fd)


def _report(data: bytes, pure: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
        return engine.audit_bytes(data, "x.pt", policy=Policy(), limits=DEFAULT_LIMITS)


def test_manifest_has_zip_fixtures() -> None:
    assert len(ZIP_FIXTURES) > 50


@needs_native
@pytest.mark.parametrize("rel", ZIP_FIXTURES)
def test_zip_fixture_same_report(rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(ROOT / "fixtures" / rel)
    reports = []
    for pure in (True, False):
        with monkeypatch.context() as m:
            m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
            reports.append(engine.audit_file(path, policy=Policy(), limits=DEFAULT_LIMITS))
    assert reports[0] == reports[1]
    data = (ROOT / "fixtures" / rel).read_bytes()
    slow, _ = _read(data, True, monkeypatch)
    fast, proven = _read(data, False, monkeypatch)
    assert slow == fast
    slow_fd, _ = _read(data, True, monkeypatch, fd=True)
    assert _read(data, False, monkeypatch, fd=True) == (slow_fd, proven)
    if proven:
        assert slow[1] == []


@needs_native
def test_zip_fixtures_prover_accepts_benign() -> None:
    """Not vacuous: the prover itself reads every benign zip fixture (torch.save, npz)."""
    accepted = total = 0
    for rel in ZIP_FIXTURES:
        if not rel.startswith("benign/"):
            continue
        total += 1
        ctx = AuditContext(rel, Source.from_bytes((ROOT / "fixtures" / rel).read_bytes()),
                           Policy())
        a = read_archive(ctx, record_defects(ctx))
        accepted += a is not None and zipfast.facts(a) is not None
    assert accepted == total >= 10


@pytest.mark.slow
@needs_native
def test_generated_archives_differential(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261129)
    kinds: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    flagged = 0
    small = DEFAULT_LIMITS.replace(max_members=5, max_central_directory_bytes=300)
    for i in range(N_GENERATED):
        kind, data = archive(rng)
        kinds[kind] += 1
        limits = small if i % 50 == 0 else DEFAULT_LIMITS
        slow, _ = _read(data, True, monkeypatch, limits)
        fast, proven = _read(data, False, monkeypatch, limits)
        assert slow == fast, (i, kind)
        # the same archive as a local file: prove_fd (pread in C) against the pure reader
        # on the same kind of source (an in-memory source also records empty reads)
        slow_fd, _ = _read(data, True, monkeypatch, limits, fd=True)
        on_fd, proven_fd = _read(data, False, monkeypatch, limits, fd=True)
        assert on_fd == slow_fd and proven_fd == proven, (i, kind)
        assert on_fd[:2] == slow[:2], (i, kind)
        flagged += bool(slow[1])
        if proven:
            accepted[kind] += 1
            assert slow[1] == [], (i, kind, slow[1][:2])
        if i % 10 == 0:  # the whole engine: torch records, numpy reading, name loops
            assert _report(data, True, monkeypatch) == _report(data, False, monkeypatch), \
                (i, kind)
    assert sum(accepted.values()) > N_GENERATED // 10, (accepted, kinds)
    assert accepted["raw"] > 0 and accepted["zipfile"] > 0
    if torch_pool():
        assert accepted["torch"] > 0
    assert flagged > N_GENERATED // 4  # the mutants do reach the explaining path


@needs_native
def test_every_torch_save_archive_is_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = torch_pool()
    if not pool:
        pytest.skip("torch not installed")
    for data in pool:
        _, proven = _read(data, False, monkeypatch)
        assert proven


def _plain(**kw: Any) -> bytes:
    ms = [Member(b"archive/data.pkl", b"\x80\x02}q\x00.", descriptor="sig", pad=40),
          Member(b"archive/byteorder", b"little", descriptor="sig", pad=20),
          Member(b"archive/data/0", b"\x01" * 5000, descriptor="sig", pad=40),
          Member(b"archive/version", b"3\n", descriptor="sig", pad=10)]
    for k, v in kw.items():
        setattr(ms[1], k, v)
    return write(ms)


@needs_native
@pytest.mark.parametrize(("knobs", "proven", "rule"), [
    ({}, True, None),
    ({"z64_central": True}, True, None),
    ({"descriptor": "none"}, True, None),
    ({"descriptor": "none", "z64_local": True}, True, None),
    ({"crc_override": 1}, True, None),       # the directory agrees; CKG303 when read
    ({"local_name": b"archive/BYTEORDER"}, False, "CKG302"),
    ({"name": b"archive/../x", "local_name": b"archive/../x"}, False, "CKG308"),
    ({"name": b"archive/DATA.pkl", "local_name": b"archive/DATA.pkl"}, False, "CKG301"),
    ({"name": b"archive/caf\xc3\xa9", "local_name": b"archive/caf\xc3\xa9"}, False, None),
    ({"gap_before": 3}, False, "CKG306"),
    ({"size_override": 7}, False, "CKG316"),
    ({"local_crc": 5, "descriptor": "none"}, False, "CKG302"),
    ({"descriptor": "nosig"}, False, None),  # valid, but left to the Python reader
    ({"method": 8}, False, None),            # deflated: the Python reader decides
    ({"flags": 0x0801}, False, "CKG304"),
    ({"disk": 1}, False, "CKG310"),
    ({"version_needed": 64}, False, None),   # zipfile may read it differently
    ({"central_extra": b"\x55\x55\x09\x00ab"}, False, None),
])
def test_table_prover_decisions(knobs: dict[str, Any], proven: bool, rule: str | None,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Both directions: the plain layouts are proven; each defect declines, and the Python
    reader then names it with its rule."""
    data = _plain(**knobs)
    slow, _ = _read(data, True, monkeypatch)
    fast, got = _read(data, False, monkeypatch)
    assert slow == fast
    assert got is proven
    rules = {f.rule_id for f in slow[1]}
    if proven:
        assert rules == set()
    if rule is not None:
        assert rule in rules
    if knobs == {"crc_override": 1}:
        r = _report(data, False, monkeypatch)
        assert "CKG303" in r.rule_ids() and r.verdict.value != "SAFE"


@needs_native
def test_declined_attempt_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A declined proof reads exactly what the Python reader reads again: the counters are
    put back, so bytes_read is the pure path's."""
    data = _plain(gap_before=3)
    slow, _ = _read(data, True, monkeypatch)
    fast, proven = _read(data, False, monkeypatch)
    assert not proven and slow[3] == fast[3] and slow[2] == fast[2]


def test_pure_python_key_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """CKGUARD_PURE=1 (what a machine without a compiler runs): the plain archive reads
    with no finding and is not marked proven; the defects keep their rules."""
    monkeypatch.setenv("CKPTGUARD_PURE", "1")
    assert native("zipcore") is None
    ctx = AuditContext("x.pt", Source.from_bytes(_plain()), Policy())
    a = read_archive(ctx, record_defects(ctx))
    assert a is not None and zipfast.facts(a) is None and ctx.findings == []
    assert [e.name for e in a.entries][:2] == ["archive/data.pkl", "archive/byteorder"]
    ctx = AuditContext("x.pt", Source.from_bytes(_plain(gap_before=3)), Policy())
    read_archive(ctx, record_defects(ctx))
    assert {f.rule_id for f in ctx.findings} == {"CKG306"}
    r = engine.audit_bytes(_plain(name=b"archive/../x", local_name=b"archive/../x"), "x.pt",
                           policy=Policy(), limits=DEFAULT_LIMITS)
    assert r.verdict.value != "SAFE" and "CKG308" in r.rule_ids()


@needs_native
@pytest.mark.parametrize("knobs", [{}, {"gap_before": 3}])
def test_slice_source_same_counters(knobs: dict[str, Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive read through a SliceSource (a .pt2 member, a .distcp range): proven or
    declined, the slice's and its parent's counters and regions match the pure path."""
    from ckptguard.context import SliceSource

    data = b"HEADER" * 5 + _plain(**knobs) + b"TRAILER"
    outs = []
    for pure in (True, False):
        with monkeypatch.context() as m:
            m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
            parent = Source.from_bytes(data)
            src = SliceSource(parent, 30, len(data) - 37)
            ctx = AuditContext("x.pt", src, Policy())
            a = read_archive(ctx, record_defects(ctx))
            assert a is not None
            outs.append((a.entries, ctx.findings, parent.regions(), parent.bytes_read,
                         src.bytes_read, zipfast.facts(a) is not None))
    assert outs[0][:5] == outs[1][:5]
    assert outs[1][5] is (knobs == {}) and outs[0][5] is False
