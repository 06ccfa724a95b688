"""The same-bytes check without hashing on the load path (context.AuditedRegion,
loaders/base.verify_identity, zipcore.prove_fd).

The audit keeps the bytes of every region it records (within ``context.KEEP_BYTES``);
the loader compares them with the file after the load, and a region's SHA-256 is computed
only when something reads it (a JSON/SARIF report). Pinned here:

- an ``AuditedRegion`` is a ``Region`` for every observer: equal to, hashed, copied,
  pickled, ``asdict``-ed and rendered as the plain one with the same digest; the report
  JSON of a scan is byte-identical whether the digests were read before or not;
- every byte the audit relied on is still checked: a local header, ``data.pkl``, the
  central directory, the ``version`` record, rewritten (same size, same mtime) between the
  audit and the load or between the load and the identity check, raise FileChangedError
  for the default engine, ``engine="ckptguard"`` and meta loads; with the bytes kept, with
  the digests already computed (bytes dropped) and past the budget (hashed as read);
- ``prove_fd`` (pread in C, a data descriptor read with the next window) gives the pure
  reader's outcome on torch.save archives with large members and on every one-byte
  mutation of their headers, descriptors and directory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_zip_archives import read_outcome

import ckptguard
from ckptguard import FileChangedError
from ckptguard import context as CTX
from ckptguard._native import native
from ckptguard.context import AuditedRegion, Source
from ckptguard.loaders import _torch, load_audited, open_audited
from ckptguard.model import Region
from ckptguard.report import ScanResult, render

#: writers inside this process during a load: the lease would make them wait (conftest)
pytestmark = pytest.mark.usefixtures("no_lease")

REAL_LOAD = _torch.ORIGINAL_LOAD

needs_native = pytest.mark.skipif(native("zipcore") is None,
                                  reason="zipcore not built (pure-Python install)")


# --- AuditedRegion is a Region ----------------------------------------------------------------

def test_audited_region_is_a_region_for_every_observer() -> None:
    data = bytes(range(256)) * 3
    digest = hashlib.sha256(data).hexdigest()
    plain = Region(7, len(data), digest)
    a = AuditedRegion(7, data)
    assert isinstance(a, Region) and a.audited is data  # nothing hashed yet
    assert a == plain and plain == a and hash(a) == hash(plain)
    assert a.audited is None  # the digest was computed (for the comparison), the bytes let go
    assert a.sha256 == digest and a.to_dict() == plain.to_dict()
    assert repr(a) == repr(plain)
    for b in (AuditedRegion(7, data), a):
        assert copy.deepcopy(b) == plain and type(copy.deepcopy(b)) is Region
        assert pickle.loads(pickle.dumps(b)) == plain
        assert dataclasses.asdict(b) == dataclasses.asdict(plain)
        assert dataclasses.astuple(b) == dataclasses.astuple(plain)
    assert AuditedRegion(7, data) != Region(7, len(data), "0" * 64)
    assert AuditedRegion(8, data) != plain and AuditedRegion(7, data[1:]) != plain
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.offset = 3  # type: ignore[misc]
    assert {a: 1}[plain] == 1


def test_source_keeps_bytes_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(1).randbytes(4000)
    src = Source.from_bytes(data, keep=True)
    src.read(0, 1000, record=True)
    src.read(2000, 1000, record=True)
    assert all(type(r) is AuditedRegion and r.audited is not None for r in src.regions())
    plain = Source.from_bytes(data)  # a scan's source: hashed as read, as before
    plain.read(0, 1000, record=True)
    assert [type(r) for r in plain.regions()] == [Region]
    monkeypatch.setattr(CTX, "KEEP_BYTES", 1500)
    src = Source.from_bytes(data, keep=True)
    src.read(0, 1000, record=True)
    src.read(2000, 1000, record=True)  # past the budget: hashed as read
    first, second = src.regions()
    assert type(first) is AuditedRegion and type(second) is Region
    assert [(r.offset, r.length, r.sha256) for r in src.regions()] == [
        (0, 1000, hashlib.sha256(data[:1000]).hexdigest()),
        (2000, 1000, hashlib.sha256(data[2000:3000]).hexdigest())]


# --- a real torch.save archive ---------------------------------------------------------------

def _save(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    sd = {f"layer{i}.weight": torch.randn(64, 40, generator=g) for i in range(6)}  # 10 KB each
    sd["scale"] = torch.tensor([1.5])
    torch.save(sd, path)
    return sd


def _offsets(path: Path) -> dict[str, int]:
    """A byte inside each kind of audited region."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = {i.filename.split("/", 1)[1]: i for i in z.infolist()}
    def data_start(i: zipfile.ZipInfo) -> int:
        nlen = int.from_bytes(raw[i.header_offset + 26:i.header_offset + 28], "little")
        xlen = int.from_bytes(raw[i.header_offset + 28:i.header_offset + 30], "little")
        return i.header_offset + 30 + nlen + xlen
    eocd = raw.rfind(b"PK\x05\x06")
    cd = raw.rfind(b"PK\x01\x02", 0, eocd)  # the last central-directory entry
    return {
        "local-header": infos["data/3"].header_offset + 31,  # its name, inside the header
        "data.pkl": data_start(infos["data.pkl"]) + infos["data.pkl"].file_size // 2,
        "central-directory": cd + 50,  # a name byte of a directory entry
        "version": data_start(infos["version"]),
    }


