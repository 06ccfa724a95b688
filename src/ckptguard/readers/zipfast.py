"""The zip fast path: ``_native/zipcore.c`` proves that ``read_archive`` finds nothing.

``prove_canonical`` runs the C prover over the audit's own ``Source.read`` (the same reads,
with the same ``record`` flags, in the same order as the pure-Python reader, so the
recorded regions and the report are identical). The prover either proves the plain case
(see zipcore.c: no finding of any kind, Python's zipfile reads the same directory, extra
fields of the harmless kinds only -- ``same_extra_table`` checks that the module's table
is ``zipfile.HarmlessExtra``, or the module is not used) and returns the entries built
exactly as ``read_archive`` builds them, or declines; then the read counters are put back
and ``read_archive`` runs as before and explains (DESIGN.md principle 9: the fast path
proves, the slow path explains).

``facts(archive)`` gives the summary facts the prover established for an archive it
accepted, so per-member loops of the torch-zip auditor that provably find nothing can be
skipped (``analysis/torchfile.py``).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._native import native
from ..context import AuditContext, AuditedRegion, SliceSource, Source, _BytesSource

if TYPE_CHECKING:
    from .zipfile import DefectSink, ZipArchive, ZipEntry

#: the ZipEntry fields zipcore.c fills, in its order; any other layout disables the prover
FIELDS = ("index", "name", "raw_name", "header_offset", "data_offset", "compressed_size",
          "size", "method", "flags", "crc32", "end", "stored_head")


@dataclass(frozen=True, slots=True)
class ArchiveFacts:
    """What the prover established about every member of an accepted archive."""

    #: no member of 10+ bytes starts with ``\\x93NUMPY``, and each one's stored head holds
    #: its first 6 bytes (so ``audit_numpy_reading`` would neither read nor find anything)
    numpy_free: bool
    #: no member is named ``constants.pkl`` or ends with ``/constants.pkl`` (and names
    #: hold no NUL and fit torch's name buffer)
    no_constants_pkl: bool
    #: no member name holds an ASCII capital (so ASCII lower-casing changes none)
    no_upper: bool


_FACTS: weakref.WeakKeyDictionary[object, ArchiveFacts] = weakref.WeakKeyDictionary()

native("zipcore")  # loaded with this module, not by the first audit (its dlopen: ~0.2 ms)


def _local(src: Source) -> bool:
    """Sources read from a local file or memory (remote ones keep the Python path: a
    declined attempt there would fetch the ranges twice)."""
    if type(src) is SliceSource:
        return _local(src.parent)
    return type(src) in (Source, _BytesSource)


def _fd_of(src: Source) -> tuple[int, int, Source] | None:
    """(descriptor, file offset of the source's byte 0, the source that records) for a
    local file read through ``Source.read`` (a ``SliceSource`` of one included), else
    None: in-memory sources keep the callback into their own ``read``."""
    base = 0
    while type(src) is SliceSource:
        base += src.base
        src = src.parent
    if type(src) is not Source or src.fd < 0:
        return None
    return src.fd, base, src


def _counters(src: Source) -> list[tuple[Source, int]]:
    out = [(src, src.bytes_read)]
    while isinstance(src, SliceSource):
        src = src.parent
        out.append((src, src.bytes_read))
    return out


def _entry_layout_ok(entry_cls: type[ZipEntry]) -> bool:
    names = tuple(f.name for f in dataclasses.fields(entry_cls))
    return names == FIELDS and not hasattr(entry_cls, "__post_init__")


def same_extra_table(core: object, harmless: Iterable[int]) -> bool:
    """Does the compiled prover accept exactly the extra-field ids ``harmless`` (the reader's
    ``zipfile.HarmlessExtra``) lists? A module built from other sources (a stale build
    without the table, or with another one) could prove an archive the Python reader flags:
    it is not used."""
    ids = getattr(core, "HARMLESS_EXTRA_IDS", None)
    return isinstance(ids, tuple) and sorted(ids) == sorted(int(x) for x in harmless)


_TABLE_OK: list[bool] = []   # same_extra_table of the loaded module, computed once


def prove_canonical(ctx: AuditContext, archive_cls: type[ZipArchive],
                    entry_cls: type[ZipEntry], on_defect: DefectSink | None,
                    harmless: Iterable[int]) -> ZipArchive | None:
    """The archive ``read_archive`` would return without any defect, or None (declined:
    nothing was recorded and the read counters are as before). ``on_defect`` goes to the
    archive: its members' later reads (CRC, size, deflate) still report there."""
    core = native("zipcore")
    src = ctx.source
    if core is None or not _local(src) or not _entry_layout_ok(entry_cls):
        return None
    if not _TABLE_OK:
        _TABLE_OK.append(same_extra_table(core, harmless))
    if not _TABLE_OK[0]:
        return None
    lim = ctx.limits
    fd_at = _fd_of(src)
    if fd_at is not None:
        # pread in C, no call back per read: the recorded reads and the byte count come back
        # with the proof and are kept only when it holds (a decline leaves no trace)
        fd, base, outer = fd_at
        got = core.prove_fd(fd, base, src.size, lim.max_members,
                            lim.max_central_directory_bytes, entry_cls, AuditedRegion)
        if got is None:
            return None
        entries, cd_off, (numpy_free, no_constants, no_upper), recorded, nbytes, nread = got
        outer.record_all(recorded, nbytes)
        for s, _ in _counters(src):
            s.bytes_read += nread
    else:
        before = _counters(src)
        got = core.prove(src.read, src.size, lim.max_members, lim.max_central_directory_bytes,
                         entry_cls)
        if got is None:
            for s, n in before:
                s.bytes_read = n  # the Python reader makes these very reads again
            return None
        entries, cd_off, (numpy_free, no_constants, no_upper) = got
    archive = archive_cls(ctx, entries, cd_off, b"", on_defect)
    archive.python_canonical = True
    _FACTS[archive] = ArchiveFacts(numpy_free, no_constants, no_upper)
    return archive


def facts(archive: object) -> ArchiveFacts | None:
    """The prover's facts about ``archive`` (None: the Python reader read it)."""
    return _FACTS.get(archive)


__all__ = ["FIELDS", "ArchiveFacts", "facts", "prove_canonical", "same_extra_table"]
