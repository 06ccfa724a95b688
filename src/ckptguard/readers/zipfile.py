"""A strict zip reader: EOCD, Zip64, central directory and local headers parsed by hand.

Anything two zip readers could disagree on is a finding (CKG3xx): Python's ``zipfile``
trusts the central directory and tolerates prefixes, miniz (torch) scans the EOCD from the
end and looks names up case-insensitively, streaming readers trust local headers. The
reader never follows member names onto the file system and reads only the directory,
the local headers (coalesced into few reads) and the members the caller asks for.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

from ..context import AuditContext, LimitExceeded
from ..primitives import clip

_EOCD_SIG = b"PK\x05\x06"
_Z64_LOC_SIG = b"PK\x06\x07"
_Z64_EOCD_SIG = b"PK\x06\x06"
_CEN_SIG = b"PK\x01\x02"
_LOC_SIG = b"PK\x03\x04"
_DD_SIG = b"PK\x07\x08"
_EOCD = struct.Struct("<4sHHHHIIH")            # 22 bytes
_Z64_LOC = struct.Struct("<4sIQI")              # 20 bytes
_Z64_EOCD = struct.Struct("<4sQHHIIQQQQ")       # 56 bytes
_CEN = struct.Struct("<4sHHHHHHIIIHHHHHII")     # 46 bytes
_LOC = struct.Struct("<4sHHHHHIIIHH")           # 30 bytes
_MAX_COMMENT = 0xFFFF

#: General-purpose flag bits we accept: 1-2 (deflate options), 3 (data descriptor),
#: 11 (UTF-8 names). Bit 0/6 are encryption; everything else is unknown to us.
_OK_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800
STORED, DEFLATED = 0, 8
#: miniz's MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE: torch's getAllRecords copies names into a buffer
#: of this size (NUL included), so longer names are cut.
TORCH_NAME_BUFFER = 512


@dataclass(slots=True)
class ZipEntry:
    index: int
    name: str
    raw_name: bytes
    header_offset: int
    data_offset: int
    compressed_size: int
    size: int
    method: int
    flags: int
    crc32: int
    end: int  # first byte after data (and data descriptor)
    #: the first stored bytes when the local-header pass read them anyway (magic sniffing
    #: without another read)
    stored_head: bytes | None = None


class ZipArchive:
    """The parsed directory of a zip file. ``read`` returns a member's bytes within limits."""

    def __init__(self, ctx: AuditContext, entries: list[ZipEntry], cd_offset: int,
                 comment: bytes) -> None:
        self.ctx = ctx
        self.entries = entries
        self.cd_offset = cd_offset
        self.comment = comment
        self._decompressed = 0
        #: True when CPython's zipfile provably reads the same directory (see
        #: ``python_canonical``); otherwise ``compare_python_zipfile`` runs zipfile itself.
        self.python_canonical = False

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def read(self, entry: ZipEntry, *, record: bool = True, check_crc: bool = True,
             max_bytes: int | None = None) -> bytes:
        """Return the member's uncompressed bytes (CRC checked; CKG303 on mismatch)."""
        ctx = self.ctx
        limit = ctx.limits.max_pickle_bytes if max_bytes is None else max_bytes
        if entry.size > limit:
            raise LimitExceeded("max_pickle_bytes", limit, f"member {entry.name} is "
                                f"{entry.size} bytes")
        raw = ctx.source.read(entry.data_offset, entry.compressed_size, record=record)
        if len(raw) != entry.compressed_size:
            ctx.add("CKG310", f"member {entry.name} is cut off by the end of the file",
                    member=entry.name, offset=entry.data_offset)
            return raw
        if entry.method == STORED:
            data = raw
        elif entry.method == DEFLATED:
            data = self._inflate(entry, raw)
        else:
            return b""
        if check_crc and (zlib.crc32(data) & 0xFFFFFFFF) != entry.crc32:
            ctx.add("CKG303", f"member {entry.name}: CRC-32 mismatch (central directory says "
                    f"{entry.crc32:08x})", member=entry.name, offset=entry.data_offset)
        if len(data) != entry.size:
            ctx.add("CKG302", f"member {entry.name}: {len(data)} bytes after decompression, "
                    f"central directory says {entry.size}", member=entry.name,
                    offset=entry.data_offset)
        return data

    def head(self, entry: ZipEntry, n: int = 4096) -> bytes:
        """The first ``n`` uncompressed bytes of a member, inflating no more than that."""
        if entry.method == STORED and entry.stored_head is not None and \
                n <= len(entry.stored_head):
            return entry.stored_head[:n]
        if entry.method == STORED:
            return self.ctx.source.read(entry.data_offset, min(n, entry.compressed_size))
        raw = self.ctx.source.read(entry.data_offset, min(entry.compressed_size, 1 << 16))
        try:
            return zlib.decompressobj(-15).decompress(raw, n)
        except zlib.error:
            return b""

    def verify(self, entry: ZipEntry) -> None:
        """Check a member's CRC and size like ``read`` without keeping its bytes: read and
        inflated in 1 MiB steps, so memory stays flat whatever the member's size. A bomb is
        bounded by the compression ratio and the clock (it holds no memory, so it is not
        charged to ``max_decompressed_bytes``)."""
        ctx, lim = self.ctx, self.ctx.limits
        if entry.method == STORED:
            self._verify_stored(entry)
            return
        if entry.method != DEFLATED:
            self.read(entry, record=False)
            return
        cap = min(max(entry.size, 0) + 1, entry.compressed_size * lim.max_compression_ratio
                  + 4096)
        d = zlib.decompressobj(-15)
        crc = total = 0
        step = 1 << 20
        pos, end = entry.data_offset, entry.data_offset + entry.compressed_size
        buf = b""
        try:
            while True:
                if not buf and pos < end:
                    buf = ctx.source.read(pos, min(step, end - pos))
                    if not buf:
                        ctx.add("CKG310", f"member {entry.name} is cut off by the end of the "
                                "file", member=entry.name, offset=entry.data_offset)
                        return
                    pos += len(buf)
                    ctx.source.check_time()
                chunk = d.decompress(buf, min(step, max(1, cap - total)))
                buf = d.unconsumed_tail
                crc = zlib.crc32(chunk, crc)
                total += len(chunk)
                if not chunk and not buf and (pos >= end or d.eof):
                    break
                if total >= cap:
                    if total > entry.size:
                        ctx.add("CKG302", f"member {entry.name} inflates past its declared "
                                f"size {entry.size}", member=entry.name,
                                offset=entry.data_offset)
                        return
                    raise LimitExceeded("max_compression_ratio", lim.max_compression_ratio,
                                        f"member {entry.name}")
        except zlib.error as e:
            ctx.add("CKG310", f"member {entry.name}: invalid deflate stream ({e})",
                    member=entry.name, offset=entry.data_offset)
            return
        if (crc & 0xFFFFFFFF) != entry.crc32:
            ctx.add("CKG303", f"member {entry.name}: CRC-32 mismatch (central directory says "
                    f"{entry.crc32:08x})", member=entry.name, offset=entry.data_offset)
        if total != entry.size:
            ctx.add("CKG302", f"member {entry.name}: {total} bytes after decompression, "
                    f"central directory says {entry.size}", member=entry.name,
                    offset=entry.data_offset)

    def _verify_stored(self, entry: ZipEntry) -> None:
        """CRC of a stored member, read in 1 MiB steps (CPython's zipfile checks it on every
        full read, so numpy refuses a member whose CRC is wrong)."""
        ctx = self.ctx
        crc = 0
        pos, end = entry.data_offset, entry.data_offset + entry.compressed_size
        while pos < end:
            chunk = ctx.source.read(pos, min(1 << 20, end - pos))
            if not chunk:
                ctx.add("CKG310", f"member {entry.name} is cut off by the end of the file",
                        member=entry.name, offset=entry.data_offset)
                return
            crc = zlib.crc32(chunk, crc)
            pos += len(chunk)
            ctx.source.check_time()
        if (crc & 0xFFFFFFFF) != entry.crc32:
            ctx.add("CKG303", f"member {entry.name}: CRC-32 mismatch (central directory says "
                    f"{entry.crc32:08x})", member=entry.name, offset=entry.data_offset)

    def _inflate(self, entry: ZipEntry, raw: bytes) -> bytes:
        lim = self.ctx.limits
        budget = lim.max_decompressed_bytes - self._decompressed
        cap = min(budget, max(entry.size, 0) + 1, entry.compressed_size * lim.max_compression_ratio
                  + 4096)
        d = zlib.decompressobj(-15)
        try:
            data = d.decompress(raw, cap)
        except zlib.error as e:
            self.ctx.add("CKG310", f"member {entry.name}: invalid deflate stream ({e})",
                         member=entry.name, offset=entry.data_offset)
            return b""
        self._decompressed += len(data)
        if d.unconsumed_tail:
            if len(data) >= budget:
                raise LimitExceeded("max_decompressed_bytes", lim.max_decompressed_bytes,
                                    f"member {entry.name}")
            if len(data) > entry.size:
                self.ctx.add("CKG302", f"member {entry.name} inflates past its declared size "
                             f"{entry.size}", member=entry.name, offset=entry.data_offset)
            else:
                raise LimitExceeded("max_compression_ratio", lim.max_compression_ratio,
                                    f"member {entry.name}")
        return data