def _flip(path: Path, offset: int) -> Callable[[], None]:
    def change() -> None:
        st = os.stat(path)
        with open(path, "r+b") as fh:
            fh.seek(offset)
            b = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([b[0] ^ 0x01]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    return change


def _covered(af: Any, offset: int) -> bool:
    return any(r.offset <= offset < r.offset + r.length for r in af.report.identity.regions)


TARGETS = ["local-header", "data.pkl", "central-directory", "version"]
DIGESTS = ["kept-bytes", "digests-read", "over-budget"]
LOADS: dict[str, dict[str, Any]] = {
    "torch": {}, "ckptguard": {"engine": "ckptguard"}, "meta": {"map_location": "meta"}}


def _open(path: Path, digests: str, monkeypatch: pytest.MonkeyPatch, keep_graph: bool) -> Any:
    if digests == "over-budget":
        monkeypatch.setattr(CTX, "KEEP_BYTES", 0)
    af = open_audited(path, keep_graph=keep_graph)
    kinds = {type(r) for r in af.report.identity.regions}
    if digests == "over-budget":
        assert kinds == {Region}
    else:
        assert kinds == {AuditedRegion}
    if digests == "digests-read":
        for r in af.report.identity.regions:
            assert len(r.sha256) == 64
            assert r.audited is None  # type: ignore[attr-defined]
    return af


def _load(af: Any, how: str) -> Any:
    kw = dict(LOADS[how])
    from ckptguard.model import Engine

    engine = Engine(kw.pop("engine", "torch"))
    return load_audited(af, kw.pop("map_location", "cpu"), engine=engine)


@pytest.mark.parametrize("digests", DIGESTS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("how", sorted(LOADS))
def test_change_between_audit_and_load(tmp_path: Path, target: str, digests: str, how: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.pt"
    _save(path)
    offset = _offsets(path)[target]
    with _open(path, digests, monkeypatch, how != "torch") as af:
        assert _covered(af, offset)
        _flip(path, offset)()
        with pytest.raises(FileChangedError):
            _load(af, how)


@pytest.mark.parametrize("digests", DIGESTS)
@pytest.mark.parametrize("target", TARGETS)
def test_change_between_load_and_verify(tmp_path: Path, target: str, digests: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.pt"
    _save(path)
    change = _flip(path, _offsets(path)[target])

    def racing(f: object, **kw: object) -> object:
        out = REAL_LOAD(f, **kw)
        change()  # torch read the audited bytes; they change before the identity check
        return out

    with _open(path, digests, monkeypatch, False) as af:
        monkeypatch.setattr(_torch, "ORIGINAL_LOAD", racing)
        with pytest.raises(FileChangedError):
            _load(af, "torch")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("how", ["ckptguard", "meta"])
def test_change_after_the_audit_caught_by_the_builders(tmp_path: Path, target: str, how: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """engine="ckptguard" and meta build from the audit without torch.load: the identity
    check before they return still sees a change made after the audit."""
    path = tmp_path / "m.pt"
    _save(path)
    with _open(path, "kept-bytes", monkeypatch, True) as af:
        assert af.graph is not None
        _flip(path, _offsets(path)[target])()
        with pytest.raises(FileChangedError):
            _load(af, how)


@pytest.mark.parametrize("how", sorted(LOADS))
def test_unchanged_file_loads_bit_exact(tmp_path: Path, how: str) -> None:
    path = tmp_path / "m.pt"
    sd = _save(path)
    kw = LOADS[how]
    ours = ckptguard.safe_load(path, **kw)
    ref = torch.load(path, weights_only=True, mmap=True, map_location=kw.get("map_location",
                                                                                "cpu"))
    assert list(ours) == list(ref) == list(sd)
    for k, t in ref.items():
        o = ours[k]
        assert (o.dtype, o.shape, o.stride(), o.device) == (t.dtype, t.shape, t.stride(),
                                                             t.device)
        if how != "meta":
            assert torch.equal(o, t) and torch.equal(o, sd[k])


def test_report_json_is_the_same_whether_digests_were_read(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    _save(path)
    scanned = ckptguard.scan(path)  # a scan hashes as it reads (no bytes kept)
    assert all(type(r) is Region for r in scanned.identity.regions)  # type: ignore[union-attr]
    with open_audited(path) as af:  # a load's audit keeps the bytes, digests on demand
        fresh = af.report
        assert all(type(r) is AuditedRegion for r in fresh.identity.regions)  # type: ignore[union-attr]
        first = render("json", ScanResult(reports=(fresh,)))
        again = render("json", ScanResult(reports=(fresh,)))
    other = ckptguard.scan(path)
    assert first == again == render("json", ScanResult(reports=(other,)))
    assert first == render("json", ScanResult(reports=(scanned,)))
    doc = json.loads(first)
    raw = path.read_bytes()
    regions = doc["reports"][0]["identity"]["regions"] if "reports" in doc else \
        doc["identity"]["regions"]
    assert regions and all(
        hashlib.sha256(raw[r["offset"]:r["offset"] + r["length"]]).hexdigest() == r["sha256"]
        for r in regions)
    assert render("sarif", ScanResult(reports=(fresh,))) == \
        render("sarif", ScanResult(reports=(other,)))


# --- prove_fd on archives with large members (descriptor + next window in one pread) ------------

def _big_member_archive(seed: int) -> bytes:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    sd = {f"t{i}": torch.randn(rng.randrange(1100, 3000), generator=g)
          for i in range(rng.randrange(2, 6))}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@needs_native
def test_prove_fd_big_members_and_their_mutants(monkeypatch: pytest.MonkeyPatch) -> None:
    proven_plain = 0
    for seed in range(4):
        data = _big_member_archive(seed)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            heads = [i.header_offset for i in z.infolist()]
            assert any(i.flag_bits & 0x08 and i.compress_size > 4096 for i in z.infolist())
        cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
        first_cd = data.find(b"PK\x01\x02")
        # every byte of each local header and the 24 bytes before it (a data descriptor),
        # and a sample of the directory and end records
        spots = sorted({o for h in heads for o in range(max(0, h - 24), h + 40)} |
                       set(range(first_cd, len(data), 7)) | {cd})
        for k, spot in enumerate([-1, *spots]):
            mutant = bytearray(data)
            if spot >= 0:
                mutant[spot] ^= 1 << (k % 8)
            with monkeypatch.context() as m:
                m.setenv("CKPTGUARD_PURE", "1")
                slow = read_outcome(bytes(mutant), CTX.DEFAULT_LIMITS, fd=True)
                m.setenv("CKPTGUARD_PURE", "0")
                fast = read_outcome(bytes(mutant), CTX.DEFAULT_LIMITS, fd=True)
            assert fast[0] == slow[0], (seed, spot)
            if spot < 0:
                assert fast[1]  # the plain archive is proven
                proven_plain += 1
            if fast[1]:
                assert slow[0][1] == [], (seed, spot)
    assert proven_plain == 4


@needs_native
def test_prove_fd_reads_a_file_through_a_slice(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch zip stored inside another file (a .distcp range) through SliceSource over a
    local file: regions in the outer file's coordinates, both counters, as the pure path."""
    from ckptguard.analysis.zipdefects import record_defects
    from ckptguard.context import AuditContext, SliceSource
    from ckptguard.policy import Policy
    from ckptguard.readers import zipfast
    from ckptguard.readers.zipfile import read_archive

    inner = _big_member_archive(9)
    path = tmp_path / "outer.bin"
    path.write_bytes(b"H" * 100 + inner + b"T" * 50)
    outs = []
    for pure in ("1", "0"):
        monkeypatch.setenv("CKPTGUARD_PURE", pure)
        fd = os.open(path, os.O_RDONLY)
        try:
            parent = Source(fd, path.stat().st_size)
            src = SliceSource(parent, 100, len(inner))
            ctx = AuditContext("x.pt", src, Policy())
            a = read_archive(ctx, record_defects(ctx))
            assert a is not None
            outs.append((a.entries, ctx.findings, parent.regions(), parent.bytes_read,
                         src.bytes_read, zipfast.facts(a) is not None))
        finally:
            os.close(fd)
    assert outs[0][:5] == outs[1][:5]
    assert outs[1][5] is True and outs[0][5] is False
    assert min(r.offset for r in outs[1][2]) >= 100


# --- zipcore.same_bytes: the identity check's re-read in C --------------------------------------

@needs_native
def test_same_bytes_finds_the_first_changed_region(tmp_path: Path) -> None:
    core = native("zipcore")
    assert core is not None
    data = bytearray(random.Random(3).randbytes(300_000))
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(data))
    spans = [(0, 10), (12, 30), (5000, 100), (5200, 1), (9000, 20_000), (200_000, 50),
             (299_990, 10)]  # runs merged (gaps <= 4096), split, and one at the very end
    regions = tuple(AuditedRegion(o, bytes(data[o:o + n])) for o, n in spans)
    plain = Region(100, 5, hashlib.sha256(bytes(data[100:105])).hexdigest())
    mixed = tuple(sorted((*regions, plain), key=lambda r: r.offset))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert core.same_bytes(fd, regions, AuditedRegion) == (-1, [])
        at = next(i for i, r in enumerate(mixed) if r is plain)  # (== would read digests)
        assert core.same_bytes(fd, mixed, AuditedRegion) == (-1, [at])
        for k, (o, n) in enumerate(spans):
            for spot in (o, o + n - 1):
                changed = bytearray(data)
                changed[spot] ^= 0x80
                path.write_bytes(bytes(changed))
                assert core.same_bytes(fd, regions, AuditedRegion)[0] == k, (k, spot)
        path.write_bytes(bytes(data[:299_995]))  # the last region cut short
        assert core.same_bytes(fd, regions, AuditedRegion)[0] == len(spans) - 1
        path.write_bytes(bytes(data))
        # a region whose digest was read has let its bytes go: checked by digest instead
        assert len(regions[2].sha256) == 64
        assert core.same_bytes(fd, regions, AuditedRegion) == (-1, [2])
        assert core.same_bytes(fd, regions, Region) == (-1, list(range(len(spans))))
    finally:
        os.close(fd)


@pytest.mark.parametrize("pure", ["1", "0"])
def test_verify_both_ways(tmp_path: Path, pure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_identity with the C re-read and with CKPTGUARD_PURE=1 (the Python loop)."""
    path = tmp_path / "m.pt"
    _save(path)
    monkeypatch.setenv("CKPTGUARD_PURE", pure)
    for target in TARGETS:
        _save(path)
        with open_audited(path) as af:
            af.verify()
            _flip(path, _offsets(path)[target])()
            with pytest.raises(FileChangedError):
                af.verify()
