"""Seeded zip archive generator for the zip prover's differential tests and fuzz target.

``archive(rng)`` returns torch-like zip archives built three ways -- by CPython's
``zipfile`` (stored/deflated, Zip64 forced, data descriptors from an unseekable stream),
by ``torch.save`` (a pool built once), and by a raw writer with knobs for every layout
detail the strict reader checks (descriptors, Zip64 records and extra fields, padding
extras, gaps, overlaps, duplicates, prefixes, suffixes, comments, local/central
disagreements, odd names) -- then applies byte-level mutations (flips, interesting field
values, truncations, insertions, appended/prepended bytes).
"""

from __future__ import annotations

import io
import os
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

NAMES = ["data.pkl", "byteorder", "version", ".data/version", ".format_version",
         ".storage_alignment", ".data/serialization_id", "constants.pkl", "data/0", "data/1",
         "data/2", "data/10", "code/x.py", "x.npy", "DATA.PKL", "Data/0"]


@dataclass
class Member:
    name: bytes
    data: bytes
    method: int = 0
    flags: int = 0x0800
    descriptor: str = "none"        # none | sig | nosig
    z64_local: bool = False         # sizes in a local Zip64 extra
    z64_central: bool = False       # sizes and offset in a central Zip64 extra
    pad: int = 0                    # torch's "FB" padding extra in the local header
    local_name: bytes | None = None
    local_method: int | None = None
    local_flags: int | None = None
    local_crc: int | None = None
    central_extra: bytes = b""
    version_needed: int = 20
    disk: int = 0
    gap_before: int = 0
    crc_override: int | None = None
    size_override: int | None = None
    external_attr: int = 0          # central entry bytes 38-41 (0x10: DOS directory)
    made_by: int = 0x31E            # central entry bytes 4-5 (high byte: the OS)
    raw: bytes = field(default=b"", repr=False)


def _compressed(m: Member) -> bytes:
    if m.method == 8:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(m.data) + c.flush()
    return m.data


def write(members: list[Member], *, prefix: bytes = b"", suffix: bytes = b"",
          comment: bytes = b"", zip64: bool = True, z64_ext: bytes = b"",
          dup: int | None = None, before_cd: bytes = b"", count_delta: int = 0,
          eocd_sentinels: bool = False, order: list[int] | None = None) -> bytes:
    """A raw archive in torch's layout (miniz: Zip64 end record + locator, descriptors)."""
    out = bytearray(prefix)
    cen = []
    for m in members:
        out += b"\0" * m.gap_before
        hoff = len(out)
        comp = _compressed(m)
        crc = zlib.crc32(m.data) if m.crc_override is None else m.crc_override
        usize = len(m.data) if m.size_override is None else max(0, m.size_override)
        lname = m.name if m.local_name is None else m.local_name
        lflags = m.flags if m.local_flags is None else m.local_flags
        if m.descriptor != "none":
            lflags |= 0x0008
        lmethod = m.method if m.local_method is None else m.local_method
        lextra = b""
        lc, lu = len(comp), usize
        if m.z64_local:
            lextra += struct.pack("<HHQQ", 1, 16, usize, len(comp))
            lc = lu = 0xFFFFFFFF
        if m.pad:
            lextra += struct.pack("<HH", 0x4246, m.pad) + b"Z" * m.pad
        lcrc = crc if m.local_crc is None else m.local_crc
        if m.descriptor != "none":
            lcrc, lc, lu = 0, 0, 0
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", m.version_needed, lflags,
                           lmethod, 0, 0, lcrc, lc, lu, len(lname), len(lextra))
        out += lname + lextra + comp
        if m.descriptor == "sig":
            out += struct.pack("<4sIII", b"PK\x07\x08", crc, len(comp), usize)
        elif m.descriptor == "nosig":
            out += struct.pack("<III", crc, len(comp), usize)
        cflags = m.flags | (0x0008 if m.descriptor != "none" else 0)
        cextra = m.central_extra
        cc, cu, co = len(comp), usize, hoff
        if m.z64_central:
            cextra = struct.pack("<HHQQQ", 1, 24, usize, len(comp), hoff) + cextra
            cc = cu = co = 0xFFFFFFFF
        cen.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", m.made_by,
                               m.version_needed, cflags, m.method, 0, 0, crc, cc, cu,
                               len(m.name), len(cextra), 0, m.disk, 0, m.external_attr, co)
                   + m.name + cextra)
    if dup is not None and cen:
        cen.append(cen[dup % len(cen)])
    if order is not None:
        cen = [cen[i % len(cen)] for i in order]
    out += before_cd
    cd_off = len(out)
    cd = b"".join(cen)
    out += cd
    n = len(cen) + count_delta
    if zip64:
        z_off = len(out)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44 + len(z64_ext), 0x31E, 45, 0, 0,
                           n, n, len(cd), cd_off) + z64_ext
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, z_off, 1)
    if eocd_sentinels:
        en, es, eo = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        en, es, eo = n & 0xFFFF, len(cd) & 0xFFFFFFFF, cd_off & 0xFFFFFFFF
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, en, en, es, eo, len(comment))
    out += comment + suffix
    return bytes(out)