def read_archive(ctx: AuditContext) -> ZipArchive | None:
    """Parse and cross-check the archive. Findings go to ``ctx``; None if unusable."""
    from .zipfast import prove_canonical  # the C prover: no finding at all, or declines

    proven = prove_canonical(ctx, ZipArchive, ZipEntry)
    if proven is not None:
        return proven
    src = ctx.source
    size = src.size
    # Fast path: an EOCD with no comment ends the file, where every reader looks first
    # (Python's zipfile) or finds it first scanning backwards (miniz). Only otherwise is the
    # whole comment-sized tail searched.
    short = min(size, _EOCD.size + _Z64_LOC.size + _Z64_EOCD.size)
    tail = src.read(size - short, short, record=True)
    if not (len(tail) >= _EOCD.size and tail[-_EOCD.size:-_EOCD.size + 4] == _EOCD_SIG
            and tail[-2:] == b"\x00\x00"):
        tail = src.read(size - min(size, _EOCD.size + _MAX_COMMENT + _Z64_LOC.size +
                                   _Z64_EOCD.size),
                        min(size, _EOCD.size + _MAX_COMMENT + _Z64_LOC.size + _Z64_EOCD.size),
                        record=True)
    tail_len = len(tail)
    tail_start = size - tail_len

    # --- EOCD: exactly one, ending exactly at the end of the file -------------------------
    candidates = []
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if len(tail) - pos >= _EOCD.size:
            candidates.append(pos)
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    eocd_pos = None
    for c in candidates:
        (_sig, _disk, _cd_disk, _n_disk, _n, _cd_size, _cd_off, clen) = _EOCD.unpack_from(tail, c)
        if c + _EOCD.size + clen == len(tail):
            eocd_pos = c
            break
    if eocd_pos is None:
        if candidates:
            c = candidates[0]
            clen = _EOCD.unpack_from(tail, c)[7]
            extra = len(tail) - (c + _EOCD.size + clen)
            if extra > 0:
                ctx.add("CKG004", f"{extra} bytes follow the end-of-central-directory record",
                        offset=tail_start + c + _EOCD.size + clen)
                eocd_pos = c
        if eocd_pos is None:
            ctx.add("CKG310", "no end-of-central-directory record: not a complete zip archive")
            return None
    real_candidates = [c for c in candidates if c != eocd_pos]
    if real_candidates:
        ctx.add("CKG307", f"{len(candidates)} end-of-central-directory signatures; readers "
                "that scan from the end may pick another one",
                offset=tail_start + real_candidates[0])
    (_sig, disk, cd_disk, n_disk, n_total, cd_size, cd_off, clen) = _EOCD.unpack_from(
        tail, eocd_pos)
    eocd_abs = tail_start + eocd_pos
    comment = tail[eocd_pos + _EOCD.size : eocd_pos + _EOCD.size + clen]
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        ctx.add("CKG310", "multi-disk (split) archive", offset=eocd_abs)
        return None

    # --- Zip64 ------------------------------------------------------------------------------
    cd_end_limit = eocd_abs
    z64_plain = True
    loc_pos = eocd_pos - _Z64_LOC.size
    if loc_pos >= 0 and tail[loc_pos : loc_pos + 4] == _Z64_LOC_SIG:
        _s, z_disk, z_off, z_ndisks = _Z64_LOC.unpack_from(tail, loc_pos)
        if z_disk != 0 or z_ndisks > 1:
            ctx.add("CKG310", "multi-disk (split) Zip64 archive", offset=tail_start + loc_pos)
            return None
        cd_end_limit = tail_start + loc_pos
        if z_off + _Z64_EOCD.size > cd_end_limit:
            ctx.add("CKG310", "Zip64 locator points past its own position",
                    offset=tail_start + loc_pos)
            return None
        z = src.read(z_off, _Z64_EOCD.size, record=True)
        if len(z) < _Z64_EOCD.size or z[:4] != _Z64_EOCD_SIG:
            ctx.add("CKG310", "Zip64 end-of-central-directory record missing",
                    offset=z_off)
            return None
        (_s, rec_size, _vm, _vn, zdisk, zcd_disk, zn_disk, zn_total, zcd_size,
         zcd_off) = _Z64_EOCD.unpack_from(z, 0)
        if zdisk != 0 or zcd_disk != 0 or zn_disk != zn_total:
            ctx.add("CKG310", "multi-disk (split) Zip64 archive", offset=z_off)
            return None
        z64_plain = rec_size == _Z64_EOCD.size - 12
        if rec_size != _Z64_EOCD.size - 12:
            # Python's zipfile assumes no extensible data and reads the 56 bytes just before
            # the locator, miniz follows the locator: extensible data lets the two readers
            # see different directories. No reader needs it (torch writes none).
            ctx.add("CKG314", f"Zip64 end record carries {rec_size - (_Z64_EOCD.size - 12)} "
                    "bytes of extensible data (Python's zipfile and miniz read different end "
                    "records)", offset=z_off, evidence={"record_size": str(rec_size)})
        if z_off + 12 + rec_size != cd_end_limit:
            ctx.add("CKG306", "bytes between the Zip64 record and its locator belong to "
                    "nothing", offset=z_off)
        cd_end_limit = z_off
        for small, big, what in ((n_total, zn_total, "entry count"), (cd_size, zcd_size,
                                 "directory size"), (cd_off, zcd_off, "directory offset")):
            sentinel = 0xFFFF if what == "entry count" else 0xFFFFFFFF
            if small not in (sentinel, big):
                ctx.add("CKG310", f"EOCD and Zip64 EOCD disagree on the {what} "
                        f"({small} vs {big})", offset=eocd_abs)
        n_total, cd_size, cd_off = zn_total, zcd_size, zcd_off

    if n_total > ctx.limits.max_members:
        raise LimitExceeded("max_members", ctx.limits.max_members, f"{n_total} members")
    if cd_size > ctx.limits.max_central_directory_bytes:
        raise LimitExceeded("max_central_directory_bytes",
                            ctx.limits.max_central_directory_bytes)
    if cd_off + cd_size > cd_end_limit:
        ctx.add("CKG310", "central directory extends past its end record", offset=cd_off)
        return None
    if cd_off + cd_size < cd_end_limit:
        ctx.add("CKG004", f"{cd_end_limit - cd_off - cd_size} bytes between the central "
                "directory and its end record", offset=cd_off + cd_size)
    cd = src.read(cd_off, cd_size, record=True)
    entries_canonical = [True]
    entries = _parse_central(ctx, cd, cd_off, n_total, entries_canonical)
    if entries is None:
        return None
    archive = ZipArchive(ctx, entries, cd_off, comment)
    # zipfile's fast path takes the last 22 bytes when they are an EOCD without a comment;
    # it reads the 56 bytes before a Zip64 locator (the same record only without
    # extensible data) and shifts offsets by "concat" unless the directory ends right where
    # the end records begin.
    archive.python_canonical = (eocd_pos + _EOCD.size == tail_len and clen == 0
                                and z64_plain and cd_off + cd_size == cd_end_limit
                                and entries_canonical[0])
    _check_names(ctx, entries)
    _check_locals(ctx, entries, cd_off)
    return archive


