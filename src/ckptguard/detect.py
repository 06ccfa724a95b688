"""Format detection from magic bytes. The extension is only a hint (see ``expected_formats``).

``sniff`` looks at the first bytes only; deciding between a torch zip, a TorchScript archive
and an npz needs the zip directory and happens in the engine (``refine_zip``).
"""

from __future__ import annotations

import struct

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
    if len(head) >= 265 and head[257:262] == b"ustar":
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


def extension_of(name: str) -> str:
    lower = name.lower().rsplit("/", 1)[-1]
    if "." not in lower:
        return ""
    return "." + lower.rsplit(".", 1)[-1]


__all__ = [
    "CODE_BEARING",
    "DATA_ONLY_EXTENSIONS",
    "EXTENSION_HINTS",
    "TORCH_LEGACY_MAGIC",
    "WRAPPERS",
    "expected_formats",
    "extension_of",
    "sniff",
]