def _name(rng: random.Random, folder: bytes) -> bytes:
    r = rng.random()
    if r < 0.85:
        return folder + b"/" + rng.choice(NAMES).encode()
    odd = [b"../evil", b"a:b", b"/abs", b"x\\y", b"caf\xc3\xa9", b"n\x00ul", b"ctl\x01",
           b"", b"A" * 520, folder + b"/DATA.PKL", b"constants.pkl", b"\xff\xfe",
           folder + b"/x.npy", b"toplevel"]
    return rng.choice(odd)


def _payload(rng: random.Random, name: bytes) -> bytes:
    r = rng.random()
    if name.endswith(b"data.pkl") or name.lower().endswith(b"data.pkl"):
        return b"\x80\x02}q\x00." if r < 0.8 else b"\x80\x02cos\nsystem\nq\x00."
    if name.endswith(b"version"):
        return b"3\n"
    if name.endswith(b"byteorder"):
        return b"little"
    if r < 0.05:
        return b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" \
            + b" " * 50 + b"\n" + b"\x80\x02N."
    if r < 0.1:
        return b""
    n = rng.choice([1, 2, 4, 8, 16, 64, 100, 4000, 4097, 6000, 70000])
    return bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)


def raw_members(rng: random.Random, odd: float) -> tuple[list[Member], dict[str, object]]:
    folder = rng.choice([b"archive", b"model", b"s1000.bin", b"Arch"])
    k = rng.randint(1, 8)
    names = [folder + b"/data.pkl", folder + b"/byteorder"] + [
        folder + b"/data/%d" % i for i in range(k)] + [folder + b"/version"]
    members = []
    for plain in names:
        nm = _name(rng, folder) if rng.random() < odd else plain
        m = Member(nm, _payload(rng, nm))
        m.descriptor = "sig" if rng.random() < 0.8 else rng.choice(["none", "nosig"])
        m.pad = rng.choice([0, 0, 12, 40, 63, 300])
        m.z64_central = rng.random() < 0.1
        m.z64_local = m.descriptor == "none" and rng.random() < 0.1
        if rng.random() < odd:
            knob = rng.randrange(14)
            if knob == 0:
                m.method = 8
            elif knob == 1:
                m.local_name = m.name.upper()
            elif knob == 2:
                m.local_method = 8
            elif knob == 3:
                m.local_flags = m.flags ^ rng.choice([0x1, 0x8, 0x800, 0x40, 0x2])
            elif knob == 4:
                m.flags ^= rng.choice([0x1, 0x40, 0x2000, 0x800, 0x2, 0x4])
            elif knob == 5:
                m.local_crc = 0x12345678
                m.descriptor = "none"
            elif knob == 6:
                m.central_extra = rng.choice([b"\x01\x00\x08\x00" + b"\0" * 8, b"\x99\x99",
                                              b"\x55\x55\x02\x00ab", b"\x55\x55\x09\x00ab"])
            elif knob == 7:
                m.version_needed = rng.choice([45, 63, 64, 200])
            elif knob == 8:
                m.disk = 1
            elif knob == 9:
                m.gap_before = rng.choice([1, 7, 4096, 5000])
            elif knob == 10:
                m.crc_override = rng.getrandbits(32)
            elif knob == 11:
                m.size_override = len(m.data) + rng.choice([-1, 1, 100])
            elif knob == 12:
                m.descriptor = "nosig"
            else:
                m.flags &= ~0x0800
        members.append(m)
    opts: dict[str, object] = {}
    if rng.random() < odd:
        knob = rng.randrange(11)
        if knob == 0:
            opts["prefix"] = rng.choice([b"X", b"#!/bin/sh\n", b"PK\x03\x04junk"])
        elif knob == 1:
            opts["suffix"] = rng.choice([b"\0", b"trailing", b"PK\x05\x06" + b"\0" * 18])
        elif knob == 2:
            opts["comment"] = rng.choice([b"c", b"PK\x05\x06" + b"\0" * 18])
        elif knob == 3:
            opts["zip64"] = False
        elif knob == 4:
            opts["z64_ext"] = b"\0" * rng.choice([4, 8])
        elif knob == 5:
            opts["dup"] = rng.randrange(len(members))
        elif knob == 6:
            opts["before_cd"] = rng.choice([b"\0", b"PK\x05\x06" + b"\0" * 18])
        elif knob == 7:
            opts["count_delta"] = rng.choice([-1, 1])
        elif knob == 8:
            opts["eocd_sentinels"] = True
        elif knob == 9:
            order = list(range(len(members)))
            rng.shuffle(order)
            opts["order"] = order
        else:
            opts["eocd_sentinels"] = True
            opts["zip64"] = False
    return members, opts


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.buf += b
        return len(b)