def _parse_central(ctx: AuditContext, cd: bytes, cd_off: int, n_total: int,
                   canonical: list[bool]) -> list[ZipEntry] | None:
    """Parse ``n_total`` central-directory entries. ``canonical[0]`` is cleared when
    CPython's zipfile could read an entry differently (its name decoding and NUL cut, its
    extra-field and Zip64 decoding, its version check, its size-driven loop)."""
    entries: list[ZipEntry] = []
    pos = 0
    unpack = _CEN.unpack_from
    for i in range(n_total):
        if pos + _CEN.size > len(cd) or cd[pos : pos + 4] != _CEN_SIG:
            ctx.add("CKG310", f"central directory entry {i} is missing or corrupt",
                    offset=cd_off + pos)
            return None
        (_sig, _vm, vn, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen,
         disk, _ia, _ea, hoff) = unpack(cd, pos)
        name_b = cd[pos + 46 : pos + 46 + nlen]
        extra = cd[pos + 46 + nlen : pos + 46 + nlen + xlen]
        end = pos + 46 + nlen + xlen + clen
        if end > len(cd):
            ctx.add("CKG310", f"central directory entry {i} runs past the directory",
                    offset=cd_off + pos)
            return None
        if canonical[0] and not _python_same_entry(name_b, flags, vn, extra):
            canonical[0] = False
        if 0xFFFFFFFF in (csize, usize, hoff):
            z = _zip64_extra(extra, usize == 0xFFFFFFFF, csize == 0xFFFFFFFF,
                             hoff == 0xFFFFFFFF)
            if z is None:
                ctx.add("CKG310", f"entry {i}: Zip64 sizes announced but no valid Zip64 "
                        "extra field", offset=cd_off + pos)
                return None
            usize, csize, hoff = (z[0] if z[0] is not None else usize,
                                  z[1] if z[1] is not None else csize,
                                  z[2] if z[2] is not None else hoff)
        if flags & 0x0800:
            try:
                name = name_b.decode("utf-8")
            except UnicodeDecodeError:
                ctx.add("CKG302", f"entry {i}: name flagged UTF-8 is not valid UTF-8",
                        offset=cd_off + pos)
                name = name_b.decode("utf-8", "surrogateescape")
        else:
            # Python's zipfile decodes such names as cp437 while miniz keeps raw bytes: any
            # non-ASCII byte makes the name mean different things to different readers.
            if any(b >= 0x80 for b in name_b):
                ctx.add("CKG302", f"entry {i}: non-ASCII name without the UTF-8 flag "
                        "(cp437 vs raw bytes)", offset=cd_off + pos)
            name = name_b.decode("utf-8", "surrogateescape")
        if disk != 0:
            ctx.add("CKG310", f"entry {name}: starts on another disk", member=name)
        if (method == STORED and csize != usize) or (usize and not csize):
            # miniz refuses the whole archive (mz_zip_reader_read_central_dir)
            ctx.add("CKG316", f"entry {i} ({name!r}): compressed size {csize} and size "
                    f"{usize} cannot both be right for method {method}; torch's reader "
                    "refuses the archive", member=name, offset=cd_off + pos)
        # data_offset/end are provisional until the local header is read (_check_locals)
        entries.append(ZipEntry(i, name, name_b, hoff, hoff + _LOC.size + len(name_b), csize,
                                usize, method, flags, crc, hoff))
        pos = end
    if pos != len(cd):
        canonical[0] = False  # zipfile reads entries until the directory size is used up
        ctx.add("CKG306", f"{len(cd) - pos} bytes in the central directory belong to no entry",
                offset=cd_off + pos)
    for e in entries:
        if e.flags & 0x0041:
            ctx.add("CKG304", f"member {e.name} is encrypted", member=e.name,
                    offset=e.header_offset)
        elif e.flags & ~_OK_FLAGS & 0xFFFF:
            ctx.add("CKG304", f"member {e.name} uses unsupported flag bits "
                    f"0x{e.flags & ~_OK_FLAGS & 0xFFFF:04x}", member=e.name,
                    offset=e.header_offset)
        if e.method not in (STORED, DEFLATED):
            ctx.add("CKG305", f"member {e.name} uses compression method {e.method}",
                    member=e.name, offset=e.header_offset, evidence={"method": str(e.method)})
    return entries


