"""Where torch will *compute* a torch zip's storage offsets, and whether that is where they
are.

``torch.load(mmap=True)`` finds each storage's bytes in its one map of the file by reading
the record's local header (``get_record_offset``: a locate and a read per storage, through
a Python file object). Under ``torch.utils.serialization.config.load.calculate_storage_
offsets`` it computes them instead (``serialization._load``'s ``_get_offset``): the first
storage it meets (key ``"0"``) at its real offset, every later one right after the previous
one's bytes and data descriptor, behind a local header of torch's own layout padded to the
archive's ``.storage_alignment`` (``PyTorchStreamReader::getRecordOffsetNoRead``). That is
exact for torch.save's archives and wrong for any other layout -- torch then slices other
bytes of the file.

The audit has read every local header already: :func:`computed_offsets_hold` says whether
torch's computation gives, for every storage in the order the pickle first names them, the
offset the audit proved. Only then does the loader let torch compute them
(``_torch.computed_storage_offsets``), which saves torch one header read per storage
(docs/fastpath.md, "Round 9"). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..analysis.tensors import StorageRef

#: miniz's constants, as serialization._load spells them
_LOCAL_HEADER = 30
_U32_MAX = 0xFFFFFFFF
_DESCRIPTOR, _DESCRIPTOR64 = 16, 24
#: torch's default when the archive has no ``.storage_alignment`` record
DEFAULT_ALIGNMENT = 64


def record_offset_no_read(cursor: int, full_name_len: int, size: int, alignment: int) -> int:
    """``getRecordOffsetNoRead``: the data offset of a record of ``size`` bytes whose local
    header starts at ``cursor``, written by torch's writer: 30 header bytes, the name, the
    padding extra field's 4-byte header (plus the Zip64 field's when the size or the
    offset needs it), padding up to ``alignment``."""
    start = cursor + _LOCAL_HEADER + full_name_len + 4
    if size >= _U32_MAX or cursor >= _U32_MAX:
        start += 4
        if size >= _U32_MAX:
            start += 16
        if cursor >= _U32_MAX:
            start += 8
    mod = start % alignment
    return start if mod == 0 else start + alignment - mod


def computed_offsets_hold(storages: Iterable[StorageRef], folder: str, alignment: int) -> bool:
    """True when torch's computed offset of every storage equals its real data offset.

    ``storages``: in the order the pickle first names them (the order torch's
    ``persistent_load`` meets them), each with its record name (``member``), real data
    offset, and ``numel * itemsize`` bytes; ``folder``: the archive folder torch reads
    (the first entry's name up to its first ``/``). False for anything torch's computation
    would get wrong or refuse (a first key other than ``"0"``, a record not named
    ``<folder>/data/<key>`` or not placed by the audit, a first record beyond 4 GiB whose
    header offset is not known here)."""
    if not 0 < alignment < 1 << 64 or not folder.isascii():
        return False  # (a name's length in bytes is its length only in ASCII)
    prefix = folder + "/data/"
    cursor = -1
    for ref in storages:
        real, member = ref.data_offset, ref.member
        if real is None or member != prefix + ref.key or not ref.key.isascii():
            return False
        nbytes = ref.numel * ref.itemsize
        if cursor < 0:
            if ref.key != "0" or real >= _U32_MAX:
                return False
            offset, header = real, 0  # torch reads this one (its header lies below it)
        else:
            offset = record_offset_no_read(cursor, len(member), nbytes, alignment)
            if offset != real:
                return False
            header = cursor
        cursor = offset + nbytes
        if nbytes > 0:
            cursor += _DESCRIPTOR64 if header >= _U32_MAX or nbytes >= _U32_MAX else _DESCRIPTOR
    return True


__all__ = ["DEFAULT_ALIGNMENT", "computed_offsets_hold", "record_offset_no_read"]
