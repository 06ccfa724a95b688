"""A strict zip reader: EOCD, Zip64, central directory and local headers parsed by hand.

Anything two zip readers could disagree on is a defect: Python's ``zipfile`` trusts the
central directory and tolerates prefixes, miniz (torch) scans the EOCD from the end and
looks names up case-insensitively, streaming readers trust local headers. The reader only
parses: each defect is a typed ``Defect`` (a ``ZipDefect`` kind and its values) handed to
the caller's sink as it is found; ``analysis/zipdefects.py`` maps each kind to its rule
and builds the finding. The reader never follows
member names onto the file system and reads only the directory, the local headers
(coalesced into few reads) and the members the caller asks for.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from ..context import AuditContext, LimitExceeded
from ..primitives import escape, or_default

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
#: the DOS directory attribute in a central entry's external attributes (bytes 38-41):
#: miniz's mz_zip_reader_is_file_a_directory honours it whatever the made-by OS
DOS_DIRECTORY = 0x10
#: miniz's MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE: torch's getAllRecords copies names into a buffer
#: of this size (NUL included), so longer names are cut.
TORCH_NAME_BUFFER = 512


class HarmlessExtra(IntEnum):
    """The extra-field ids (central directory and local headers) known to leave how every
    reader names, sizes, places and decodes a member alone: what torch.save, CPython's
    zipfile and common zippers write. Allow, don't deny: any other id, in the central
    directory or a local header, is a PYTHON_READS_DIFFERENTLY defect (the Info-ZIP Unicode
    Path field 0x7075 renames a member for CPython >= 3.12's zipfile and Info-ZIP unzip;
    the next field a reader learns could do anything), and the zip prover
    (``_native/zipcore.c``, its ``HARMLESS_EXTRA_IDS``) declines it."""

    #: Zip64 sizes and offset: decoded by the reader itself (``_zip64_extra``)
    ZIP64 = 0x0001
    #: NTFS times (Windows, 7-Zip)
    NTFS_TIMES = 0x000A
    #: torch.save's 'FB' padding that aligns tensor data (PyTorchStreamWriter, local headers)
    TORCH_PADDING = 0x4246
    #: Info-ZIP extended timestamp 'UT'
    EXTENDED_TIMESTAMP = 0x5455
    #: Info-ZIP Unix, first form 'UX' (times, owner)
    INFOZIP_UNIX_OLD = 0x5855
    #: Info-ZIP Unix owner, second form 'Ux'
    INFOZIP_UNIX_OWNER_OLD = 0x7855
    #: Info-ZIP Unix owner 'ux' (zip 3.0)
    INFOZIP_UNIX_OWNER = 0x7875
    #: the JAR marker (java.util.jar, empty)
    JAR_MARKER = 0xCAFE
    #: Android zipalign's alignment padding
    ANDROID_ALIGNMENT = 0xD935


_HARMLESS_EXTRA = frozenset(int(x) for x in HarmlessExtra)
#: how the messages name a few ids that are not harmless
_EXTRA_NAMES = {0x7075: "Info-ZIP Unicode Path", 0x6375: "Info-ZIP Unicode Comment",
                0x000D: "PKWARE Unix", 0x756E: "ASi Unix", 0x0017: "strong encryption",
                0x9901: "WinZip AES", 0x4453: "Windows NT security descriptor"}
_UNICODE_PATH = 0x7075


class ZipDefect(Enum):
    """Every structural defect the reader finds (a closed set). A member's value is its
    slug followed by the names of the values a ``Defect`` of that kind carries, in order."""

    # end records
    NO_EOCD = ("no-eocd",)
    BYTES_AFTER_EOCD = ("bytes-after-eocd", "count")
    SEVERAL_EOCD = ("several-eocd", "count")
    HIDDEN_EOCD = ("hidden-eocd",)
    MULTI_DISK = ("multi-disk",)
    MULTI_DISK_ZIP64 = ("multi-disk-zip64",)
    ZIP64_LOCATOR_PAST_ITSELF = ("zip64-locator-past-itself",)
    ZIP64_EOCD_MISSING = ("zip64-eocd-missing",)
    ZIP64_EXTENSIBLE_DATA = ("zip64-extensible-data", "extra", "record_size")
    ZIP64_GAP = ("zip64-gap",)
    ZIP64_DISAGREES = ("zip64-disagrees", "what", "eocd", "zip64")
    # central directory
    DIRECTORY_PAST_END = ("directory-past-end",)
    BYTES_BEFORE_EOCD = ("bytes-before-eocd", "count")
    DIRECTORY_SLACK = ("directory-slack", "count")
    ENTRY_MISSING = ("entry-missing", "index")
    ENTRY_PAST_DIRECTORY = ("entry-past-directory", "index")
    ZIP64_EXTRA_MISSING = ("zip64-extra-missing", "index")
    NAME_NOT_UTF8 = ("name-not-utf8", "index")
    NAME_NOT_ASCII = ("name-not-ascii", "index")
    ENTRY_ON_OTHER_DISK = ("entry-on-other-disk", "name")
    SIZES_CONTRADICT = ("sizes-contradict", "index", "name", "compressed_size", "size",
                        "method")
    ENCRYPTED = ("encrypted", "name")
    UNSUPPORTED_FLAGS = ("unsupported-flags", "name", "flags")
    UNSUPPORTED_METHOD = ("unsupported-method", "name", "method")
    MINIZ_DIRECTORY = ("miniz-directory", "name", "external_attr", "made_by", "size")
    # names
    DUPLICATE_NAME = ("duplicate-name", "name", "first", "second")
    NAMES_DIFFER_IN_CASE = ("names-differ-in-case", "other", "name")
    NAME_PAST_TORCH_BUFFER = ("name-past-torch-buffer", "length", "kept")
    UNSAFE_NAME = ("unsafe-name", "name")
    # local headers and member layout
    LOCAL_HEADER_OUTSIDE = ("local-header-outside", "name")
    NO_LOCAL_HEADER = ("no-local-header", "name", "header_offset")
    LOCAL_NAME_DIFFERS = ("local-name-differs", "local_name", "central_name")
    LOCAL_METHOD_DIFFERS = ("local-method-differs", "name", "local", "central")
    LOCAL_FLAGS_DIFFER = ("local-flags-differ", "name", "local", "central")
    LOCAL_DESCRIPTOR_FIELDS_DIFFER = ("local-descriptor-fields-differ", "name")
    LOCAL_SIZES_DIFFER = ("local-sizes-differ", "name", "crc32", "compressed_size", "size",
                          "central_crc32", "central_compressed_size", "central_size")
    DESCRIPTOR_CUT_OFF = ("descriptor-cut-off", "name")
    DESCRIPTOR_DIFFERS = ("descriptor-differs", "name", "crc32", "compressed_size", "size",
                          "central_crc32", "central_compressed_size", "central_size")
    MEMBER_INTO_DIRECTORY = ("member-into-directory", "name")
    MEMBERS_OVERLAP = ("members-overlap", "name", "previous")
    PREFIX = ("prefix", "count")
    PREFIX_BEFORE_EMPTY_DIRECTORY = ("prefix-before-empty-directory", "count")
    GAP_BEFORE_MEMBER = ("gap-before-member", "count", "name")
    GAP_BEFORE_DIRECTORY = ("gap-before-directory", "count")
    # member data (read / verify)
    MEMBER_CUT_OFF = ("member-cut-off", "name")
    CRC_MISMATCH = ("crc-mismatch", "name", "crc32")
    SIZE_MISMATCH = ("size-mismatch", "name", "actual", "declared")
    INFLATES_PAST_SIZE = ("inflates-past-size", "name", "declared")
    BAD_DEFLATE = ("bad-deflate", "name", "error")
    # CPython's zipfile reading (compare_python_zipfile)
    PYTHON_CANNOT_OPEN = ("python-cannot-open", "error")
    PYTHON_MEMBER_COUNT = ("python-member-count", "python", "miniz")
    PYTHON_READS_DIFFERENTLY = ("python-reads-differently", "name", "data_offset",
                                "compressed_size", "size", "method", "why")

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the values a ``Defect`` of this kind carries, in order."""
        names: tuple[str, ...] = self.value[1:]
        return names