def _python_same_entry(name: bytes, flags: int, version_needed: int, extra: bytes) -> bool:
    """Does CPython's zipfile read this entry exactly as the strict reader does? Plain
    ASCII (or UTF-8-flagged) names without NUL, version needed <= 63, and extra fields that
    are well formed with at most one Zip64 field."""
    if b"\0" in name or version_needed > 63 or (not flags & 0x0800 and not name.isascii()):
        return False
    pos = zip64 = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + hlen > len(extra):
            return False
        zip64 += hid == 0x0001
        pos += 4 + hlen
    return pos == len(extra) and zip64 <= 1


def _zip64_extra(extra: bytes, need_u: bool, need_c: bool,
                 need_o: bool) -> tuple[int | None, int | None, int | None] | None:
    pos = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + hlen]
        if hid == 0x0001:
            vals: list[int | None] = []
            p = 0
            for need in (need_u, need_c, need_o):
                if need:
                    if p + 8 > len(body):
                        return None
                    vals.append(struct.unpack_from("<Q", body, p)[0])
                    p += 8
                else:
                    vals.append(None)
            return vals[0], vals[1], vals[2]
        pos += 4 + hlen
    return None


def _check_names(ctx: AuditContext, entries: list[ZipEntry]) -> None:
    seen: dict[bytes, ZipEntry] = {}
    folded: dict[str, ZipEntry] = {}
    for e in entries:
        if e.raw_name in seen:
            ctx.add("CKG301", f"duplicate member name {e.name!r} (entries {seen[e.raw_name].index} "
                    f"and {e.index})", member=e.name, offset=e.header_offset)
        else:
            seen[e.raw_name] = e
            key = e.name.casefold()
            other = folded.get(key)
            if other is not None:
                ctx.add("CKG301", f"member names {other.name!r} and {e.name!r} differ only in "
                        "case (torch's reader looks names up case-insensitively)",
                        member=e.name, offset=e.header_offset)
            else:
                folded[key] = e
        if len(e.raw_name) >= TORCH_NAME_BUFFER:
            ctx.add("CKG315", f"member name of {len(e.raw_name)} bytes: torch's reader keeps "
                    f"only the first {TORCH_NAME_BUFFER - 1} (its name buffer), so it sees "
                    "another name than every other reader", member=clip(e.name, 80),
                    offset=e.header_offset)
        n = e.name
        if not n or (_SUSPECT_NAME.search(n) and _unsafe_name(n)):
            ctx.add("CKG308", f"unsafe member name {n!r}", member=n, offset=e.header_offset)


