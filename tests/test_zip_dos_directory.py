"""Members torch's zip reader (miniz) reads differently from their bytes (CKG313, CKG316).

miniz's ``mz_zip_reader_is_file_a_directory`` takes a central entry for a directory when its
name ends in '/' OR its external attributes (bytes 38-41) carry the DOS directory bit 0x10,
whatever the made-by OS; ``mz_zip_reader_extract_to_mem`` then returns success without
writing, so torch's ``getRecord`` hands back the uninitialised buffer it allocated for the
member's size (heap memory) while Python's zipfile, numpy and ckptguard read the member's
bytes. The same function returns success without writing for a zero compressed size; miniz
refuses such an entry with a non-zero size when it opens the archive (CKG316).

Every variant is generated deterministically from checked-in torch.save fixtures (which
member gets the bit, which other attribute bits come with it, which made-by OS) and is
scanned natively and with ``CKPTGUARD_PURE=1``: the same verdict, rule and findings, and
the C prover (``_native/zipcore.c``) declines every archive the Python reader flags.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from ckg_zip_archives import Member, archive, read_outcome, write

from ckptguard._native import native
from ckptguard.analysis import engine
from ckptguard.model import Report, Verdict
from ckptguard.policy import DEFAULT_LIMITS, Policy

ROOT = Path(__file__).resolve().parent.parent
LINEAR = ROOT / "fixtures" / "benign" / "linear.pt"          # data/0 (48 B), data/1 (12 B)
SCALARS = ROOT / "fixtures" / "benign" / "scalars_empty.pt"  # data/2: an empty record

needs_native = pytest.mark.skipif(native("zipcore") is None,
                                  reason="zipcore not built (pure-Python install)")

#: (fixture, member under ``archive/``): the pickle, tensor records (an empty one too) and
#: the small records torch reads
MEMBERS = [(LINEAR, "data.pkl"), (LINEAR, "data/0"), (LINEAR, "data/1"), (LINEAR, "version"),
           (LINEAR, "byteorder"), (LINEAR, ".data/serialization_id"),
           (LINEAR, ".format_version"), (SCALARS, "data/2")]
#: external attributes with the DOS directory bit: alone, with archive / read-only /
#: hidden+system bits, under a Unix directory mode and a Unix file mode, all bits
DIR_ATTRS = [0x10, 0x30, 0x11, 0x16, (0o40755 << 16) | 0x10, (0o100644 << 16) | 0x10,
             0xFFFFFFFF]
#: external attributes without it (miniz ignores the high word: a Unix directory mode alone
#: is not a directory to it)
FILE_ATTRS = [0x20, 0x01, 0x06, 0o100644 << 16, (0o40755 << 16) | 0x20, 0xFFFFFFEF]
#: made-by OS bytes: MS-DOS, Unix, Windows NTFS, VFAT, OS X (miniz ignores it)
OSES = [0, 3, 10, 14, 19]


def _central_entries(data: bytes) -> dict[str, int]:
    """Each member's central-entry offset (the fixtures' end record holds real values)."""
    eocd = data.rfind(b"PK\x05\x06")
    cd_off = struct.unpack_from("<I", data, eocd + 16)[0]
    assert cd_off != 0xFFFFFFFF
    out: dict[str, int] = {}
    p = cd_off
    while data[p:p + 4] == b"PK\x01\x02":
        nl, xl, cl = struct.unpack_from("<HHH", data, p + 28)
        out[data[p + 46:p + 46 + nl].decode()] = p
        p += 46 + nl + xl + cl
    return out


def patched(fixture: Path, member: str, attr: int, os_byte: int) -> bytes:
    """``fixture`` with ``archive/<member>``'s external attributes set to ``attr`` and its
    made-by OS byte to ``os_byte``; nothing else changes."""
    b = bytearray(fixture.read_bytes())
    p = _central_entries(bytes(b))["archive/" + member]
    struct.pack_into("<I", b, p + 38, attr)
    b[p + 5] = os_byte
    return bytes(b)


def _scan(data: bytes, pure: bool, monkeypatch: pytest.MonkeyPatch) -> Report:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
        return engine.audit_bytes(data, "x.pt", policy=Policy(), limits=DEFAULT_LIMITS)


def _findings(r: Report) -> list[tuple[str, str | None, str]]:
    return [(f.rule_id, f.location.member if f.location else None, f.message)
            for f in r.all_findings()]


POSITIVE = list(itertools.product(MEMBERS, DIR_ATTRS, OSES))


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
def test_dos_directory_bit_is_a_reader_disagreement(pure: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member x attribute combination x made-by OS: UNSAFE, exactly CKG313, one
    finding that names the member and what torch reads instead."""
    assert len(POSITIVE) == 280
    for (fixture, member), attr, os_byte in POSITIVE:
        r = _scan(patched(fixture, member, attr, os_byte), pure, monkeypatch)
        case = (member, hex(attr), os_byte)
        assert r.verdict is Verdict.UNSAFE, case
        assert {f.rule_id for f in r.all_findings()} == {"CKG313"}, (case, _findings(r))
        (f,) = r.all_findings()
        assert f.location is not None and f.location.member == "archive/" + member, case
        assert "takes it for a directory" in f.message, case
        assert f"0x{attr:08x}" in f.message and f"({os_byte})" in f.message, case
        size = zipfile.ZipFile(fixture).getinfo("archive/" + member).file_size
        if size:
            assert f"uninitialised {size}-byte buffer" in f.message, case
        else:
            assert "read it as a file" in f.message, case


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
def test_other_attribute_bits_stay_safe(pure: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same members with attribute bits miniz does not read as a
    directory are SAFE without a finding (the check looks at bit 0x10 only)."""
    for (fixture, member), attr, os_byte in itertools.product(MEMBERS, FILE_ATTRS, OSES):
        r = _scan(patched(fixture, member, attr, os_byte), pure, monkeypatch)
        assert r.verdict is Verdict.SAFE and not r.all_findings(), (member, hex(attr), os_byte)


@needs_native
def test_native_and_pure_agree_and_prover_declines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Differential on the variants: the same findings, regions and bytes read both ways;
    the prover declines every flagged variant and proves every control (so the decline is
    this check's, not another condition's)."""
    controls = itertools.product(MEMBERS, FILE_ATTRS, OSES)
    for ((fixture, member), attr, os_byte), flagged in itertools.chain(
            ((v, True) for v in POSITIVE), ((v, False) for v in controls)):
        data = patched(fixture, member, attr, os_byte)
        with monkeypatch.context() as m:
            m.setenv("CKPTGUARD_PURE", "1")
            pure, _ = read_outcome(data, DEFAULT_LIMITS)
            m.setenv("CKPTGUARD_PURE", "0")
            for fd in (False, True):
                got, proven = read_outcome(data, DEFAULT_LIMITS, fd=fd)
                assert got == pure, (member, hex(attr))
                assert proven is not flagged, (member, hex(attr), fd)
        assert bool(pure[1]) is flagged
        assert {f.rule_id for f in pure[1]} <= {"CKG313"}


def _with_random_attrs(rng: random.Random, data: bytes) -> bytes:
    """``data`` with random external attributes / made-by OS on some central entries."""
    b = bytearray(data)
    p = b.find(b"PK\x01\x02")
    while p >= 0 and p + 46 <= len(b):
        if rng.random() < 0.3:
            struct.pack_into("<I", b, p + 38, rng.choice(DIR_ATTRS + FILE_ATTRS + [0]))
            b[p + 5] = rng.choice(OSES)
        p = b.find(b"PK\x01\x02", p + 46)
    return bytes(b)


@needs_native
def test_generated_archives_prover_declines_whatever_python_flags(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded archives of tests/ckg_zip_archives.py (zipfile, torch.save, raw layouts, byte
    mutations) with attribute bits on random entries: native and pure read the same, the
    prover never proves an archive the Python reader flags, and it declines every archive
    with a CKG313 directory finding."""
    rng = random.Random(20251129)
    flagged = proven_n = 0
    for _ in range(400):
        _, data = archive(rng)
        data = _with_random_attrs(rng, data)
        with monkeypatch.context() as m:
            m.setenv("CKPTGUARD_PURE", "1")
            pure, _ = read_outcome(data, DEFAULT_LIMITS)
            m.setenv("CKPTGUARD_PURE", "0")
            got, proven = read_outcome(data, DEFAULT_LIMITS)
        assert got == pure
        dir_findings = [f for f in pure[1]
                        if f.rule_id == "CKG313" and "takes it for a directory" in f.message]
        if proven:
            proven_n += 1
            assert not pure[1]
        if dir_findings:
            flagged += 1
            assert not proven
    assert flagged >= 40 and proven_n >= 20, (flagged, proven_n)


# --- names ending in '/' ----------------------------------------------------------------

def _linear_members() -> list[Member]:
    z = zipfile.ZipFile(LINEAR)
    return [Member(i.filename.encode(), z.read(i), flags=0, descriptor="sig")
            for i in z.infolist()]


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
@pytest.mark.parametrize("attr", [0, 0x10], ids=["plain", "dos-dir"])
def test_genuine_directory_entries_keep_their_verdict(attr: int, pure: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory entry with no bytes reads empty everywhere: SAFE as before (CKG312, an
    extra member torch never reads, is informational); one with bytes is not."""
    empty = write([*_linear_members(), Member(b"archive/sub/", b"", flags=0, descriptor="sig",
                                              external_attr=attr, made_by=0)])
    r = _scan(empty, pure, monkeypatch)
    assert r.verdict is Verdict.SAFE
    assert {f.rule_id for f in r.all_findings()} == {"CKG312"}
    full = write([*_linear_members(), Member(b"archive/sub/", b"xyz", flags=0,
                                             descriptor="sig", external_attr=attr)])
    r = _scan(full, pure, monkeypatch)
    assert r.verdict is Verdict.UNSAFE
    assert {f.rule_id for f in r.all_findings()} == {"CKG312", "CKG313"}
    (f,) = [f for f in r.all_findings() if f.rule_id == "CKG313"]
    assert f.location is not None and f.location.member == "archive/sub/"
    assert "a name ending in '/'" in f.message and "uninitialised 3-byte" in f.message


# --- miniz's other "success without writing": a zero compressed size ------------------------

_LOC = struct.Struct("<4sHHHHHIIIHH")
_CEN = struct.Struct("<4sHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_PKL = b"\x80\x02}q\x00." + b" " * 200


def _zero_csize(c32: int, u32: int, extra: bytes) -> bytes:
    """archive/data.pkl whose central entry says compressed size 0 (directly or through a
    Zip64 extra field) and a non-zero size; archive/version plain."""
    out = bytearray()
    cen = bytearray()
    for name, data, (c, u, x) in ((b"archive/data.pkl", _PKL, (c32, u32, extra)),
                                  (b"archive/version", b"3\n", (2, 2, b""))):
        crc, hoff = zlib.crc32(data), len(out)
        out += _LOC.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(name),
                         0) + name + data
        cen += _CEN.pack(b"PK\x01\x02", 45, 45, 0, 0, 0, 0, crc, c, u, len(name), len(x), 0,
                         0, 0, 0, hoff) + name + x
    cd = len(out)
    return bytes(out + cen + _EOCD.pack(b"PK\x05\x06", 0, 0, 2, 2, len(cen), cd, 0))


ZERO_CSIZE = {
    "32-bit": (0, len(_PKL), b""),
    "zip64-size": (0, 0xFFFFFFFF, struct.pack("<HHQ", 1, 8, len(_PKL))),
    "zip64-both": (0xFFFFFFFF, 0xFFFFFFFF, struct.pack("<HHQQ", 1, 16, len(_PKL), 0)),
    "zip64-csize": (0xFFFFFFFF, len(_PKL), struct.pack("<HHQ", 1, 8, 0)),
}


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
@pytest.mark.parametrize("variant", list(ZERO_CSIZE))
def test_zero_compressed_size_is_flagged(variant: str, pure: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Already covered before this fix: UNSAFE with CKG316 (and the prover declines)."""
    data = _zero_csize(*ZERO_CSIZE[variant])
    r = _scan(data, pure, monkeypatch)
    assert r.verdict is Verdict.UNSAFE
    ck316 = [f for f in r.all_findings() if f.rule_id == "CKG316"]
    assert ck316 and ck316[0].location is not None
    assert ck316[0].location.member == "archive/data.pkl"
    if not pure and native("zipcore") is not None:
        with monkeypatch.context() as m:
            m.setenv("CKPTGUARD_PURE", "0")
            assert read_outcome(data, DEFAULT_LIMITS)[1] is False


# --- the finding is real: torch reads something else ---------------------------------------

_TORCH_CHECK = r"""
import sys, zipfile, torch
path, member = sys.argv[1], sys.argv[2]
real = zipfile.ZipFile(path).read("archive/" + member)      # what Python's zipfile reads
r = torch._C.PyTorchFileReader(open(path, "rb"))
print("record_same", bytes(r.get_record(member)) == real)
for mm in (False, True):
    try:
        sd = torch.load(path, weights_only=True, mmap=mm)
        print("load", mm, torch.equal(sd["w"], torch.arange(1, 4097, dtype=torch.float32)))
    except Exception as e:
        print("load", mm, "error", type(e).__name__)
"""


def _torch_reads(tmp_path: Path, member: str) -> list[str]:
    torch = pytest.importorskip("torch")
    src = tmp_path / "src.pt"
    torch.save({"w": torch.arange(1, 4097, dtype=torch.float32)}, src)
    p = tmp_path / f"dir_{member.replace('/', '_')}.pt"
    # torch.save names the archive folder after the file ("src")
    data = bytearray(src.read_bytes())
    off = _central_entries(bytes(data))["src/" + member]
    struct.pack_into("<I", data, off + 38, 0x10)
    p.write_bytes(bytes(data))
    # a fresh process: no freed buffer there holds the member's bytes by chance
    out = subprocess.run([sys.executable, "-c", _TORCH_CHECK.replace('"archive/"', '"src/"'),
                          str(p), member], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split("\n")
    assert ckptguard_verdict(p) == ("UNSAFE", {"CKG313"})
    return [ln for ln in out if ln]


def ckptguard_verdict(path: Path) -> tuple[str, set[str]]:
    import ckptguard
    r = ckptguard.scan(path)
    return r.verdict.value, {f.rule_id for f in r.all_findings()}


def test_torch_reads_uninitialised_memory_for_a_directory_flagged_tensor(
        tmp_path: Path) -> None:
    """Control: with the bit on the tensor record, torch's reader returns other bytes than
    Python's zipfile; torch.load without mmap loads other values, with mmap the real ones
    (mmap reads the data offset, not the record)."""
    assert _torch_reads(tmp_path, "data/0") == [
        "record_same False", "load False False", "load True True"]


def test_torch_cannot_load_a_directory_flagged_data_pkl(tmp_path: Path) -> None:
    """Control: with the bit on data.pkl, weights_only=True unpickles uninitialised memory
    and fails, mmap or not; Python's zipfile reads the real pickle."""
    lines = _torch_reads(tmp_path, "data.pkl")
    assert lines[0] == "record_same False"
    assert [ln.split()[:3] for ln in lines[1:]] == [["load", "False", "error"],
                                                    ["load", "True", "error"]]


def test_torch_refuses_zero_compressed_size(tmp_path: Path) -> None:
    """Control for CKG316's meaning: this torch refuses each zero-compressed-size archive
    when it opens it (and opens the same archive with consistent sizes)."""
    torch = pytest.importorskip("torch")
    for variant, args in ZERO_CSIZE.items():
        p = tmp_path / f"{variant}.pt"
        p.write_bytes(_zero_csize(*args))
        with open(p, "rb") as f, pytest.raises(RuntimeError,
                                               match="failed reading zip archive"):
            torch._C.PyTorchFileReader(f)
    ok = tmp_path / "ok.pt"
    ok.write_bytes(_zero_csize(len(_PKL), len(_PKL), b""))
    with open(ok, "rb") as f:
        assert bytes(torch._C.PyTorchFileReader(f).get_record("data.pkl")) == _PKL


def test_helpers_patch_only_the_chosen_entry() -> None:
    """The generator changes bytes 38-41 and 5 of one central entry, nothing else."""
    base = LINEAR.read_bytes()
    out = patched(LINEAR, "data/0", 0x10, 3)
    diff = [i for i in range(len(base)) if base[i] != out[i]]
    p = _central_entries(base)["archive/data/0"]
    assert diff and set(diff) <= {p + 5, p + 38}
    info = zipfile.ZipFile(io.BytesIO(out)).getinfo("archive/data/0")
    assert info.external_attr == 0x10 and info.create_system == 3
