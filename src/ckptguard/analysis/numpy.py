"""numpy ``.npy`` files and ``.npz`` archives, without importing numpy.

``.npy``: ``\\x93NUMPY``, a version (1.0, 2.0 or 3.0), a little-endian header length (2 bytes
for 1.0, 4 bytes after), a header that is a Python dict literal with exactly the keys
``descr``, ``fortran_order`` and ``shape``, then the data (the header parser is
``readers/npy.py``). An object dtype (``O`` anywhere
in ``descr``, structured dtypes included) means the data is a pickle: CKG602, and that
pickle is audited by the pickle VM. Numeric arrays must hold exactly shape x itemsize bytes.

``.npz``: a zip of ``.npy`` members read through the strict zip reader; each member is
audited like a file (stored members straight from the file, compressed ones through the
reader's bounded decompression).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..context import AuditContext, LimitExceeded
from ..model import TensorInfo
from ..primitives import escape, or_default
from ..readers.npy import MAGIC, NpyHeader, NpyHeaderError, View, read_header
from ..readers.zipfile import ZipArchive, ZipEntry
from .vm import PickleMode, audit_pickle


def _audit_view(ctx: AuditContext, view: View, *, member: str | None, name: str) -> None:
    try:
        hdr = read_header(view, ctx.limits.max_header_bytes)
    except NpyHeaderError as e:
        ctx.add("CKG601", f"invalid .npy header: {e}", member=member, offset=view.at(0))
        return
    prefix = "npy." if member is None else f"npz.{escape(member, 80)}."
    ctx.metadata[prefix + "version"] = f"{hdr.version[0]}.{hdr.version[1]}"
    ctx.metadata[prefix + "descr"] = escape(repr(hdr.descr), 200)
    remaining = view.size - hdr.data_offset
    if hdr.dtype.has_object:
        ctx.add("CKG602", f"array {escape(name, 80)!r} has an object dtype "
                f"({escape(repr(hdr.descr), 80)}): its data is a pickle, which "
                "numpy.load(allow_pickle=True) would run", member=member,
                offset=view.at(hdr.data_offset), evidence={"descr": escape(repr(hdr.descr), 200)})
        _audit_embedded_pickle(ctx, view, hdr, member=member)
        return
    numel = 1
    for d in hdr.shape:
        numel *= d
    expected = numel * hdr.dtype.itemsize
    if expected != remaining:
        ctx.add("CKG603", f"array {escape(name, 80)!r}: shape {hdr.shape} x itemsize "
                f"{hdr.dtype.itemsize} is {expected} bytes but {remaining} bytes follow the "
                "header", member=member, offset=view.at(hdr.data_offset),
                evidence={"expected_bytes": str(expected), "data_bytes": str(remaining)})
        return
    ctx.tensors.append(TensorInfo(
        name=name,
        dtype=hdr.dtype.name,
        shape=hdr.shape,
        storage=or_default(member, name),
        nbytes=expected,
        storage_nbytes=expected,
        data_offset=view.at(hdr.data_offset),
    ))


def _audit_embedded_pickle(ctx: AuditContext, view: View, hdr: NpyHeader, *,
                           member: str | None) -> None:
    remaining = view.size - hdr.data_offset
    if remaining > ctx.limits.max_pickle_bytes:
        raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes,
                            f"object array pickle of {remaining} bytes")
    data = view.read(hdr.data_offset, remaining, False)

    base = view.at(hdr.data_offset)
    result = audit_pickle(ctx, data, member=member, base_offset=base or 0,
                          mode=PickleMode.RAW)
    end = result.end
    if result.complete and end < len(data) and not any(
            f.rule_id == "CKG203" and f.location.member == member for f in ctx.findings):
        ctx.add("CKG203", f"{len(data) - end} bytes follow the STOP opcode of the object "
                "array's pickle", member=member,
                offset=None if base is None else base + end)


def audit_npy(ctx: AuditContext) -> None:
    """Audit a .npy file read through ``ctx.source``."""
    src = ctx.source

    def read(offset: int, length: int, record: bool) -> bytes:
        return src.read(offset, length, record=record)

    name = ctx.path.replace("\\", "/").rsplit("/", 1)[-1]
    if name.lower().endswith(".npy"):
        name = name[:-4]
    _audit_view(ctx, View(read, src.size, 0), member=None, name=name)


def audit_npz(ctx: AuditContext, archive: ZipArchive) -> None:
    """Audit every ``.npy`` member of an npz (``archive``: the strict zip reader's archive)."""
    for entry in archive.entries:
        ctx.source.check_time()
        member = str(entry.name)
        # numpy's key: ".npy" cut case-sensitively (NpzFile.files), "a.NPY" stays "a.NPY"
        key = member[:-4] if member.endswith(".npy") else member
        if not member.lower().endswith(".npy"):
            ctx.add("CKG601", f"npz member {escape(member, 80)!r} is not a .npy file",
                    member=member)
            continue
        if int(entry.method) == 0:
            view = _member_view(ctx, int(entry.data_offset), int(entry.size))
            _audit_view(ctx, view, member=member, name=key)
            archive.verify(entry)  # numpy reads through zipfile, which checks the CRC
        else:
            # Inflate lazily: the header from the member's first bytes; the whole member only
            # when an object array's pickle must be audited. A numeric array's CRC and size
            # are checked by streaming, so a large (or bomb) member costs no memory.
            lazy = _InflatingView(archive, entry)
            _audit_view(ctx, lazy.view(), member=member, name=key)
            if not lazy.inflated:
                archive.verify(entry)


def audit_numpy_reading(ctx: AuditContext, archive: ZipArchive,
                        entries: Sequence[ZipEntry]) -> None:
    """numpy.load on a zip that is not an npz (a torch archive, a .pt2, any zip): NpzFile
    reads a member whose bytes start with ``\\x93NUMPY`` as an array whatever its name, and
    runs an object array's pickle under allow_pickle=True. Such members are audited:
    numeric arrays add no finding, object arrays are CKG602 and their pickle is audited,
    and a header this parser cannot read is CKG601 (fail closed: numpy may read it, as
    it reads spellings this parser does not know, and unpickle the data)."""
    for entry in entries:
        if int(entry.size) < len(MAGIC) + 4 or int(entry.method) not in (0, 8):
            continue
        if bytes(archive.head(entry, len(MAGIC))) != MAGIC:
            continue
        member = str(entry.name)
        if int(entry.method) == 0:
            view = _member_view(ctx, int(entry.data_offset), int(entry.size))
        else:
            view = _InflatingView(archive, entry).view()
        try:
            hdr = read_header(view, ctx.limits.max_header_bytes)
        except NpyHeaderError as e:
            ctx.add("CKG601", f"member {escape(member, 80)!r} starts like a .npy whose header "
                    f"ckptguard cannot fully parse ({e}): numpy.load(allow_pickle=True) may "
                    "read it from this archive as an array and unpickle its data",
                    member=member, offset=view.at(0),
                    evidence={"reader": "numpy.load"})
            continue
        if not hdr.dtype.has_object:
            continue
        ctx.add("CKG602", f"member {escape(member, 80)!r} starts like a .npy with an object "
                f"dtype ({escape(repr(hdr.descr), 80)}): numpy.load(allow_pickle=True) reads "
                "it from this archive and runs its pickle", member=member,
                offset=view.at(hdr.data_offset),
                evidence={"descr": escape(repr(hdr.descr), 200), "reader": "numpy.load"})
        _audit_embedded_pickle(ctx, view, hdr, member=member)


class _InflatingView:
    _HEAD = 1 << 16

    def __init__(self, archive: ZipArchive, entry: ZipEntry) -> None:
        self.archive = archive
        self.entry = entry
        self.inflated = False
        self._data: bytes | None = None

    def _read(self, offset: int, length: int, record: bool) -> bytes:
        if self._data is None and offset + length <= self._HEAD:
            return bytes(self.archive.head(self.entry, offset + length)[offset : offset + length])
        if self._data is None:
            self._data = bytes(self.archive.read(self.entry))
            self.inflated = True
        return self._data[offset : offset + length]

    def view(self) -> View:
        return View(self._read, int(self.entry.size), None)


def _member_view(ctx: AuditContext, base: int, size: int) -> View:
    src = ctx.source

    def read(offset: int, length: int, record: bool) -> bytes:
        length = max(0, min(length, size - offset))
        return src.read(base + offset, length, record=record)

    return View(read, size, base)


def _bytes_view(data: bytes) -> View:
    def read(offset: int, length: int, record: bool) -> bytes:
        return data[offset : offset + length]

    return View(read, len(data), None)


def audit_npy_bytes(ctx: AuditContext, data: bytes, *, member: str, name: str) -> None:
    """Audit one .npy held in memory (a decompressed archive member)."""
    _audit_view(ctx, _bytes_view(data), member=member, name=name)

__all__ = ["audit_npy", "audit_npy_bytes", "audit_npz", "audit_numpy_reading"]