_SUSPECT_NAME = re.compile(r"[\x00-\x1f\x7f\\:]|^/|\.\.")


def _unsafe_name(n: str) -> bool:
    parts = n.split("/")
    return (n.startswith("/") or "\\" in n or ".." in parts or ":" in parts[0]
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in n))


def _check_locals(ctx: AuditContext, entries: list[ZipEntry], cd_off: int) -> None:
    """Read every local header (coalescing nearby ones into single reads), compare it with
    the central directory, locate data and data descriptors, and check for overlaps, gaps
    and a prefix."""
    src = ctx.source
    order = sorted(range(len(entries)), key=lambda i: entries[i].header_offset)
    # Coalesce reads: a window covers consecutive headers whose data is small.
    window_gap = 1 << 12  # merge only nearby headers: tensor bytes are not read for nothing
    windows: list[tuple[int, int, list[int]]] = []
    for i in order:
        e = entries[i]
        start = e.header_offset
        # name + typical extra; for small members also their data and data descriptor, so
        # checking descriptors costs no extra read (50k tiny tensors: 1 read, not 50k)
        need_end = start + _LOC.size + len(e.raw_name) + 256  # torch pads with <= 68 B
        if e.compressed_size <= 4096:
            need_end += e.compressed_size + 24
        if windows and start - windows[-1][1] <= window_gap and \
                need_end - windows[-1][0] <= (1 << 20):
            last = windows[-1]
            last[2].append(i)
            windows[-1] = (last[0], max(last[1], need_end), last[2])
        else:
            windows.append((start, need_end, [i]))
    prev_end = 0
    prev_name = None
    for ws, window_end, idx in windows:
        we = min(window_end, cd_off)
        buf = src.read(ws, max(0, we - ws), record=True) if we > ws else b""
        for i in idx:
            e = entries[i]
            rel = e.header_offset - ws
            hdr = buf[rel : rel + _LOC.size]
            if len(hdr) < _LOC.size or hdr[:4] != _LOC_SIG:
                if e.header_offset + _LOC.size > cd_off:
                    ctx.add("CKG306", f"member {e.name}: local header lies outside the member "
                            "area", member=e.name, offset=e.header_offset)
                else:
                    ctx.add("CKG302", f"member {e.name}: no local header at offset "
                            f"{e.header_offset}", member=e.name, offset=e.header_offset)
                continue
            (_s, _v, lflags, lmethod, _t, _d, lcrc, lcsize, lusize, lnlen,
             lxlen) = _LOC.unpack_from(hdr)
            name_end = rel + _LOC.size + lnlen
            if name_end > len(buf):
                buf_ext = src.read(e.header_offset, _LOC.size + lnlen + lxlen, record=True)
                lname = buf_ext[_LOC.size : _LOC.size + lnlen]
                lextra = buf_ext[_LOC.size + lnlen : _LOC.size + lnlen + lxlen]
            else:
                lname = buf[rel + _LOC.size : name_end]
                lextra = buf[name_end : name_end + lxlen]
                if len(lextra) < lxlen:
                    lextra = src.read(e.header_offset + _LOC.size + lnlen, lxlen, record=True)
            data_off = e.header_offset + _LOC.size + lnlen + lxlen
            if lname != e.raw_name:
                ctx.add("CKG302", f"local header names {lname!r}, central directory "
                        f"{e.raw_name!r}", member=e.name, offset=e.header_offset)
            if lmethod != e.method:
                ctx.add("CKG302", f"member {e.name}: compression method {lmethod} locally, "
                        f"{e.method} centrally", member=e.name, offset=e.header_offset)
            if (lflags ^ e.flags) & ~0x0006 & 0xFFFF:
                ctx.add("CKG302", f"member {e.name}: flags 0x{lflags:04x} locally, "
                        f"0x{e.flags:04x} centrally", member=e.name, offset=e.header_offset)
            end = data_off + e.compressed_size
            if lflags & 0x0008:
                # Sizes live in the data descriptor that follows the data.
                if (lcrc, lcsize, lusize) != (0, 0, 0) and not (
                        lcrc == e.crc32 and lcsize in (e.compressed_size, 0xFFFFFFFF)):
                    ctx.add("CKG302", f"member {e.name}: local header sizes/CRC disagree with "
                            "the central directory", member=e.name, offset=e.header_offset)
                # miniz (torch) writes a 64-bit descriptor exactly when the header offset
                # or the size needs 64 bits (torch.serialization._load mirrors this rule)
                z64 = e.compressed_size >= 0xFFFFFFFF or e.size >= 0xFFFFFFFF or \
                    e.header_offset >= 0xFFFFFFFF
                dd_rel = end - ws
                dd = buf[dd_rel : dd_rel + 24] if dd_rel >= 0 and dd_rel + 24 <= len(buf) else None
                end = _check_descriptor(ctx, e, end, z64, dd)
            else:
                lz = (lcsize, lusize)
                if 0xFFFFFFFF in lz:
                    z = _zip64_extra(lextra, lusize == 0xFFFFFFFF, lcsize == 0xFFFFFFFF, False)
                    if z is not None:
                        lusize = z[0] if z[0] is not None else lusize
                        lcsize = z[1] if z[1] is not None else lcsize
                if (lcrc, lcsize, lusize) != (e.crc32, e.compressed_size, e.size):
                    ctx.add("CKG302", f"member {e.name}: local header CRC/sizes "
                            f"({lcrc:08x}, {lcsize}, {lusize}) disagree with the central "
                            f"directory ({e.crc32:08x}, {e.compressed_size}, {e.size})",
                            member=e.name, offset=e.header_offset)
            if end > cd_off:
                ctx.add("CKG306", f"member {e.name} extends into the central directory",
                        member=e.name, offset=e.header_offset)
            if e.header_offset < prev_end:
                ctx.add("CKG306", f"member {e.name} overlaps member {prev_name}", member=e.name,
                        offset=e.header_offset)
            elif e.header_offset > prev_end:
                if prev_end == 0:
                    ctx.add("CKG005", f"{e.header_offset} bytes precede the first zip member",
                            offset=0)
                else:
                    ctx.add("CKG306", f"{e.header_offset - prev_end} bytes before member "
                            f"{e.name} belong to no member", member=e.name, offset=prev_end)
                _look_for_hidden_directory(ctx, prev_end, e.header_offset)
            prev_end = max(prev_end, end)
            prev_name = e.name
            e.data_offset, e.end = data_off, end
            d_rel = data_off - ws
            if d_rel >= 0:
                e.stored_head = buf[d_rel : d_rel + min(16, e.compressed_size)]
    if entries and prev_end < cd_off:
        ctx.add("CKG306", f"{cd_off - prev_end} bytes between the last member and the central "
                "directory belong to no member", offset=prev_end)
        _look_for_hidden_directory(ctx, prev_end, cd_off)
    if not entries and cd_off > 0:
        ctx.add("CKG005", f"{cd_off} bytes precede an empty archive's directory", offset=0)


