"""The zip reader parses, analysis audits: ``analysis/zipdefects.ZIP_RULES`` maps every
``ZipDefect`` kind the reader (``readers/zipfile.py``) can hand out to its rule. The table
is pinned both ways: every kind has a row, every row's rule is registered and is a zip
rule, every row's message takes exactly the kind's values, the reader emits no finding of
its own, and the reader produces every kind (one generated archive per kind, whose scan
carries the row's rule)."""

from __future__ import annotations

import contextlib
import inspect
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import ckptguard
from ckptguard.analysis.zipdefects import ZIP_RULES, finding_args, record_defects
from ckptguard.context import AuditContext, LimitExceeded, Source
from ckptguard.policy import Limits, Policy
from ckptguard.readers import zipfile as zipreader
from ckptguard.readers.zipfile import (
    Defect,
    ZipArchive,
    ZipDefect,
    compare_python_zipfile,
    read_archive,
)
from ckptguard.rules import RULES, rule

D = ZipDefect
_LOC = struct.Struct("<4sHHHHHIIIHH")
_CEN = struct.Struct("<4sHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_Z64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_Z64_LOC = struct.Struct("<4sIQI")
_PKL = b"\x80\x02}q\x00."  # an empty dict

#: the rules the zip container's structure maps to: the zip-* rules the reader decides,
#: and the leading/trailing-bytes rules every container shares
_CONTAINER_RULES = frozenset({"CKG004", "CKG005"})
_ANALYSIS_ZIP_RULES = frozenset({"CKG309", "CKG311", "CKG312"})  # decided by torchfile.py


def _is_zip_rule(rule_id: str) -> bool:
    return rule_id in _CONTAINER_RULES or rule(rule_id).name.startswith("zip")


# --- the table, both ways ----------------------------------------------------------------

def test_every_kind_has_exactly_one_row() -> None:
    assert set(ZIP_RULES) == set(ZipDefect)
    assert list(ZIP_RULES) == list(ZipDefect)  # one order to read both in


def test_every_row_is_a_registered_zip_rule() -> None:
    registered = set(RULES)
    for kind, row in ZIP_RULES.items():
        assert row.rule_id in registered, kind
        assert _is_zip_rule(row.rule_id), (kind, row.rule_id)


def test_every_zip_rule_the_reader_decides_has_a_row() -> None:
    """The other direction: each zip-* rule is the reader's (a row here) or one of the
    three that the torch auditor decides from the parsed archive."""
    zip_rules = {i for i, r in RULES.items() if r.name.startswith("zip")} | _CONTAINER_RULES
    mapped = {row.rule_id for row in ZIP_RULES.values()}
    assert zip_rules - _ANALYSIS_ZIP_RULES == mapped
    assert not mapped & _ANALYSIS_ZIP_RULES


def test_every_message_takes_exactly_the_kinds_values() -> None:
    for kind, row in ZIP_RULES.items():
        assert tuple(inspect.signature(row.message).parameters) == kind.fields, kind
        if row.evidence is not None:
            assert tuple(inspect.signature(row.evidence).parameters) == kind.fields, kind


def test_kinds_are_distinct_and_defects_are_checked() -> None:
    assert len({k.value[0] for k in ZipDefect}) == len(ZipDefect)
    with pytest.raises(TypeError, match="CRC_MISMATCH"):
        Defect(D.CRC_MISMATCH, ("a",))
    d = Defect(D.CRC_MISMATCH, ("a/data.pkl", 0xDEADBEEF), "a/data.pkl", 7)
    assert d.fields() == {"name": "a/data.pkl", "crc32": 0xDEADBEEF}
    a = finding_args(d)
    assert (a.rule_id, a.member, a.offset, a.evidence) == ("CKG303", "a/data.pkl", 7, None)
    assert a.message == "member a/data.pkl: CRC-32 mismatch (central directory says deadbeef)"


def test_the_reader_emits_no_finding_itself() -> None:
    """Parsers parse: no rule ID and no ``ctx.add`` in the zip reader."""
    text = Path(zipreader.__file__).read_text()
    assert not re.search(r"CKG\d{3}", text)
    assert ".add(" not in text


# --- a hand-rolled zip writer: one generated archive per defect kind ----------------------

@dataclass
class M:
    """One member: what the local header and the central entry say (None: the truth)."""

    name: bytes = b"a/data.pkl"
    data: bytes = _PKL          # the stored bytes (compressed ones for method 8)
    plain: bytes | None = None  # the uncompressed bytes (CRC, size); None: ``data``
    method: int = 0
    flags: int = 0
    version: int = 20
    disk: int = 0
    csize: int | None = None
    usize: int | None = None
    crc: int | None = None
    hoff: int | None = None     # the central entry's header offset
    ext_attr: int = 0           # the central entry's external attributes
    cextra: bytes = b""
    lname: bytes | None = None
    lmethod: int | None = None
    lflags: int | None = None
    lsizes: tuple[int, int, int] | None = None  # local (crc, csize, usize)
    descriptor: bytes = b""     # written after the data
    lead: bytes = b""           # written before the local header (bytes of no member)


@dataclass
class Z:
    members: list[M] = field(default_factory=lambda: [M()])
    prefix: bytes = b""
    before_cd: bytes = b""      # after the last member
    cd_slack: bytes = b""       # inside the directory, counted in its size
    after_cd: bytes = b""       # between the directory and the end records
    comment: bytes = b""
    suffix: bytes = b""
    disk: int = 0
    n_total: int | None = None
    cd_size_delta: int = 0
    zip64: bool = False
    z64_n_total: int | None = None
    z64_gap: bytes = b""
    z64_loc_disk: int = 0
    z64_loc_offset: int | None = None
    z64_extensible: bytes = b""


def build(z: Z) -> bytes:
    out = bytearray(z.prefix)
    central = bytearray()
    for m in z.members:
        plain = m.data if m.plain is None else m.plain
        crc = zlib.crc32(plain) if m.crc is None else m.crc
        csize = len(m.data) if m.csize is None else m.csize
        usize = len(plain) if m.usize is None else m.usize
        out += m.lead
        hoff = len(out)
        lcrc, lcs, lus = m.lsizes if m.lsizes is not None else (crc, csize, usize)
        lname = m.name if m.lname is None else m.lname
        out += _LOC.pack(b"PK\x03\x04", m.version,
                         m.flags if m.lflags is None else m.lflags,
                         m.method if m.lmethod is None else m.lmethod, 0, 0,
                         lcrc, lcs & 0xFFFFFFFF, lus & 0xFFFFFFFF, len(lname), 0)
        out += lname + m.data + m.descriptor
        central += _CEN.pack(b"PK\x01\x02", 20, m.version, m.flags, m.method, 0, 0, crc,
                             csize & 0xFFFFFFFF, usize & 0xFFFFFFFF, len(m.name),
                             len(m.cextra), 0, m.disk, 0, m.ext_attr,
                             hoff if m.hoff is None else m.hoff)
        central += m.name + m.cextra
    out += z.before_cd
    cd_off = len(out)
    central += z.cd_slack
    out += central
    out += z.after_cd
    n = len(z.members) if z.n_total is None else z.n_total
    cd_size = len(central) + z.cd_size_delta
    if z.zip64:
        z_off = len(out)
        zn = n if z.z64_n_total is None else z.z64_n_total
        out += _Z64_EOCD.pack(b"PK\x06\x06", 44 + len(z.z64_extensible), 45, 45, 0, 0, zn, zn,
                              cd_size, cd_off) + z.z64_extensible + z.z64_gap
        out += _Z64_LOC.pack(b"PK\x06\x07", z.z64_loc_disk,
                             z_off if z.z64_loc_offset is None else z.z64_loc_offset, 1)
    out += _EOCD.pack(b"PK\x05\x06", z.disk, 0, n, n, cd_size, cd_off, len(z.comment))
    return bytes(out + z.comment + z.suffix)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _past_the_end(z: Z, extra: int) -> bytes:
    """The first member's compressed size reaches ``extra`` bytes past the file's end."""
    size = len(build(z))
    first = z.members[0]
    data_off = len(z.prefix) + _LOC.size + len(first.name)
    z.members[0] = replace(first, csize=size - data_off + extra)
    return build(z)


def _descriptor_cut_off() -> bytes:
    # a descriptor flag on a member whose data reaches the last 8 bytes of the file
    z = Z([M(flags=0x0008, lsizes=(0, 0, 0))])
    return _past_the_end(z, -8)


_FAKE_EOCD = _EOCD.pack(b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
_WIDE = 1 << 40
GENERATED: dict[ZipDefect, Callable[[], bytes]] = {
    D.NO_EOCD: lambda: build(Z())[:-_EOCD.size],
    D.BYTES_AFTER_EOCD: lambda: build(Z(suffix=b"junk")),
    D.SEVERAL_EOCD: lambda: build(Z(comment=_FAKE_EOCD)),
    D.HIDDEN_EOCD: lambda: build(Z(before_cd=_FAKE_EOCD)),
    D.MULTI_DISK: lambda: build(Z(disk=1)),
    D.MULTI_DISK_ZIP64: lambda: build(Z(zip64=True, z64_loc_disk=1)),
    D.ZIP64_LOCATOR_PAST_ITSELF: lambda: build(Z(zip64=True, z64_loc_offset=_WIDE)),
    D.ZIP64_EOCD_MISSING: lambda: build(Z(zip64=True, z64_loc_offset=0)),
    D.ZIP64_EXTENSIBLE_DATA: lambda: build(Z(zip64=True, z64_extensible=b"\0" * 8)),
    D.ZIP64_GAP: lambda: build(Z(zip64=True, z64_gap=b"\0" * 4)),
    D.ZIP64_DISAGREES: lambda: build(Z(zip64=True, n_total=1, z64_n_total=2,
                                       members=[M(), M(name=b"a/version", data=b"3\n")])),
    D.DIRECTORY_PAST_END: lambda: build(Z(cd_size_delta=40)),
    D.BYTES_BEFORE_EOCD: lambda: build(Z(after_cd=b"\0" * 7)),
    D.DIRECTORY_SLACK: lambda: build(Z(cd_slack=b"\0" * 5)),
    D.ENTRY_MISSING: lambda: build(Z(n_total=2)),
    D.ENTRY_PAST_DIRECTORY: lambda: build(Z(cd_size_delta=-3, after_cd=b"")),
    D.ZIP64_EXTRA_MISSING: lambda: build(Z([M(csize=0xFFFFFFFF)])),
    D.NAME_NOT_UTF8: lambda: build(Z([M(name=b"a/\xff.pkl", flags=0x0800)])),
    D.NAME_NOT_ASCII: lambda: build(Z([M(name=b"a/\xe9.pkl")])),
    D.ENTRY_ON_OTHER_DISK: lambda: build(Z([M(disk=1)])),
    D.SIZES_CONTRADICT: lambda: build(Z([M(usize=len(_PKL) + 1, lsizes=None)])),
    D.ENCRYPTED: lambda: build(Z([M(flags=0x0001)])),
    D.UNSUPPORTED_FLAGS: lambda: build(Z([M(flags=0x0010)])),
    D.UNSUPPORTED_METHOD: lambda: build(Z([M(method=12)])),
    D.MINIZ_DIRECTORY: lambda: build(Z([M(ext_attr=0x10)])),
    D.DUPLICATE_NAME: lambda: build(Z([M(), M()])),
    D.NAMES_DIFFER_IN_CASE: lambda: build(Z([M(), M(name=b"a/DATA.pkl")])),
    D.NAME_PAST_TORCH_BUFFER: lambda: build(Z([M(name=b"a/" + b"n" * 600)])),
    D.UNSAFE_NAME: lambda: build(Z([M(name=b"../evil.pkl")])),
    # the entry's local header would be the directory itself
    D.LOCAL_HEADER_OUTSIDE: lambda: build(Z([M(hoff=_LOC.size + 10 + len(_PKL))])),
    D.NO_LOCAL_HEADER: lambda: build(Z([M(hoff=0)], prefix=b"\0" * 40)),
    D.LOCAL_NAME_DIFFERS: lambda: build(Z([M(lname=b"a/data.pkx")])),
    D.LOCAL_METHOD_DIFFERS: lambda: build(Z([M(lmethod=8)])),
    D.LOCAL_FLAGS_DIFFER: lambda: build(Z([M(lflags=0x0800)])),
    D.LOCAL_DESCRIPTOR_FIELDS_DIFFER: lambda: build(Z([M(
        flags=0x0008, lsizes=(1, 2, 3),
        descriptor=struct.pack("<4sIII", b"PK\x07\x08", zlib.crc32(_PKL), len(_PKL),
                               len(_PKL)))])),
    D.LOCAL_SIZES_DIFFER: lambda: build(Z([M(lsizes=(0, 1, 1))])),
    D.DESCRIPTOR_CUT_OFF: _descriptor_cut_off,
    D.DESCRIPTOR_DIFFERS: lambda: build(Z([M(
        flags=0x0008, lsizes=(0, 0, 0),
        descriptor=struct.pack("<4sIII", b"PK\x07\x08", 0, 1, 1))])),
    D.MEMBER_INTO_DIRECTORY: lambda: _past_the_end(Z(), -30),
    D.MEMBERS_OVERLAP: lambda: build(Z([M(), M(name=b"a/version", data=b"3\n", hoff=0)])),
    D.PREFIX: lambda: build(Z(prefix=b"\0" * 9)),
    D.PREFIX_BEFORE_EMPTY_DIRECTORY: lambda: build(Z([], prefix=b"\0" * 9)),
    D.GAP_BEFORE_MEMBER: lambda: build(Z([M(), M(name=b"a/version", data=b"3\n",
                                                  lead=b"\0" * 4)])),
    D.GAP_BEFORE_DIRECTORY: lambda: build(Z(before_cd=b"\0" * 6)),
    D.MEMBER_CUT_OFF: lambda: _past_the_end(Z(), 10),
    D.CRC_MISMATCH: lambda: build(Z([M(crc=1, lsizes=(1, len(_PKL), len(_PKL)))])),
    D.SIZE_MISMATCH: lambda: build(Z([M(method=8, data=_deflate(_PKL), plain=_PKL,
                                        usize=len(_PKL) + 1)])),
    D.INFLATES_PAST_SIZE: lambda: build(Z([M(method=8, data=_deflate(b"\0" * 1000),
                                             plain=b"\0" * 1000, usize=10)])),
    D.BAD_DEFLATE: lambda: build(Z([M(method=8, data=b"\xff\xff\xff\xff", plain=_PKL)])),
    D.PYTHON_CANNOT_OPEN: lambda: build(Z([M(version=64)])),
    D.PYTHON_MEMBER_COUNT: lambda: build(Z(cd_slack=_CEN.pack(
        b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(_PKL), len(_PKL), len(_PKL), 10, 0, 0,
        0, 0, 0, 0) + b"a/other.pk")),
    D.PYTHON_READS_DIFFERENTLY: lambda: build(Z([M(name=b"a/data.pkl\0x")])),
}


def _defects(data: bytes) -> list[Defect]:
    """Every defect the reader hands out for ``data``: the directory, CPython's zipfile
    reading, and each member read and verified."""
    out: list[Defect] = []
    ctx = AuditContext("x.pt", Source.from_bytes(data), Policy(), Limits())
    archive = read_archive(ctx, out.append)
    if archive is not None:
        compare_python_zipfile(ctx, archive)
        for e in archive.entries:
            for step in (archive.verify, archive.read):
                with contextlib.suppress(LimitExceeded):
                    step(e)
    return out


def test_every_kind_has_a_generator() -> None:
    assert set(GENERATED) == set(ZipDefect)


@pytest.mark.parametrize("kind", list(ZipDefect), ids=lambda k: k.name)
def test_the_reader_produces_every_kind(kind: ZipDefect, tmp_path: Path) -> None:
    data = GENERATED[kind]()
    found = _defects(data)
    assert kind in {d.kind for d in found}, [d.kind.name for d in found]
    for d in found:
        assert len(d.values) == len(d.kind.fields)
    # ... and the audit of the same bytes carries that row's rule (an archive only
    # CPython's zipfile reads differently is compared when torch's reader would open it)
    path = tmp_path / "x.pt"
    path.write_bytes(data)
    report = ckptguard.scan(path)
    assert ZIP_RULES[kind].rule_id in {f.rule_id for f in report.findings}, (
        kind, sorted({f.rule_id for f in report.findings}))


def test_sink_order_is_the_finding_order() -> None:
    """``record_defects`` records each defect as found: the findings are the defects, in
    order, mapped through the table."""
    data = GENERATED[D.MEMBERS_OVERLAP]()
    found = _defects(data)
    ctx = AuditContext("x.pt", Source.from_bytes(data), Policy(), Limits())
    archive = read_archive(ctx, record_defects(ctx))
    assert isinstance(archive, ZipArchive)
    directory = [d for d in found if d.kind not in {
        D.PYTHON_CANNOT_OPEN, D.PYTHON_MEMBER_COUNT, D.PYTHON_READS_DIFFERENTLY,
        D.MEMBER_CUT_OFF, D.CRC_MISMATCH, D.SIZE_MISMATCH, D.INFLATES_PAST_SIZE,
        D.BAD_DEFLATE}]
    assert [(f.rule_id, f.message) for f in ctx.findings] == [
        (finding_args(d).rule_id, finding_args(d).message) for d in directory]
    assert len(ctx.findings) >= 2


@pytest.mark.parametrize("first", [4096, 4095])
def test_a_spent_decompression_budget_still_caps_inflating(first: int) -> None:
    """zlib reads max_length 0 as "no limit": once deflated members have used exactly the
    whole ``max_decompressed_bytes`` budget, the next member must hit the limit, not
    inflate without bound (and a budget one byte short must not raise ValueError)."""
    import io
    import random
    import zipfile as pyzip

    from ckptguard.policy import DEFAULT_LIMITS

    rnd = random.Random(7)
    buf = io.BytesIO()
    with pyzip.ZipFile(buf, "w", pyzip.ZIP_DEFLATED) as z:
        z.writestr("a/first", rnd.randbytes(first))
        z.writestr("a/second", rnd.randbytes(50_000))
    limits = DEFAULT_LIMITS.replace(max_decompressed_bytes=4096)
    ctx = AuditContext("x.pt", Source.from_bytes(buf.getvalue()), Policy(), limits)
    archive = read_archive(ctx, record_defects(ctx))
    assert archive is not None
    a, b = archive.entries
    assert len(archive.read(a)) == first
    with pytest.raises(LimitExceeded) as e:
        archive.read(b)
    assert e.value.limit == "max_decompressed_bytes"


def test_entries_sharing_one_body_are_each_checked_against_their_own_header() -> None:
    """``verify`` inflates a local body that several central entries share once (an
    overlapping zip bomb: 2000 entries), yet every entry gets its own outcome: its own CRC
    and size checked, its own ratio limit, and the bytes read counted as if inflated again."""
    import random

    def archive(body: bytes, entries: list[tuple[bool, int]]) -> bytes:
        raw = zlib.compressobj(9, zlib.DEFLATED, -15)
        kernel = raw.compress(body) + raw.flush()
        crc = zlib.crc32(body) & 0xFFFFFFFF
        out = _LOC.pack(b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(kernel), len(body), 1, 0)
        out += b"k" + kernel
        cd = b""
        for i, (crc_ok, size) in enumerate(entries):
            nm = f"f{i}".encode()
            cd += _CEN.pack(b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21,
                            crc if crc_ok else crc ^ 1, len(kernel), size,
                            len(nm), 0, 0, 0, 0, 0, 0) + nm
        return out + cd + _EOCD.pack(b"PK\x05\x06", 0, 0, len(entries), len(entries),
                                     len(cd), len(out), 0)

    def verify_all(data: bytes, limits: Limits) -> tuple[list[object], int]:
        ctx = AuditContext("x.zip", Source.from_bytes(data), Policy(), limits)
        found: list[Defect] = []
        a = read_archive(ctx, found.append)
        assert isinstance(a, ZipArchive)
        before = ctx.source.bytes_read
        out: list[object] = []
        for e in a.entries:
            start = len(found)
            try:
                a.verify(e)
                out.append([d.kind.name for d in found[start:]])
            except LimitExceeded as x:
                out.append((x.limit, str(x)))
        return out, ctx.source.bytes_read - before

    noise = random.Random(3).randbytes(1 << 16)
    n = len(noise)
    res, nread = verify_all(archive(noise, [(True, n), (False, n), (True, n), (False, n),
                                            (True, n - 1), (True, n)]), Limits())
    assert res == [[], ["CRC_MISMATCH"], [], ["CRC_MISMATCH"], ["INFLATES_PAST_SIZE"], []]
    assert nread > 5 * n
    zeros = bytes(1 << 20)   # ratio ~1000: past the default cap of 200
    res, nread = verify_all(archive(zeros, [(True, 1 << 20)] * 3), Limits())
    assert res == [("max_compression_ratio", f"limit max_compression_ratio=200 reached: "
                    f"member f{i}") for i in range(3)]
    assert nread > 0 and nread % 3 == 0