#: what a defect's values may be: counts, offsets, sizes, CRCs and flags (int), names and
#: decoder messages (str), raw member names (bytes), or an offset a reader refuses (None)
DefectValue = int | str | bytes | None


@dataclass(frozen=True, slots=True)
class Defect:
    """One structural defect: its kind, where it is (member and byte offset), and the
    values its finding is built from (``kind.fields`` names them)."""

    kind: ZipDefect
    values: tuple[DefectValue, ...] = ()
    member: str | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        if len(self.values) != len(self.kind.fields):
            raise TypeError(f"{self.kind.name} carries {self.kind.fields}, got "
                            f"{len(self.values)} values")

    def fields(self) -> dict[str, DefectValue]:
        """The values by name."""
        return dict(zip(self.kind.fields, self.values, strict=True))


#: where the reader hands each defect as it finds it (``analysis/zipdefects.record_defects``
#: turns it into a finding; without a sink the defects are collected and dropped)
DefectSink = Callable[[Defect], None]


class Reporter:
    """``report(kind, *values, member=..., offset=...)``: builds the ``Defect`` and hands it
    to the sink, in the order the reader finds them."""

    __slots__ = ("sink",)

    def __init__(self, sink: DefectSink | None) -> None:
        self.sink: DefectSink = or_default(sink, _drop)

    def __call__(self, kind: ZipDefect, *values: DefectValue, member: str | None = None,
                 offset: int | None = None) -> None:
        self.sink(Defect(kind, values, member, offset))