def zipfile_archive(rng: random.Random) -> bytes:
    folder = rng.choice(["archive", "m", "Arch"])
    unseekable = rng.random() < 0.3
    bio: io.BytesIO | _Unseekable = _Unseekable() if unseekable else io.BytesIO()
    method = zipfile.ZIP_DEFLATED if rng.random() < 0.15 else zipfile.ZIP_STORED
    with zipfile.ZipFile(bio, "w", method) as zf:  # type: ignore[arg-type]
        names = [f"{folder}/data.pkl", f"{folder}/byteorder"] + [
            f"{folder}/data/{i}" for i in range(rng.randint(0, 6))] + [f"{folder}/version"]
        for nm in names:
            data = _payload(rng, nm.encode())
            if rng.random() < 0.2:
                with zf.open(nm, "w", force_zip64=True) as f:
                    f.write(data)
            else:
                zf.writestr(nm, data)
        if rng.random() < 0.1:
            zf.comment = b"hello"
    return bytes(bio.buf) if isinstance(bio, _Unseekable) else bio.getvalue()


_TORCH_POOL: list[bytes] = []
#: the fuzz target turns torch off (its import alone costs 600 MB under ASan)
USE_TORCH = True


def torch_pool() -> list[bytes]:
    """A few dozen archives written by torch.save (built once; empty without torch)."""
    if _TORCH_POOL or not USE_TORCH:
        return _TORCH_POOL
    try:
        import torch
    except ImportError:
        return _TORCH_POOL
    rng = random.Random(1234)
    for i in range(40):
        sd: dict[str, object] = {}
        for j in range(rng.randint(0, 12)):
            n = rng.choice([1, 3, 16, 1000, 1100, 20000])
            sd[f"layer{j}.weight"] = torch.arange(n, dtype=rng.choice(
                [torch.float32, torch.int8, torch.bfloat16]))
        bio = io.BytesIO()
        torch.save(sd, bio)
        _TORCH_POOL.append(bio.getvalue())
    return _TORCH_POOL


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, 0x08074B50, 0x06054B50]


