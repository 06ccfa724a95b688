"""The safetensors header, parsed without the safetensors library (a pure parser: it
raises :class:`HeaderError` or ``LimitExceeded`` and records no findings; the auditor that
checks the tensors and turns errors into CKG501/502 is ``analysis/safetensors.py``).

Layout: an 8-byte little-endian header length ``n``, then ``n`` bytes of UTF-8 JSON that
must be an object, then the data region.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..context import LimitExceeded
from ..primitives import escape
from .jsonfile import JsonError, parse_json

#: The safetensors crate refuses headers above this size (MAX_HEADER_SIZE).
CRATE_MAX_HEADER = 100_000_000

#: ``read(offset, length)``: bytes of the file (recorded for the same-bytes check)
Read = Callable[[int, int], bytes]


class HeaderError(Exception):
    """The header is not one the safetensors crate reads (message: what, where)."""

    def __init__(self, message: str, offset: int, evidence: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.evidence = evidence


class Negative:
    """Stands for a negative JSON integer (including ``-0``, which serde_json reads as a
    float): never an acceptable size or offset."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | Negative:
    if text.startswith("-"):
        return Negative(text)
    if len(text) > 20:
        raise ValueError(f"integer literal of {len(text)} digits")
    return int(text)


@dataclass(frozen=True)
class Header:
    length: int  # n, the JSON's length in bytes
    value: Any   # the parsed JSON (an object when the header is valid); negative ints: Negative
    duplicates: tuple[str, ...]

    @property
    def data_start(self) -> int:
        return 8 + self.length


def read_length(read: Read, size: int) -> int:
    """The 8-byte header length field."""
    if size < 8:
        raise HeaderError(f"file of {size} bytes is shorter than the 8-byte length field", 0)
    (n,) = struct.unpack("<Q", read(0, 8))
    return int(n)


def read_header_bytes(read: Read, size: int, n: int, *, max_header_bytes: int) -> bytes:
    """The header JSON's bytes, of a file of ``size`` bytes whose length field says ``n``
    (bounds checked before anything is read; the bytes must start with ``{``)."""
    if n > size - 8:
        raise HeaderError(f"header length {n} runs past the end of the file ({size} bytes)",
                          0, {"header_length": str(n), "file_size": str(size)})
    if n > CRATE_MAX_HEADER:
        raise HeaderError(f"header length {n} exceeds the safetensors maximum "
                          f"({CRATE_MAX_HEADER}); the library refuses it", 0,
                          {"header_length": str(n)})
    if n > max_header_bytes:
        raise LimitExceeded("max_header_bytes", max_header_bytes,
                            f"safetensors header of {n} bytes")
    header = read(8, n)
    if header[:1] != b"{":
        raise HeaderError("header does not start with '{'", 8)
    return header


def parse_header(header: bytes, n: int, *, max_json_depth: int) -> Header:
    """Parse the header bytes (``read_header_bytes``; ``n`` the length field) strictly:
    depth, duplicate keys, integer literals (negative ones as :class:`Negative`), UTF-8."""
    try:
        parsed = parse_json(header, max_depth=max_json_depth, parse_int=_parse_int,
                            allow_constants=False)
    except JsonError as e:
        if e.kind == "depth":
            raise HeaderError(f"header JSON nests deeper than {max_json_depth} levels (a "
                              "safetensors header needs 3)", 8, {"error": "depth"}) from None
        raise HeaderError(f"header is not valid UTF-8 JSON ({e.kind}: {escape(e.detail)})", 8,
                          {"error": e.kind}) from None
    return Header(n, parsed.value, tuple(parsed.duplicates))


def read_header(read: Read, size: int, n: int, *, max_header_bytes: int,
                max_json_depth: int) -> Header:
    """The header JSON of a file of ``size`` bytes whose length field says ``n``."""
    data = read_header_bytes(read, size, n, max_header_bytes=max_header_bytes)
    return parse_header(data, n, max_json_depth=max_json_depth)


__all__ = ["CRATE_MAX_HEADER", "Header", "HeaderError", "Negative", "Read", "parse_header",
           "read_header", "read_header_bytes", "read_length"]