def _drop(defect: Defect) -> None:
    """The sink of a caller that only wants the directory (``report/explain.py``)."""


D = ZipDefect


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
                 comment: bytes, on_defect: DefectSink | None) -> None:
        self.ctx = ctx
        #: where the defects of ``read`` and ``verify`` go: the sink ``read_archive`` got
        #: (required, so that no archive built elsewhere drops its members' defects)
        self.on_defect = on_defect
        self.report = Reporter(on_defect)
        self.entries = entries
        self.cd_offset = cd_offset
        self.comment = comment
        self._decompressed = 0
        #: ``verify``'s inflations that ran to their end or to the compression-ratio cap, by
        #: (data offset, compressed size, size): (cap reached, crc, inflated size, bytes
        #: read). Central entries sharing one local body (an overlapping zip bomb: 2000
        #: entries) inflate it once, not once each.
        self._inflated: dict[tuple[int, int, int], tuple[bool, int, int, int]] = {}
        #: True when CPython's zipfile provably reads the same directory (see
        #: ``python_canonical``); otherwise ``compare_python_zipfile`` runs zipfile itself.
        self.python_canonical = False

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def read(self, entry: ZipEntry, *, record: bool = True, check_crc: bool = True,
             max_bytes: int | None = None) -> bytes:
        """Return the member's uncompressed bytes (CRC checked: a mismatch is CRC_MISMATCH)."""
        ctx = self.ctx
        limit = or_default(max_bytes, ctx.limits.max_pickle_bytes)
        if entry.size > limit:
            raise LimitExceeded("max_pickle_bytes", limit, f"member {entry.name} is "
                                f"{entry.size} bytes")
        raw = ctx.source.read(entry.data_offset, entry.compressed_size, record=record)
        if len(raw) != entry.compressed_size:
            self.report(D.MEMBER_CUT_OFF, entry.name, member=entry.name,
                        offset=entry.data_offset)
            return raw
        if entry.method == STORED:
            data = raw
        elif entry.method == DEFLATED:
            data = self._inflate(entry, raw)
        else:
            return b""
        if check_crc and (zlib.crc32(data) & 0xFFFFFFFF) != entry.crc32:
            self.report(D.CRC_MISMATCH, entry.name, entry.crc32, member=entry.name,
                        offset=entry.data_offset)
        if len(data) != entry.size:
            self.report(D.SIZE_MISMATCH, entry.name, len(data), entry.size, member=entry.name,
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
            return zlib.decompressobj(-15).decompress(raw, n) if n > 0 else b""
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
        key = (entry.data_offset, entry.compressed_size, entry.size)
        done = self._inflated.get(key)
        if done is not None:   # the same bytes inflated to the same cap: the same outcome
            capped, crc, total, nread = done
            ctx.source.bytes_read += nread
            if capped:
                raise LimitExceeded("max_compression_ratio", lim.max_compression_ratio,
                                    f"member {entry.name}")
            self._check_sums(entry, crc, total)
            return
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
                        self.report(D.MEMBER_CUT_OFF, entry.name, member=entry.name,
                                    offset=entry.data_offset)
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
                        self.report(D.INFLATES_PAST_SIZE, entry.name, entry.size,
                                    member=entry.name, offset=entry.data_offset)
                        return
                    self._inflated[key] = (True, crc, total, pos - entry.data_offset)
                    raise LimitExceeded("max_compression_ratio", lim.max_compression_ratio,
                                        f"member {entry.name}")
        except zlib.error as e:
            self.report(D.BAD_DEFLATE, entry.name, str(e), member=entry.name,
                        offset=entry.data_offset)
            return
        self._inflated[key] = (False, crc, total, pos - entry.data_offset)
        self._check_sums(entry, crc, total)

    def _check_sums(self, entry: ZipEntry, crc: int, total: int) -> None:
        if (crc & 0xFFFFFFFF) != entry.crc32:
            self.report(D.CRC_MISMATCH, entry.name, entry.crc32, member=entry.name,
                        offset=entry.data_offset)
        if total != entry.size:
            self.report(D.SIZE_MISMATCH, entry.name, total, entry.size, member=entry.name,
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
                self.report(D.MEMBER_CUT_OFF, entry.name, member=entry.name,
                            offset=entry.data_offset)
                return
            crc = zlib.crc32(chunk, crc)
            pos += len(chunk)
            ctx.source.check_time()
        if (crc & 0xFFFFFFFF) != entry.crc32:
            self.report(D.CRC_MISMATCH, entry.name, entry.crc32, member=entry.name,
                        offset=entry.data_offset)

    def _inflate(self, entry: ZipEntry, raw: bytes) -> bytes:
        lim = self.ctx.limits
        budget = lim.max_decompressed_bytes - self._decompressed
        cap = min(budget, max(entry.size, 0) + 1, entry.compressed_size * lim.max_compression_ratio
                  + 4096)
        d = zlib.decompressobj(-15)
        try:
            # zlib reads a max_length of 0 as "no limit": a spent budget still caps at 1
            data = d.decompress(raw, max(cap, 1))
        except zlib.error as e:
            self.report(D.BAD_DEFLATE, entry.name, str(e), member=entry.name,
                        offset=entry.data_offset)
            return b""
        self._decompressed += len(data)
        if self._decompressed > lim.max_decompressed_bytes:
            raise LimitExceeded("max_decompressed_bytes", lim.max_decompressed_bytes,
                                f"member {entry.name}")
        if d.unconsumed_tail:
            if len(data) >= budget:
                raise LimitExceeded("max_decompressed_bytes", lim.max_decompressed_bytes,
                                    f"member {entry.name}")
            if len(data) > entry.size:
                self.report(D.INFLATES_PAST_SIZE, entry.name, entry.size, member=entry.name,
                            offset=entry.data_offset)
            else:
                raise LimitExceeded("max_compression_ratio", lim.max_compression_ratio,
                                    f"member {entry.name}")
        return data


def read_archive(ctx: AuditContext, on_defect: DefectSink | None = None) -> ZipArchive | None:
    """Parse and cross-check the archive. Each defect goes to ``on_defect`` as it is found
    (``analysis/zipdefects.record_defects(ctx)`` makes them findings); None if unusable."""
    from .zipfast import prove_canonical  # the C prover: no defect at all, or it declines

    proven = prove_canonical(ctx, ZipArchive, ZipEntry, on_defect, HarmlessExtra)
    if proven is not None:
        return proven
    report = Reporter(on_defect)
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
                report(D.BYTES_AFTER_EOCD, extra, offset=tail_start + c + _EOCD.size + clen)
                eocd_pos = c
        if eocd_pos is None:
            report(D.NO_EOCD)
            return None
    real_candidates = [c for c in candidates if c != eocd_pos]
    if real_candidates:
        report(D.SEVERAL_EOCD, len(candidates), offset=tail_start + real_candidates[0])
    (_sig, disk, cd_disk, n_disk, n_total, cd_size, cd_off, clen) = _EOCD.unpack_from(
        tail, eocd_pos)
    eocd_abs = tail_start + eocd_pos
    comment = tail[eocd_pos + _EOCD.size : eocd_pos + _EOCD.size + clen]
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        report(D.MULTI_DISK, offset=eocd_abs)
        return None

    # --- Zip64 ------------------------------------------------------------------------------
    cd_end_limit = eocd_abs
    z64_plain = True
    loc_pos = eocd_pos - _Z64_LOC.size
    if loc_pos >= 0 and tail[loc_pos : loc_pos + 4] == _Z64_LOC_SIG:
        _s, z_disk, z_off, z_ndisks = _Z64_LOC.unpack_from(tail, loc_pos)
        if z_disk != 0 or z_ndisks > 1:
            report(D.MULTI_DISK_ZIP64, offset=tail_start + loc_pos)
            return None
        cd_end_limit = tail_start + loc_pos
        if z_off + _Z64_EOCD.size > cd_end_limit:
            report(D.ZIP64_LOCATOR_PAST_ITSELF, offset=tail_start + loc_pos)
            return None
        z = src.read(z_off, _Z64_EOCD.size, record=True)
        if len(z) < _Z64_EOCD.size or z[:4] != _Z64_EOCD_SIG:
            report(D.ZIP64_EOCD_MISSING, offset=z_off)
            return None
        (_s, rec_size, _vm, _vn, zdisk, zcd_disk, zn_disk, zn_total, zcd_size,
         zcd_off) = _Z64_EOCD.unpack_from(z, 0)
        if zdisk != 0 or zcd_disk != 0 or zn_disk != zn_total:
            report(D.MULTI_DISK_ZIP64, offset=z_off)
            return None
        z64_plain = rec_size == _Z64_EOCD.size - 12
        if rec_size != _Z64_EOCD.size - 12:
            # Python's zipfile assumes no extensible data and reads the 56 bytes just before
            # the locator, miniz follows the locator: extensible data lets the two readers
            # see different directories. No reader needs it (torch writes none).
            report(D.ZIP64_EXTENSIBLE_DATA, rec_size - (_Z64_EOCD.size - 12), rec_size,
                   offset=z_off)
        if z_off + 12 + rec_size != cd_end_limit:
            report(D.ZIP64_GAP, offset=z_off)
        cd_end_limit = z_off
        for small, big, what in ((n_total, zn_total, "entry count"), (cd_size, zcd_size,
                                 "directory size"), (cd_off, zcd_off, "directory offset")):
            sentinel = 0xFFFF if what == "entry count" else 0xFFFFFFFF
            if small not in (sentinel, big):
                report(D.ZIP64_DISAGREES, what, small, big, offset=eocd_abs)
        n_total, cd_size, cd_off = zn_total, zcd_size, zcd_off

    if n_total > ctx.limits.max_members:
        raise LimitExceeded("max_members", ctx.limits.max_members, f"{n_total} members")
    if cd_size > ctx.limits.max_central_directory_bytes:
        raise LimitExceeded("max_central_directory_bytes",
                            ctx.limits.max_central_directory_bytes)
    if cd_off + cd_size > cd_end_limit:
        report(D.DIRECTORY_PAST_END, offset=cd_off)
        return None
    if cd_off + cd_size < cd_end_limit:
        report(D.BYTES_BEFORE_EOCD, cd_end_limit - cd_off - cd_size, offset=cd_off + cd_size)
    cd = src.read(cd_off, cd_size, record=True)
    entries_canonical = [True]
    entries = _parse_central(report, cd, cd_off, n_total, entries_canonical)
    if entries is None:
        return None
    archive = ZipArchive(ctx, entries, cd_off, comment, on_defect)
    # zipfile's fast path takes the last 22 bytes when they are an EOCD without a comment;
    # it reads the 56 bytes before a Zip64 locator (the same record only without
    # extensible data) and shifts offsets by "concat" unless the directory ends right where
    # the end records begin.
    archive.python_canonical = (eocd_pos + _EOCD.size == tail_len and clen == 0
                                and z64_plain and cd_off + cd_size == cd_end_limit
                                and entries_canonical[0])
    _check_names(report, entries)
    _check_locals(ctx, report, entries, cd_off)
    return archive


def _parse_central(report: Reporter, cd: bytes, cd_off: int, n_total: int,
                   canonical: list[bool]) -> list[ZipEntry] | None:
    """Parse ``n_total`` central-directory entries. ``canonical[0]`` is cleared when
    CPython's zipfile could read an entry differently (its name decoding and NUL cut, its
    extra-field and Zip64 decoding, its version check, its size-driven loop)."""
    entries: list[ZipEntry] = []
    pos = 0
    unpack = _CEN.unpack_from
    for i in range(n_total):
        if pos + _CEN.size > len(cd) or cd[pos : pos + 4] != _CEN_SIG:
            report(D.ENTRY_MISSING, i, offset=cd_off + pos)
            return None
        (_sig, made_by, vn, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen,
         disk, _ia, ext_attr, hoff) = unpack(cd, pos)
        name_b = cd[pos + 46 : pos + 46 + nlen]
        extra = cd[pos + 46 + nlen : pos + 46 + nlen + xlen]
        end = pos + 46 + nlen + xlen + clen
        if end > len(cd):
            report(D.ENTRY_PAST_DIRECTORY, i, offset=cd_off + pos)
            return None
        if canonical[0] and not _python_same_entry(name_b, flags, vn, extra):
            canonical[0] = False
        odd_extra = _unlisted_extra(extra, name_b, "central-directory")
        if 0xFFFFFFFF in (csize, usize, hoff):
            z = _zip64_extra(extra, usize == 0xFFFFFFFF, csize == 0xFFFFFFFF,
                             hoff == 0xFFFFFFFF)
            if z is None:
                report(D.ZIP64_EXTRA_MISSING, i, offset=cd_off + pos)
                return None
            usize, csize, hoff = (z[0] if z[0] is not None else usize,
                                  z[1] if z[1] is not None else csize,
                                  z[2] if z[2] is not None else hoff)
        if flags & 0x0800:
            try:
                name = name_b.decode("utf-8")
            except UnicodeDecodeError:
                report(D.NAME_NOT_UTF8, i, offset=cd_off + pos)
                name = name_b.decode("utf-8", "surrogateescape")
        else:
            # Python's zipfile decodes such names as cp437 while miniz keeps raw bytes: any
            # non-ASCII byte makes the name mean different things to different readers.
            if any(b >= 0x80 for b in name_b):
                report(D.NAME_NOT_ASCII, i, offset=cd_off + pos)
            name = name_b.decode("utf-8", "surrogateescape")
        if odd_extra is not None:
            report(D.PYTHON_READS_DIFFERENTLY, name, None, csize, usize, method, odd_extra,
                   member=name, offset=cd_off + pos)
        if disk != 0:
            report(D.ENTRY_ON_OTHER_DISK, name, member=name)
        if (method == STORED and csize != usize) or (usize and not csize):
            # miniz refuses the whole archive (mz_zip_reader_read_central_dir)
            report(D.SIZES_CONTRADICT, i, name, csize, usize, method, member=name,
                   offset=cd_off + pos)
        if _miniz_directory(name_b, ext_attr, csize, usize):
            report(D.MINIZ_DIRECTORY, name, ext_attr, made_by >> 8, usize, member=name,
                   offset=cd_off + pos)
        # data_offset/end are provisional until the local header is read (_check_locals)
        entries.append(ZipEntry(i, name, name_b, hoff, hoff + _LOC.size + len(name_b), csize,
                                usize, method, flags, crc, hoff))
        pos = end
    if pos != len(cd):
        canonical[0] = False  # zipfile reads entries until the directory size is used up
        report(D.DIRECTORY_SLACK, len(cd) - pos, offset=cd_off + pos)
    for e in entries:
        if e.flags & 0x0041:
            report(D.ENCRYPTED, e.name, member=e.name, offset=e.header_offset)
        elif e.flags & ~_OK_FLAGS & 0xFFFF:
            report(D.UNSUPPORTED_FLAGS, e.name, e.flags & ~_OK_FLAGS & 0xFFFF, member=e.name,
                   offset=e.header_offset)
        if e.method not in (STORED, DEFLATED):
            report(D.UNSUPPORTED_METHOD, e.name, e.method, member=e.name,
                   offset=e.header_offset)
    return entries


def _miniz_directory(name: bytes, ext_attr: int, csize: int, usize: int) -> bool:
    """Does torch's reader read this member differently from its bytes because it takes it
    for a directory? miniz's mz_zip_reader_is_file_a_directory: a name ending in '/' or the
    DOS directory attribute (whatever the made-by OS); its extract-to-memory then returns
    success without writing, so torch gets the uninitialised buffer it allocated for the
    member's size, while Python's zipfile and numpy read the member's bytes. Only a
    genuine directory entry (a name ending in '/' with no bytes at all) reads the same
    (empty) everywhere."""
    if name.endswith(b"/"):
        return csize != 0 or usize != 0
    return bool(ext_attr & DOS_DIRECTORY)


def _python_same_entry(name: bytes, flags: int, version_needed: int, extra: bytes) -> bool:
    """Does CPython's zipfile read this entry exactly as the strict reader does? Plain
    ASCII (or UTF-8-flagged) names without NUL, version needed <= 63, and extra fields that
    are well formed, of harmless kinds only (``HarmlessExtra``: the zipfile of another
    Python version decodes more of them), with at most one Zip64 field."""
    if b"\0" in name or version_needed > 63 or (not flags & 0x0800 and not name.isascii()):
        return False
    pos = zip64 = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + hlen > len(extra) or hid not in _HARMLESS_EXTRA:
            return False
        zip64 += hid == 0x0001
        pos += 4 + hlen
    return pos == len(extra) and zip64 <= 1


def _unlisted_extra(extra: bytes, raw_name: bytes, where: str) -> str | None:
    """Why the extra fields of one header are not harmless (an id outside
    ``HarmlessExtra``, even one whose length runs past the field), or None. Readers differ
    on which fields they decode and on whether they read them in the central directory
    (CPython) or in the local header as well (Info-ZIP unzip): any unlisted id, anywhere,
    is a defect, whether today's readers would act on it or not (a Unicode Path field with
    another version or a wrong name CRC included)."""
    pos = 0
    odd: list[str] = []
    while pos + 4 <= len(extra) and len(odd) < 3:
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + hlen]
        pos += 4 + hlen
        if hid in _HARMLESS_EXTRA:
            continue
        label = _EXTRA_NAMES.get(hid)
        what = f"0x{hid:04x}" + (f" ({label})" if label is not None else "")
        if hid == _UNICODE_PATH and len(body) >= 5:
            version, crc = struct.unpack_from("<BI", body, 0)
            new = escape(body[5:].decode("utf-8", "replace"), 80)
            if version == 1 and crc == zlib.crc32(raw_name) & 0xFFFFFFFF:
                what += (f" renames it '{new}' for CPython >= 3.12's zipfile and Info-ZIP "
                         "unzip" if where == "central-directory" else
                         f" renames it '{new}' for readers that take names from local "
                         "headers (Info-ZIP unzip decodes it there)")
            else:
                what += (f" names it '{new}' (version {version}, name CRC "
                         f"{'matches' if crc == zlib.crc32(raw_name) & 0xFFFFFFFF else 'differs'}"
                         ": today's readers skip it, a laxer one renames the member)")
        else:
            what += " is not of a kind known to leave a member's name, size and place alone"
        odd.append(what)
    if not odd:
        return None
    return f"its {where} extra field {'; '.join(odd)}"


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


def _check_names(report: Reporter, entries: list[ZipEntry]) -> None:
    seen: dict[bytes, ZipEntry] = {}
    folded: dict[str, ZipEntry] = {}
    for e in entries:
        if e.raw_name in seen:
            report(D.DUPLICATE_NAME, e.name, seen[e.raw_name].index, e.index, member=e.name,
                   offset=e.header_offset)
        else:
            seen[e.raw_name] = e
            key = e.name.casefold()
            other = folded.get(key)
            if other is not None:
                report(D.NAMES_DIFFER_IN_CASE, other.name, e.name, member=e.name,
                       offset=e.header_offset)
            else:
                folded[key] = e
        if len(e.raw_name) >= TORCH_NAME_BUFFER:
            report(D.NAME_PAST_TORCH_BUFFER, len(e.raw_name), TORCH_NAME_BUFFER - 1,
                   member=e.name, offset=e.header_offset)
        n = e.name
        if not n or (_SUSPECT_NAME.search(n) and _unsafe_name(n)):
            report(D.UNSAFE_NAME, n, member=n, offset=e.header_offset)


_SUSPECT_NAME = re.compile(r"[\x00-\x1f\x7f\\:]|^/|\.\.")


def _unsafe_name(n: str) -> bool:
    parts = n.split("/")
    return (n.startswith("/") or "\\" in n or ".." in parts or ":" in parts[0]
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in n))