def _look_for_hidden_directory(ctx: AuditContext, start: int, end: int) -> None:
    """Unaccounted bytes holding another end-of-central-directory record: a reader that
    finds that one (forward scanners, streaming readers) sees a different archive."""
    gap = ctx.source.read(start, min(end - start, 1 << 20))
    i = gap.find(_EOCD_SIG)
    if i >= 0:
        ctx.add("CKG307", "a second end-of-central-directory record hides in bytes that belong "
                "to no member", offset=start + i)


def _check_descriptor(ctx: AuditContext, e: ZipEntry, data_end: int, z64: bool,
                      buffered: bytes | None = None) -> int:
    n = 24 if z64 else 16
    dd = buffered[:n] if buffered is not None else ctx.source.read(data_end, n)
    if dd[:4] != _DD_SIG:
        # The signature is optional in the spec; torch always writes it.
        alt = dd[:12] if not z64 else dd[:20]
        if len(alt) < (12 if not z64 else 20):
            ctx.add("CKG306", f"member {e.name}: data descriptor cut off", member=e.name,
                    offset=data_end)
            return data_end
        body, n = alt, len(alt)
    else:
        body = dd[4:n]
        if len(body) < n - 4:
            ctx.add("CKG306", f"member {e.name}: data descriptor cut off", member=e.name,
                    offset=data_end)
            return data_end
    if z64:
        crc, cs, us = struct.unpack_from("<IQQ", body, 0)
    else:
        crc, cs, us = struct.unpack_from("<III", body, 0)
    if (crc, cs, us) != (e.crc32, e.compressed_size, e.size):
        ctx.add("CKG302", f"member {e.name}: data descriptor ({crc:08x}, {cs}, {us}) disagrees "
                f"with the central directory ({e.crc32:08x}, {e.compressed_size}, {e.size})",
                member=e.name, offset=data_end)
    return data_end + n


