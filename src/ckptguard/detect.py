"""Format detection from magic bytes. The extension is only a hint (see ``expected_formats``).

``sniff`` looks at the first bytes only; deciding between a torch zip, a TorchScript archive
and an npz needs the zip directory and happens in the engine (``refine_zip``).
"""

from __future__ import annotations

import enum
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .analysis.opcodes import ALL_OPCODES, scan_opcodes_prefix
from .model import Format

#: torch.serialization.MAGIC_NUMBER, as the legacy format pickles it (protocol 2, LONG1).
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + TORCH_LEGACY_MAGIC.to_bytes(10, "little")

#: (magic, offset, wrapper name) of compressed/archive wrappers we do not open.
WRAPPERS: tuple[tuple[bytes, int, str], ...] = (
    (b"\x1f\x8b", 0, "gzip"),
    (b"BZh", 0, "bzip2"),
    (b"\xfd7zXZ\x00", 0, "xz"),
    (b"\x28\xb5\x2f\xfd", 0, "zstd"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7z"),
    (b"\x04\x22\x4d\x18", 0, "lz4"),
    (b"Rar!\x1a\x07", 0, "rar"),
    (b"\x89HDF\r\n\x1a\n", 0, "hdf5 (keras .h5)"),
    (b"GGUF", 0, "gguf"),
)

#: Every opcode byte of pickle protocols 0-5 (one table: analysis/opcodes.py).
PICKLE_OPCODE_BYTES = ALL_OPCODES
_PROTO = 0x80

#: Extension -> formats whose content may legitimately carry that extension.
_TORCH_LIKE = frozenset({Format.TORCH_ZIP, Format.TORCH_LEGACY, Format.TORCH_LEGACY_TAR,
                         Format.PICKLE, Format.TORCHSCRIPT})
EXTENSION_HINTS: dict[str, frozenset[Format]] = {
    ".safetensors": frozenset({Format.SAFETENSORS}),
    ".npy": frozenset({Format.NUMPY_NPY}),
    ".npz": frozenset({Format.NUMPY_NPZ, Format.ZIP}),
    ".json": frozenset({Format.JSON, Format.UNKNOWN}),
    ".bin": _TORCH_LIKE,
    ".pt": _TORCH_LIKE,
    ".pth": _TORCH_LIKE,
    ".ckpt": _TORCH_LIKE,
    ".pkl": _TORCH_LIKE,
    ".pickle": _TORCH_LIKE,
    ".joblib": _TORCH_LIKE,
    ".dat": _TORCH_LIKE,
    ".data": _TORCH_LIKE,
    ".model": _TORCH_LIKE | {Format.UNKNOWN},
}

#: Extensions that promise data only: pickle-bearing content under them is a disguise.
DATA_ONLY_EXTENSIONS = frozenset({".safetensors", ".npy", ".json", ".txt", ".gguf", ".onnx",
                                  ".msgpack", ".h5", ".csv", ".png", ".jpg"})
CODE_BEARING = frozenset({Format.TORCH_ZIP, Format.TORCH_LEGACY, Format.TORCH_LEGACY_TAR,
                          Format.PICKLE, Format.TORCHSCRIPT})


def sniff(head: bytes, size: int) -> tuple[Format, str]:
    """Classify by the first bytes (pass at least 512 when the file is that long).

    Returns the format and a short detail (the wrapper's name, the pickle protocol, ...).
    """
    if size == 0:
        return Format.EMPTY, ""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return Format.ZIP, ""
    if head.startswith(b"\x93NUMPY"):
        return Format.NUMPY_NPY, ""
    if head.startswith(_LEGACY_PREFIX):
        return Format.TORCH_LEGACY, "protocol 2"
    for magic, off, name in WRAPPERS:
        if head[off : off + len(magic)] == magic:
            return Format.WRAPPED, name
    if is_tar_header(head):
        return Format.TORCH_LEGACY_TAR, "tar"
    if _is_safetensors(head, size):
        return Format.SAFETENSORS, ""
    if head[:1] == bytes([_PROTO]) and len(head) >= 2 and head[1] <= 5:
        return Format.PICKLE, f"protocol {head[1]}"
    if head[:1] and head[0] in PICKLE_OPCODE_BYTES and scan_opcodes_prefix(head):
        return Format.PICKLE, "protocol 0/1"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return Format.JSON, "json"
    return Format.UNKNOWN, ""


_TAR_BLOCK = 512
_TAR_SUMS = struct.Struct("148B8x356B"), struct.Struct("148b8x356b")


def is_tar_header(head: bytes) -> bool:
    """Whether Python's ``tarfile`` accepts ``head``'s first 512 bytes as a first member
    header: then ``torch.load`` (a path or an open file that is not a zip) reads the file as
    a legacy tar checkpoint and unpickles its members, whatever else the bytes are. tarfile
    needs no ``ustar`` magic (a v7 header has none): a valid checksum over the block and
    numeric fields it can parse are enough.

    The checksum test comes first, as tarfile's own first test: a block whose checksum
    field cannot hold either of tarfile's two sums is refused without importing tarfile
    (~2.6 ms); ``tarfile.TarInfo.frombuf`` decides the rest."""
    if len(head) < _TAR_BLOCK:
        return False
    block = head[:_TAR_BLOCK]
    field = block[148:156]
    if field[:1] not in (b"\x80", b"\xff"):  # else base-256: tarfile decides
        # tarfile's nti(): cut at the first NUL, ASCII only, stripped, octal
        try:
            value = int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
        except ValueError:
            return False
        if value not in (256 + sum(_TAR_SUMS[0].unpack(block)),
                         256 + sum(_TAR_SUMS[1].unpack(block))):
            return False
    import tarfile

    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def expected_formats(name: str) -> frozenset[Format] | None:
    lower = name.lower()
    for ext, fmts in EXTENSION_HINTS.items():
        if lower.endswith(ext):
            return fmts
    return None


#: a sharded checkpoint's index json (``scan`` audits it with the shards it names)
INDEX_SUFFIX = ".index.json"
#: a torch.distributed.checkpoint folder's metadata file and shard names (analysis/dcp.py);
#: here so that walking folders and naming files do not import the DCP auditor
DCP_METADATA_RE = re.compile(r"(?:__\d+)?\.metadata\Z")
DCP_SHARD_SUFFIX = ".distcp"


def lists_dcp_metadata(entries: list[os.DirEntry[str]]) -> bool:
    """Does a folder listing hold the ``.metadata`` file (a link to one counts, as for
    torch's reader: Hugging Face cache snapshots link every file to a blob)?"""
    for e in entries:
        if e.name == ".metadata":
            try:
                return e.is_file()
            except OSError:
                return False
    return False


#: how many last bytes of a file the zip readers that look from the end search for the end
#: of central directory record (22 bytes): CPython's zipfile the longest comment back
#: (22 + 65,535); miniz (torch.jit.load) scans 4 KiB blocks backwards and gives up only
#: after a block that starts 65,557 or more bytes from the end, so up to ~4 KiB further
ZIP_END_RECORD_MAX = 22 + 0xFFFF + 4096


def ends_in_zip_end_record(tail: bytes, tail_start: int,
                           read: Callable[[int, int], bytes]) -> bool:
    """Whether a zip reader that looks from the end opens the file as an archive: ``tail``
    is its last ``min(size, ZIP_END_RECORD_MAX)`` bytes, starting at file offset
    ``tail_start``; ``read(offset, n)`` reads elsewhere in it.

    The end record is the one miniz takes: the last signature with 22 bytes after it.
    Neither miniz nor CPython's zipfile checks that its comment ends the file, so bytes
    after it change nothing. It opens when the central directory it names starts with a
    central-directory signature, at its recorded offset (miniz) or right before the end
    record (CPython's zipfile, which shifts a prefixed archive), or when a Zip64 locator
    precedes it (its records decide; counted as opening), or it lists no member (an empty
    archive). A signature in tensor bytes
    (about one file in 60,000 has one in its last 69 KB) names no such directory."""
    i = tail.rfind(b"PK\x05\x06", 0, max(len(tail) - 18, 0))
    if i < 0:
        return False
    if i >= 20 and tail[i - 20 : i - 16] == b"PK\x06\x07":
        return True
    n_total = int.from_bytes(tail[i + 10 : i + 12], "little")
    cd_size = int.from_bytes(tail[i + 12 : i + 16], "little")
    cd_off = int.from_bytes(tail[i + 16 : i + 20], "little")
    if n_total == 0:
        return True  # an empty archive: nothing to load, but an archive (as it always was)
    eocd = tail_start + i
    for at in {cd_off, eocd - cd_size}:
        if 0 <= at <= eocd - 4:
            sig = tail[at - tail_start : at - tail_start + 4] if at >= tail_start else \
                read(at, 4)
            if sig == b"PK\x01\x02":
                return True
    return False


def extension_of(name: str) -> str:
    lower = name.lower().rsplit("/", 1)[-1]
    if "." not in lower:
        return ""
    return "." + lower.rsplit(".", 1)[-1]


# --- every reader of the same bytes ----------------------------------------------------------
#
# SAFE must hold for every program that may read the file, not only for the format sniffed
# above (DESIGN.md principle 2). This is THE table of who reads what, and how: each loader
# decides from the first bytes (and torch.load also from the name) how it reads the file.
# The engine audits every reading a plausible loader takes (analysis/readings.py), and
# SECURITY.md ("Every reader") writes the same table out. tests/test_readings.py pins it.


class Loader(str, enum.Enum):
    """A program that may be pointed at a checkpoint file."""

    TORCH_LOAD = "torch.load"
    TORCH_JIT_LOAD = "torch.jit.load"
    PICKLE_LOAD = "pickle.load"
    NUMPY_LOAD = "numpy.load(allow_pickle=True)"
    SAFETENSORS_LOAD = "safetensors"
    JSON_LOAD = "json.load"


class Head(str, enum.Enum):
    """One test a loader makes on the first bytes before choosing how to read. The tests
    are independent (a file can pass several: an npy header that is also a tar header), and
    each loader makes its own in its own order (LOADER_RULES)."""

    ZIP_LOCAL = "PK\\x03\\x04 at byte 0"       # torch._is_zipfile, numpy's zip test
    ZIP_EMPTY = "PK\\x05\\x06 at byte 0"       # numpy's zip test only
    NPY = "\\x93NUMPY at byte 0"                # numpy's npy test
    TAR = "a header tarfile accepts in bytes 0-511"  # torch's legacy path: tarfile first


class NameKind(str, enum.Enum):
    """What torch.load sees in the name (it is the only loader that looks). It looks only
    at a path: an open file handed to it is read by its content (NameKind.OTHER), so every
    loader is also planned without a name (``readings``)."""

    SAFETENSORS = "path ends in .safetensors"   # torch.load hands it to safetensors
    OTHER = "any other name (or a file object)"


class Reading(str, enum.Enum):
    """How a loader reads the bytes."""

    PICKLE = "pickle program from byte 0; a persistent id fails"
    PICKLE_TORCH = ("torch's legacy stream from byte 0: up to five pickles, the fourth "
                    "with its persistent_load")
    ZIP_MINIZ = "zip through miniz: end record from the end, central directory, records"
    ZIP_PYTHON = "zip through CPython's zipfile; members starting \\x93NUMPY are arrays"
    NPY = "npy header; an object array's data is a pickle"
    TAR = "legacy torch tar: its members' pickles"
    SAFETENSORS = "8-byte header length, JSON header, raw tensor bytes"
    JSON = "JSON text"

    @property
    def runs_code(self) -> bool:
        """Can this reading import or call anything named by the file?"""
        return self not in (Reading.SAFETENSORS, Reading.JSON)


@dataclass(frozen=True)
class LoaderRule:
    """``loader`` reads a file whose first bytes are ``head`` and whose name is ``name``
    (None: any) as ``reading``."""

    loader: Loader
    head: Head | None
    name: NameKind | None
    reading: Reading


_L, _H, _N, _R = Loader, Head, NameKind, Reading
#: How each loader reads the first bytes (torch/serialization.py load/_is_zipfile/
#: _legacy_load, numpy/lib/_npyio_impl.py load, pickle, safetensors, json). First match wins.
LOADER_RULES: tuple[LoaderRule, ...] = (
    LoaderRule(_L.TORCH_LOAD, None, _N.SAFETENSORS, _R.SAFETENSORS),
    LoaderRule(_L.TORCH_LOAD, _H.ZIP_LOCAL, None, _R.ZIP_MINIZ),
    LoaderRule(_L.TORCH_LOAD, _H.TAR, None, _R.TAR),
    LoaderRule(_L.TORCH_LOAD, None, None, _R.PICKLE_TORCH),
    LoaderRule(_L.TORCH_JIT_LOAD, None, None, _R.ZIP_MINIZ),
    LoaderRule(_L.PICKLE_LOAD, None, None, _R.PICKLE),
    LoaderRule(_L.NUMPY_LOAD, _H.ZIP_LOCAL, None, _R.ZIP_PYTHON),
    LoaderRule(_L.NUMPY_LOAD, _H.ZIP_EMPTY, None, _R.ZIP_PYTHON),
    LoaderRule(_L.NUMPY_LOAD, _H.NPY, None, _R.NPY),
    LoaderRule(_L.NUMPY_LOAD, None, None, _R.PICKLE),
    LoaderRule(_L.SAFETENSORS_LOAD, None, None, _R.SAFETENSORS),
    LoaderRule(_L.JSON_LOAD, None, None, _R.JSON),
)

#: Loaders that take any file whatever its name or content says (they never look at the
#: name, and they fall back to unpickling, or, for torch.jit.load, find an archive from the
#: end of any file): always plausible.
ANY_FILE_LOADERS = frozenset({Loader.PICKLE_LOAD, Loader.NUMPY_LOAD, Loader.TORCH_LOAD,
                              Loader.TORCH_JIT_LOAD})

#: Format (by content) -> loaders that read that content on purpose.
FORMAT_LOADERS: dict[Format, frozenset[Loader]] = {
    Format.TORCH_ZIP: frozenset({Loader.TORCH_LOAD}),
    Format.TORCHSCRIPT: frozenset({Loader.TORCH_JIT_LOAD, Loader.TORCH_LOAD}),
    Format.TORCH_LEGACY: frozenset({Loader.TORCH_LOAD}),
    Format.TORCH_LEGACY_TAR: frozenset({Loader.TORCH_LOAD}),
    Format.PICKLE: frozenset({Loader.PICKLE_LOAD, Loader.TORCH_LOAD}),
    Format.SAFETENSORS: frozenset({Loader.SAFETENSORS_LOAD}),
    Format.NUMPY_NPY: frozenset({Loader.NUMPY_LOAD}),
    Format.NUMPY_NPZ: frozenset({Loader.NUMPY_LOAD}),
    Format.ZIP: frozenset({Loader.NUMPY_LOAD, Loader.TORCH_LOAD}),
    Format.WRAPPED: frozenset(),
    Format.JSON: frozenset({Loader.JSON_LOAD}),
    Format.MODEL_FOLDER: frozenset(),
    # a DCP folder is read by dcp.load through its .metadata (audited as the folder's own
    # unit, analysis/dcp.py); a .distcp shard holds torch.save archives back to back, read
    # by byte range, and as a whole by any zip reader (the last archive's end record)
    Format.DCP_CHECKPOINT: frozenset(),
    Format.DCP_SHARD: frozenset({Loader.NUMPY_LOAD, Loader.TORCH_LOAD}),
    # a torch.export archive: torch.export.load, and torch.load for its zip
    Format.TORCH_EXPORT: frozenset({Loader.TORCH_LOAD}),
    Format.EMPTY: frozenset(),
    Format.UNKNOWN: frozenset(),
}

#: Extension -> loaders a file of that name is handed to.
NAME_LOADERS: dict[str, frozenset[Loader]] = {
    ".safetensors": frozenset({Loader.SAFETENSORS_LOAD, Loader.TORCH_LOAD}),
    ".npy": frozenset({Loader.NUMPY_LOAD}),
    ".npz": frozenset({Loader.NUMPY_LOAD}),
    ".json": frozenset({Loader.JSON_LOAD}),
    **{ext: frozenset({Loader.TORCH_LOAD, Loader.TORCH_JIT_LOAD})
       for ext in (".pt", ".pth", ".bin", ".ckpt", ".model", ".dat", ".data")},
    **{ext: frozenset({Loader.PICKLE_LOAD}) for ext in (".pkl", ".pickle", ".joblib")},
}

#: Readings each format's own audit (analysis/engine.py handlers) already covers.
AUDITED_BY_FORMAT: dict[Format, frozenset[Reading]] = {
    Format.TORCH_ZIP: frozenset({Reading.ZIP_MINIZ, Reading.ZIP_PYTHON}),
    Format.TORCHSCRIPT: frozenset({Reading.ZIP_MINIZ, Reading.ZIP_PYTHON}),
    Format.NUMPY_NPZ: frozenset({Reading.ZIP_MINIZ, Reading.ZIP_PYTHON}),
    Format.ZIP: frozenset({Reading.ZIP_MINIZ, Reading.ZIP_PYTHON}),
    Format.TORCH_LEGACY: frozenset({Reading.PICKLE, Reading.PICKLE_TORCH}),
    Format.PICKLE: frozenset({Reading.PICKLE, Reading.PICKLE_TORCH}),
    Format.TORCH_LEGACY_TAR: frozenset({Reading.TAR}),
    Format.SAFETENSORS: frozenset({Reading.SAFETENSORS}),
    Format.NUMPY_NPY: frozenset({Reading.NPY}),
    Format.JSON: frozenset({Reading.JSON}),
    Format.WRAPPED: frozenset(),
    Format.MODEL_FOLDER: frozenset(),
    Format.DCP_CHECKPOINT: frozenset(),
    # a lone shard is INCOMPLETE by itself (CKG809): its whole-file zip reading is left to
    # the reading audit, which names it
    Format.DCP_SHARD: frozenset(),
    Format.TORCH_EXPORT: frozenset({Reading.ZIP_MINIZ, Reading.ZIP_PYTHON}),
    Format.EMPTY: frozenset(),
    Format.UNKNOWN: frozenset(),
}


def head_kinds(head: bytes) -> frozenset[Head]:
    """The loaders' magic tests that the first bytes pass."""
    out = set()
    if head.startswith(b"PK\x03\x04"):
        out.add(Head.ZIP_LOCAL)
    if head.startswith(b"PK\x05\x06"):
        out.add(Head.ZIP_EMPTY)
    if head.startswith(b"\x93NUMPY"):
        out.add(Head.NPY)
    if is_tar_header(head):
        out.add(Head.TAR)
    return frozenset(out)


def name_kind(name: str) -> NameKind:
    # torch.load tests os.fspath(f).endswith(".safetensors"): case-sensitive
    return NameKind.SAFETENSORS if name.endswith(".safetensors") else NameKind.OTHER


def reading_of(loader: Loader, heads: frozenset[Head], name: NameKind) -> Reading:
    """How ``loader`` reads a file whose first bytes pass the tests ``heads`` and whose
    name is ``name`` (LOADER_RULES: the loader's first matching rule)."""
    for r in LOADER_RULES:
        if r.loader is loader and (r.head is None or r.head in heads) and \
                r.name in (None, name):
            return r.reading
    raise AssertionError(f"no rule for {loader}")  # the table test proves this unreachable


def reader_table_rows() -> list[str]:
    """LOADER_RULES as the markdown rows SECURITY.md shows (a test keeps them in sync)."""
    return [f"| {r.loader.value} | {'any' if r.head is None else r.head.value} | "
            f"{'any' if r.name is None else r.name.value} | {r.reading.value} |"
            for r in LOADER_RULES]


def plausible_loaders(fmt: Format, name: str) -> frozenset[Loader]:
    """Every loader that may plausibly open this file: by its content, by its name, and
    the loaders that take any file."""
    return (FORMAT_LOADERS.get(fmt, frozenset()) | NAME_LOADERS.get(extension_of(name),
                                                                   frozenset())
            | ANY_FILE_LOADERS)


def readings(fmt: Format, head: bytes, name: str) -> dict[Reading, frozenset[Loader]]:
    """Each way the file will be read -> the loaders that read it that way."""
    heads, nk = head_kinds(head), name_kind(name)
    out: dict[Reading, set[Loader]] = {}
    for loader in sorted(plausible_loaders(fmt, name), key=lambda x: x.value):
        # a loader handed the path reads by the name too; handed the open file, by the
        # content alone (torch.load(open("m.safetensors", "rb")) is no safetensors load)
        for kind in dict.fromkeys((nk, NameKind.OTHER)):  # (in a fixed order)
            out.setdefault(reading_of(loader, heads, kind), set()).add(loader)
    return {r: frozenset(ls) for r, ls in out.items()}


def unaudited_readings(fmt: Format, head: bytes, name: str) -> dict[Reading, frozenset[Loader]]:
    """The code-running readings the format's own audit does not cover."""
    covered = AUDITED_BY_FORMAT.get(fmt, frozenset())
    return {r: ls for r, ls in readings(fmt, head, name).items()
            if r.runs_code and r not in covered}


__all__ = [
    "ANY_FILE_LOADERS",
    "AUDITED_BY_FORMAT",
    "CODE_BEARING",
    "DATA_ONLY_EXTENSIONS",
    "EXTENSION_HINTS",
    "FORMAT_LOADERS",
    "INDEX_SUFFIX",
    "LOADER_RULES",
    "NAME_LOADERS",
    "TORCH_LEGACY_MAGIC",
    "WRAPPERS",
    "ZIP_END_RECORD_MAX",
    "Head",
    "Loader",
    "LoaderRule",
    "NameKind",
    "Reading",
    "ends_in_zip_end_record",
    "expected_formats",
    "extension_of",
    "head_kinds",
    "is_tar_header",
    "name_kind",
    "plausible_loaders",
    "reader_table_rows",
    "reading_of",
    "readings",
    "sniff",
    "unaudited_readings",
]