def _check_locals(ctx: AuditContext, report: Reporter, entries: list[ZipEntry],
                  cd_off: int) -> None:
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
                    report(D.LOCAL_HEADER_OUTSIDE, e.name, member=e.name,
                           offset=e.header_offset)
                else:
                    report(D.NO_LOCAL_HEADER, e.name, e.header_offset, member=e.name,
                           offset=e.header_offset)
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
            odd_extra = _unlisted_extra(lextra, lname, "local-header")
            if odd_extra is not None:
                report(D.PYTHON_READS_DIFFERENTLY, e.name, None, e.compressed_size, e.size,
                       e.method, odd_extra, member=e.name, offset=e.header_offset)
            if lname != e.raw_name:
                report(D.LOCAL_NAME_DIFFERS, lname, e.raw_name, member=e.name,
                       offset=e.header_offset)
            if lmethod != e.method:
                report(D.LOCAL_METHOD_DIFFERS, e.name, lmethod, e.method, member=e.name,
                       offset=e.header_offset)
            if (lflags ^ e.flags) & ~0x0006 & 0xFFFF:
                report(D.LOCAL_FLAGS_DIFFER, e.name, lflags, e.flags, member=e.name,
                       offset=e.header_offset)
            end = data_off + e.compressed_size
            if lflags & 0x0008:
                # Sizes live in the data descriptor that follows the data.
                if (lcrc, lcsize, lusize) != (0, 0, 0) and not (
                        lcrc == e.crc32 and lcsize in (e.compressed_size, 0xFFFFFFFF)):
                    report(D.LOCAL_DESCRIPTOR_FIELDS_DIFFER, e.name, member=e.name,
                           offset=e.header_offset)
                # miniz (torch) writes a 64-bit descriptor exactly when the header offset
                # or the size needs 64 bits (torch.serialization._load mirrors this rule)
                z64 = e.compressed_size >= 0xFFFFFFFF or e.size >= 0xFFFFFFFF or \
                    e.header_offset >= 0xFFFFFFFF
                dd_rel = end - ws
                dd = buf[dd_rel : dd_rel + 24] if dd_rel >= 0 and dd_rel + 24 <= len(buf) else None
                end = _check_descriptor(ctx, report, e, end, z64, dd)
            else:
                lz = (lcsize, lusize)
                if 0xFFFFFFFF in lz:
                    z = _zip64_extra(lextra, lusize == 0xFFFFFFFF, lcsize == 0xFFFFFFFF, False)
                    if z is not None:
                        lusize = z[0] if z[0] is not None else lusize
                        lcsize = z[1] if z[1] is not None else lcsize
                if (lcrc, lcsize, lusize) != (e.crc32, e.compressed_size, e.size):
                    report(D.LOCAL_SIZES_DIFFER, e.name, lcrc, lcsize, lusize, e.crc32,
                           e.compressed_size, e.size, member=e.name, offset=e.header_offset)
            if end > cd_off:
                report(D.MEMBER_INTO_DIRECTORY, e.name, member=e.name, offset=e.header_offset)
            if e.header_offset < prev_end:
                report(D.MEMBERS_OVERLAP, e.name, str(prev_name), member=e.name,
                       offset=e.header_offset)
            elif e.header_offset > prev_end:
                if prev_end == 0:
                    report(D.PREFIX, e.header_offset, offset=0)
                else:
                    report(D.GAP_BEFORE_MEMBER, e.header_offset - prev_end, e.name,
                           member=e.name, offset=prev_end)
                _look_for_hidden_directory(ctx, report, prev_end, e.header_offset)
            prev_end = max(prev_end, end)
            prev_name = e.name
            e.data_offset, e.end = data_off, end
            d_rel = data_off - ws
            if d_rel >= 0:
                e.stored_head = buf[d_rel : d_rel + min(16, e.compressed_size)]
    if entries and prev_end < cd_off:
        report(D.GAP_BEFORE_DIRECTORY, cd_off - prev_end, offset=prev_end)
        _look_for_hidden_directory(ctx, report, prev_end, cd_off)
    if not entries and cd_off > 0:
        report(D.PREFIX_BEFORE_EMPTY_DIRECTORY, cd_off, offset=0)