# --- CPython's zipfile, as numpy.load (npz) and every Python program reads the archive -----

class _SourceFile(io.RawIOBase):
    """A read-only, seekable file over ``ctx.source`` for CPython's ``zipfile``: every read
    goes through the audit's source (its clock and identity regions), and a read larger than
    the central-directory limit raises ``LimitExceeded`` instead of pulling in the file."""

    def __init__(self, ctx: AuditContext) -> None:
        super().__init__()
        self._ctx = ctx
        self._pos = 0
        # a directory, a 64 KiB end-record search window, a local header
        self._cap = ctx.limits.max_central_directory_bytes + _EOCD.size + _MAX_COMMENT + 1024

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        size = self._ctx.source.size
        pos = offset if whence == 0 else self._pos + offset if whence == 1 else size + offset
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def read(self, n: int | None = -1) -> bytes:
        size = self._ctx.source.size
        want = size - self._pos if n is None or n < 0 else n
        want = max(0, min(want, size - self._pos))
        if want > self._cap:
            raise LimitExceeded("max_central_directory_bytes",
                                self._ctx.limits.max_central_directory_bytes,
                                f"Python's zipfile would read {want} bytes at once")
        data = self._ctx.source.read(self._pos, want, record=True) if want else b""
        self._pos += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass(frozen=True, slots=True)
class _PyMember:
    """One member as CPython's zipfile sees it (name after its decoding and NUL cut)."""

    name: str
    header_offset: int
    data_offset: int | None   # None: ZipFile.open refuses the member
    compressed_size: int
    size: int
    method: int
    flags: int
    crc32: int
    why: str = ""