def _first_hits(b: bytearray, sig: bytes, n: int) -> list[int]:
    """The first ``n`` offsets where ``sig`` starts (overlaps included), in order."""
    hits: list[int] = []
    i = b.find(sig)
    while i >= 0 and len(hits) < n:
        hits.append(i)
        i = b.find(sig, i + 1)
    return hits


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not b:
            break
        op = rng.randrange(9)
        if op == 0:                                   # flip a byte anywhere
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:                                 # flip a byte near the end records
            i = len(b) - 1 - rng.randrange(min(len(b), 120))
            b[i] ^= 1 << rng.randrange(8)
        elif op in (2, 3):                            # an interesting value at a header
            sig = rng.choice([b"PK\x01\x02", b"PK\x03\x04", b"PK\x05\x06", b"PK\x06\x06",
                              b"PK\x06\x07", b"PK\x07\x08"])
            hits = _first_hits(b, sig, 64)
            if hits:
                at = rng.choice(hits) + rng.randrange(4, 46)
                width = rng.choice([1, 2, 4])
                v = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
                if at + width <= len(b):
                    b[at:at + width] = v.to_bytes(width, "little")
        elif op == 4:                                 # truncate
            del b[rng.randrange(len(b)):]
        elif op == 5:                                 # insert bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif op == 6:                                 # delete bytes
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 8)]
        elif op == 7:                                 # prepend / append
            extra = rng.choice([b"\0", b"PK\x03\x04", b"junk", b"PK\x05\x06" + b"\0" * 18])
            b = bytearray(extra) + b if rng.random() < 0.5 else b + bytearray(extra)
        else:                                         # copy a run of bytes elsewhere
            i, j = rng.randrange(len(b)), rng.randrange(len(b))
            n = rng.randint(4, 64)
            chunk = b[i:i + n]
            b[j:j + len(chunk)] = chunk
    return bytes(b)


def archive(rng: random.Random) -> tuple[str, bytes]:
    """(kind, bytes): a plain archive about a third of the time, else a variant/mutant."""
    r = rng.random()
    if r < 0.45:
        members, opts = raw_members(rng, odd=rng.choice([0.0, 0.0, 0.1, 0.3]))
        data = write(members, **opts)  # type: ignore[arg-type]
        kind = "raw"
    elif r < 0.7:
        data, kind = zipfile_archive(rng), "zipfile"
    else:
        pool = torch_pool()
        if not pool:
            data, kind = zipfile_archive(rng), "zipfile"
        else:
            data, kind = rng.choice(pool), "torch"
    if rng.random() < 0.55:
        data, kind = mutate(rng, data), kind + "+mut"
    return kind, data


def read_outcome(data: bytes, limits: object, *,
                 fd: bool = False) -> tuple[tuple[object, ...], bool]:
    """What ``read_archive`` makes of ``data`` on the path CKPTGUARD_PURE selects now: the
    archive (or the limit hit), findings, recorded regions and bytes read, and whether the
    C prover accepted it. The differential tests and the ASan fuzz target compare this.

    ``fd``: read it as a local file (an anonymous memfd through ``Source``'s descriptor:
    the prover's ``prove_fd`` path, pread in C) instead of from memory (its callback
    into ``Source.read``)."""
    from ckptguard.analysis.zipdefects import record_defects
    from ckptguard.context import AuditContext, LimitExceeded, Source
    from ckptguard.policy import Policy
    from ckptguard.readers import zipfast
    from ckptguard.readers.zipfile import read_archive

    handle = -1
    if fd:
        handle = os.memfd_create("ckg-zip")
        os.write(handle, data)
        src = Source(handle, len(data))
    else:
        src = Source.from_bytes(data)
    try:
        ctx = AuditContext("x.pt", src, Policy(), limits)  # type: ignore[arg-type]
        got: object
        try:
            a = read_archive(ctx, record_defects(ctx))
            got = None if a is None else (a.entries, a.cd_offset, a.comment, a.python_canonical)
            proven = a is not None and zipfast.facts(a) is not None
        except LimitExceeded as e:
            got, proven = ("limit", e.limit), False
        return (got, ctx.findings, ctx.source.regions(), ctx.source.bytes_read), proven
    finally:
        if handle >= 0:
            os.close(handle)