def _look_for_hidden_directory(ctx: AuditContext, report: Reporter, start: int,
                               end: int) -> None:
    """Unaccounted bytes holding another end-of-central-directory record: a reader that
    finds that one (forward scanners, streaming readers) sees a different archive."""
    gap = ctx.source.read(start, min(end - start, 1 << 20))
    i = gap.find(_EOCD_SIG)
    if i >= 0:
        report(D.HIDDEN_EOCD, offset=start + i)


def _check_descriptor(ctx: AuditContext, report: Reporter, e: ZipEntry, data_end: int,
                      z64: bool, buffered: bytes | None = None) -> int:
    n = 24 if z64 else 16
    dd = buffered[:n] if buffered is not None else ctx.source.read(data_end, n)
    if dd[:4] != _DD_SIG:
        # The signature is optional in the spec; torch always writes it.
        alt = dd[:12] if not z64 else dd[:20]
        if len(alt) < (12 if not z64 else 20):
            report(D.DESCRIPTOR_CUT_OFF, e.name, member=e.name, offset=data_end)
            return data_end
        body, n = alt, len(alt)
    else:
        body = dd[4:n]
        if len(body) < n - 4:
            report(D.DESCRIPTOR_CUT_OFF, e.name, member=e.name, offset=data_end)
            return data_end
    if z64:
        crc, cs, us = struct.unpack_from("<IQQ", body, 0)
    else:
        crc, cs, us = struct.unpack_from("<III", body, 0)
    if (crc, cs, us) != (e.crc32, e.compressed_size, e.size):
        report(D.DESCRIPTOR_DIFFERS, e.name, crc, cs, us, e.crc32, e.compressed_size, e.size,
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
    disagreement with the miniz-style reading (PYTHON_* defects). A canonical archive (end records
    and directory laid out so that zipfile's algorithm provably reads the same entries,
    ``ZipArchive.python_canonical``) skips the second reading. Returns the Python reading as an
    archive of the members that differ (for the caller to audit as numpy would read
    them), or None when both readers agree."""
    if archive.python_canonical:
        return None
    report = archive.report
    view = python_zipfile_view(ctx, {e.header_offset: e for e in archive.entries})
    if isinstance(view, str):
        report(D.PYTHON_CANNOT_OPEN, view)
        return None
    ours = archive.entries
    differing: list[_PyMember] = []
    if len(view) != len(ours):
        report(D.PYTHON_MEMBER_COUNT, len(view), len(ours))
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
            report(D.PYTHON_READS_DIFFERENTLY, m.name, m.data_offset, m.compressed_size,
                   m.size, m.method, m.why, member=m.name,
                   offset=m.header_offset if m.header_offset >= 0 else None)
    if not differing:
        return None
    entries = [ZipEntry(i, m.name, m.name.encode("utf-8", "surrogateescape"), m.header_offset,
                        m.data_offset, m.compressed_size, m.size, m.method, m.flags, m.crc32,
                        m.data_offset + m.compressed_size)
               for i, m in enumerate(differing) if m.data_offset is not None]
    return ZipArchive(ctx, entries, archive.cd_offset, b"", archive.on_defect) \
        if entries else None


__all__ = ["DEFLATED", "DOS_DIRECTORY", "STORED", "TORCH_NAME_BUFFER", "Defect", "DefectSink",
           "DefectValue", "HarmlessExtra", "Reporter", "ZipArchive", "ZipDefect", "ZipEntry",
           "compare_python_zipfile", "python_zipfile_view", "read_archive"]