def python_zipfile_view(ctx: AuditContext,
                        known: dict[int, ZipEntry] | None = None) -> list[_PyMember] | str:
    """The members as CPython's ``zipfile`` reads them (its end-record search, Zip64 handling
    without following the locator, "concat" prefix shift, extra fields, name decoding), each
    with the data offset ``ZipFile.open`` would read from. A string: why zipfile refuses."""
    import zipfile as _pyzip

    f = _SourceFile(ctx)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zf = _pyzip.ZipFile(f)
            infos = zf.infolist()
    except LimitExceeded:
        raise
    except (_pyzip.BadZipFile, NotImplementedError, ValueError, OverflowError, OSError,
            EOFError, struct.error, UnicodeDecodeError, KeyError, IndexError) as e:
        return f"{type(e).__name__}: {e}"
    if len(infos) > ctx.limits.max_members:
        raise LimitExceeded("max_members", ctx.limits.max_members, f"{len(infos)} members")
    out: list[_PyMember] = []
    for zi in infos:
        data_off: int | None = None
        why = ""
        mine = known.get(zi.header_offset) if known is not None else None
        if mine is not None and mine.raw_name == zi.orig_filename.encode(
                "utf-8" if zi.flag_bits & 0x0800 else "cp437", "replace"):
            # the same local header the strict reader parsed (and compared with this
            # name): ZipFile.open computes the same data offset from it
            out.append(_PyMember(zi.filename, zi.header_offset, mine.data_offset,
                                 zi.compress_size, zi.file_size, zi.compress_type,
                                 zi.flag_bits, zi.CRC))
            continue
        ctx.source.check_time()
        hdr = ctx.source.read(zi.header_offset, _LOC.size, record=True) \
            if zi.header_offset >= 0 else b""
        if len(hdr) != _LOC.size or hdr[:4] != _LOC_SIG:
            why = "no local header"
        else:
            nlen, xlen = struct.unpack_from("<HH", hdr, 26)
            fname = ctx.source.read(zi.header_offset + _LOC.size, nlen, record=True)
            try:
                fname_str = fname.decode("utf-8" if zi.flag_bits & 0x0800 else "cp437")
            except UnicodeDecodeError:
                fname_str = None
            if hdr[6] & 0x01 or zi.flag_bits & 0x0041 or fname_str != zi.orig_filename:
                why = "local header name differs or member is encrypted"
            else:
                data_off = zi.header_offset + _LOC.size + nlen + xlen
        out.append(_PyMember(zi.filename, zi.header_offset, data_off, zi.compress_size,
                             zi.file_size, zi.compress_type, zi.flag_bits, zi.CRC, why))
    return out


def compare_python_zipfile(ctx: AuditContext, archive: ZipArchive) -> ZipArchive | None:
    """Read the archive a second time the way CPython's ``zipfile`` does and report every
    disagreement with the miniz-style reading (CKG313). A canonical archive (end records
    and directory laid out so that zipfile's algorithm provably reads the same entries,
    ``ZipArchive.python_canonical``) skips the second reading. Returns the Python reading as an
    archive of the members that differ (for the caller to audit as numpy would read
    them), or None when both readers agree."""
    if archive.python_canonical:
        return None
    view = python_zipfile_view(ctx, {e.header_offset: e for e in archive.entries})
    if isinstance(view, str):
        ctx.add("CKG313", "Python's zipfile (numpy.load, every Python program) cannot open "
                f"the archive that torch's reader opens ({view[:160]})",
                evidence={"python_zipfile": view[:200]})
        return None
    ours = archive.entries
    differing: list[_PyMember] = []
    if len(view) != len(ours):
        ctx.add("CKG313", f"Python's zipfile sees {len(view)} members, torch's reader "
                f"{len(ours)}: the readers find different central directories",
                evidence={"python_members": str(len(view)), "miniz_members": str(len(ours))})
    mine = {(e.name, e.data_offset, e.compressed_size, e.size, e.method, e.crc32)
            for e in ours}
    reported = 0
    for m in view:
        key = (m.name, m.data_offset, m.compressed_size, m.size, m.method, m.crc32)
        if key in mine:
            continue
        differing.append(m)
        if reported < 20:
            reported += 1
            what = (f"offset {m.data_offset}, {m.compressed_size} -> {m.size} bytes, method "
                    f"{m.method}") if m.data_offset is not None else m.why
            ctx.add("CKG313", f"Python's zipfile reads member {m.name!r} differently from "
                    f"torch's reader ({what})", member=m.name,
                    offset=m.header_offset if m.header_offset >= 0 else None)
    if not differing:
        return None
    entries = [ZipEntry(i, m.name, m.name.encode("utf-8", "surrogateescape"), m.header_offset,
                        m.data_offset, m.compressed_size, m.size, m.method, m.flags, m.crc32,
                        m.data_offset + m.compressed_size)
               for i, m in enumerate(differing) if m.data_offset is not None]
    return ZipArchive(ctx, entries, archive.cd_offset, b"") if entries else None


__all__ = ["DEFLATED", "STORED", "TORCH_NAME_BUFFER", "ZipArchive", "ZipEntry",
           "compare_python_zipfile", "python_zipfile_view", "read_archive"]
