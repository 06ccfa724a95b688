""".npy headers as numpy.save writes them, parsed without importing numpy (a pure parser:
it raises :class:`NpyHeaderError` or ``LimitExceeded`` and records no findings; the
auditor is ``analysis/numpy.py``).

``\\x93NUMPY``, a version (1.0, 2.0 or 3.0), a little-endian header length (2 bytes for 1.0,
4 bytes after), a header that is a Python dict literal with exactly the keys ``descr``,
``fortran_order`` and ``shape``, then the data.

The header is read as numpy 2.x's ``numpy/lib/_format_impl.py`` reads it
(``_read_array_header``): ``ast.literal_eval`` of the decoded text (a repeated key keeps its
last value), and for versions 1.0 and 2.0 a second try after ``_filter_header`` drops the
Python-2 ``L`` of long literals; ``shape`` is a tuple of ``int`` (``True`` included);
``descr`` goes through ``descr_to_dtype``: a string is a dtype name, a tuple is
``(descr, subarray shape)``, a list holds ``(name, descr[, shape])`` fields. Object-ness
(``dtype.hasobject``, which makes numpy.load unpickle the data) is decided for every descr
this parser accepts; a descr it does not understand raises :class:`NpyHeaderError`, and
callers that meet such a header where numpy may read it fail closed.
"""

from __future__ import annotations

import ast
import io
import re
import struct
import tokenize
from dataclasses import dataclass
from typing import Any, Protocol

from ..context import LimitExceeded
from ..primitives import escape

MAGIC = b"\x93NUMPY"
VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
KEYS = frozenset({"descr", "fortran_order", "shape"})
#: Hard cap on the header we hand to ``ast`` (numpy.load itself refuses more than 10,000
#: bytes unless told otherwise); ``Limits.max_header_bytes`` may lower it.
NPY_MAX_HEADER = 1 << 20
_MAX_FIELDS = 100_000

_SIMPLE = re.compile(r"([<>|=]?)([biufcSUVOMm])(\d*)(\[[A-Za-z0-9]+\])?")
#: the dtype strings whose dtype has ``hasobject`` set (numpy 2.x): 'O' with any byte order
#: and a size (numpy takes 4 and 8, leading zeros too; other sizes raise), the type names,
#: and StringDType ('T', whose dtype also reports hasobject). A superset is harmless:
#: numpy raises where it is wider.
_OBJECT = re.compile(r"[<>|=]?[OT]\d*")
_OBJECT_NAMES = frozenset({"object", "object_"})
_VALID_SIZES: dict[str, frozenset[int]] = {
    "b": frozenset({1}),
    "i": frozenset({1, 2, 4, 8}),
    "u": frozenset({1, 2, 4, 8}),
    "f": frozenset({2, 4, 8, 12, 16}),
    "c": frozenset({8, 16, 24, 32}),
    "M": frozenset({8}),
    "m": frozenset({8}),
}
_TORCH_NAMES = {
    "b1": "bool", "i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16",
    "i4": "int32", "u4": "uint32", "i8": "int64", "u8": "uint64",
    "f2": "float16", "f4": "float32", "f8": "float64", "c8": "complex64",
    "c16": "complex128",
}


class NpyHeaderError(Exception):
    """The header is not one numpy.save writes (or numpy.load reads the same way)."""


@dataclass(frozen=True)
class Dtype:
    itemsize: int
    has_object: bool
    name: str  # torch dtype name when there is one, else "numpy:<descr>"


@dataclass(frozen=True)
class NpyHeader:
    version: tuple[int, int]
    descr: Any
    dtype: Dtype
    fortran_order: bool
    shape: tuple[int, ...]
    data_offset: int  # relative to the start of the .npy


class Reader(Protocol):
    def __call__(self, offset: int, length: int, record: bool) -> bytes: ...


@dataclass(frozen=True)
class View:
    """One .npy byte stream: a whole file, a stored npz member, or decompressed bytes."""

    read: Reader
    size: int
    base: int | None  # absolute file offset of byte 0 (None: not a file range)

    def at(self, rel: int) -> int | None:
        return None if self.base is None else self.base + rel


# --- descr -------------------------------------------------------------------------------

def parse_descr(descr: Any, depth: int = 0) -> Dtype:
    """Itemsize, object-ness and a display name of a numpy ``descr`` as numpy's
    ``descr_to_dtype`` reads it: a string (``'<f4'``, ``'|O'``, ``'object'``), a tuple
    ``(descr, shape)`` (a subarray), or a list of ``(name, descr[, shape])`` fields.
    ``has_object`` is numpy's ``dtype.hasobject``: an object field anywhere. Anything
    else raises NpyHeaderError (it is not proven free of objects)."""
    if depth > 32:
        raise NpyHeaderError("structured dtype nests too deeply")
    if isinstance(descr, str):
        return _simple_descr(descr)
    if isinstance(descr, tuple):
        # descr_to_dtype: numpy.dtype((descr_to_dtype(descr[0]), descr[1])); items after
        # the second are ignored. A subarray has objects exactly when its base has.
        if len(descr) < 2:
            raise NpyHeaderError("tuple descr is not (descr, shape)")
        base = parse_descr(descr[0], depth + 1)
        sub = descr[1]
        if base.has_object:
            return Dtype(base.itemsize, True, "numpy:object-subarray")
        count = _shape_count(sub, "subarray shape")
        return Dtype(base.itemsize * count, False, "numpy:subarray")
    if isinstance(descr, list):
        if not descr:
            raise NpyHeaderError("empty structured descr")
        if len(descr) > _MAX_FIELDS:
            raise NpyHeaderError("too many fields in structured descr")
        total, has_object, names = 0, False, set()
        for field in descr:
            # numpy unpacks any sequence of 2 or 3 items (a list too); other iterables
            # (a string 'aO' is the field 'a' of dtype 'O') are not understood here
            if not isinstance(field, (tuple, list)) or len(field) not in (2, 3):
                raise NpyHeaderError("structured descr field is not (name, descr[, shape])")
            fname = field[0]
            if isinstance(fname, tuple):
                if len(fname) != 2 or not all(isinstance(x, str) for x in fname):
                    raise NpyHeaderError("field title is not (title, name)")
                fname = fname[1]
            if not isinstance(fname, str):
                raise NpyHeaderError("field name is not a string")
            if fname:
                if fname in names:
                    raise NpyHeaderError(f"duplicate field name {escape(fname, 40)!r}")
                names.add(fname)
            sub = parse_descr(field[1], depth + 1)
            count = 1
            if len(field) == 3:
                count = _shape_count(field[2], "field shape")
            total += sub.itemsize * count
            has_object = has_object or sub.has_object
        return Dtype(total, has_object, "numpy:structured")
    raise NpyHeaderError(f"descr is a {type(descr).__name__}, not a string or a list")


def _simple_descr(text: str) -> Dtype:
    if text in _OBJECT_NAMES or _OBJECT.fullmatch(text):
        return Dtype(8, True, "numpy:object")
    m = _SIMPLE.fullmatch(text)
    if m is None:
        raise NpyHeaderError(f"unsupported descr {escape(text, 40)!r}")
    order, kind, digits, unit = m.groups()
    if unit and kind not in "Mm":
        raise NpyHeaderError(f"unsupported descr {escape(text, 40)!r}")
    if not digits or len(digits) > 12:
        raise NpyHeaderError(f"descr {escape(text, 40)!r} has no valid size")
    n = int(digits)
    if kind in "SV":
        size = n
    elif kind == "U":
        size = 4 * n
    else:
        if n not in _VALID_SIZES[kind] or (kind in "Mm" and not unit):
            raise NpyHeaderError(f"descr {escape(text, 40)!r} has an invalid size")
        size = n
    key = f"{kind}{digits}"
    little = order in ("<", "|") or (order == "" and size <= 1)
    name = _TORCH_NAMES.get(key) if little else None
    if name is not None and size > 1 and order == "|":
        name = None  # '|' only for single-byte types
    return Dtype(size, False, name or f"numpy:{escape(text, 40)}")


def _shape_count(shape: Any, what: str) -> int:
    dims = _shape(shape, what)
    count = 1
    for d in dims:
        count *= d
    return count


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if type(shape) is int:
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise NpyHeaderError(f"{what} is not a tuple of non-negative integers")
    if len(shape) > 64:
        raise NpyHeaderError(f"{what} has more than 64 dimensions")
    return shape


# --- header ------------------------------------------------------------------------------

def _filter_header(text: str) -> str:
    """numpy's ``_filter_header``: the header's tokens without the ``L`` that follows a
    number (Python 2 longs), untokenized."""
    tokens = []
    last_was_number = False
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if last_was_number and tok.type == tokenize.NAME and tok.string == "L":
            continue
        tokens.append(tok)
        last_was_number = tok.type == tokenize.NUMBER
    return tokenize.untokenize(tokens)


def _eval(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except SyntaxError:
        raise
    except (ValueError, TypeError, MemoryError, RecursionError) as e:
        raise NpyHeaderError(f"header holds a non-literal value ({type(e).__name__})") from None


def _literal(text: str, version: tuple[int, int]) -> dict[str, Any]:
    """The header dict as numpy's ``_read_array_header`` evaluates it."""
    try:
        value = _eval(text)
    except SyntaxError:
        if version > (2, 0):
            raise NpyHeaderError("header is not a Python literal (SyntaxError)") from None
        try:
            value = _eval(_filter_header(text))
        except (SyntaxError, tokenize.TokenError, ValueError, MemoryError,
                RecursionError) as e:
            raise NpyHeaderError(f"header is not a Python literal ({type(e).__name__})") \
                from None
    if not isinstance(value, dict):
        raise NpyHeaderError("header is not a dict literal")
    if value.keys() != KEYS:
        keys = sorted(escape(repr(k), 40) for k in value)
        raise NpyHeaderError("header keys must be exactly descr, fortran_order, shape (got "
                             f"{escape(', '.join(keys), 80)})")
    return value


def read_header(view: View, limits_header: int) -> NpyHeader:
    """Parse the header of the .npy in ``view``. Raises NpyHeaderError or LimitExceeded."""
    pre = view.read(0, 10, True)
    if len(pre) < 10 or not pre.startswith(MAGIC):
        raise NpyHeaderError("missing or truncated magic / version")
    version = (pre[6], pre[7])
    if version not in VERSIONS:
        raise NpyHeaderError(f"unsupported format version {version[0]}.{version[1]}")
    fmt, encoding = VERSIONS[version]
    width = struct.calcsize(fmt)
    raw_len = view.read(8, width, True)
    if len(raw_len) != width:
        raise NpyHeaderError("truncated header length")
    (hlen,) = struct.unpack(fmt, raw_len)
    start = 8 + width
    if start + hlen > view.size:
        raise NpyHeaderError(f"header length {hlen} runs past the end of the data")
    cap = min(limits_header, NPY_MAX_HEADER)
    if hlen > cap:
        raise LimitExceeded("max_header_bytes", cap, f".npy header of {hlen} bytes")
    raw = view.read(start, hlen, True)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        raise NpyHeaderError(f"header is not valid {encoding}") from None
    if "\x00" in text:
        raise NpyHeaderError("header holds NUL bytes")
    d = _literal(text, version)
    fortran = d["fortran_order"]
    if not isinstance(fortran, bool):
        raise NpyHeaderError("fortran_order is not a bool")
    raw_shape = d["shape"]
    # numpy: a tuple of int instances (bool is one); the data of an object array is
    # unpickled whatever the shape says
    if not isinstance(raw_shape, tuple) or not all(isinstance(x, int) for x in raw_shape):
        raise NpyHeaderError("shape is not a tuple of integers")
    dtype = parse_descr(d["descr"])
    if dtype.has_object:
        shape = tuple(int(x) for x in raw_shape)
    else:
        shape = _shape(tuple(int(x) for x in raw_shape), "shape")
    return NpyHeader(version, d["descr"], dtype, fortran, shape, start + hlen)


__all__ = ["KEYS", "MAGIC", "NPY_MAX_HEADER", "Dtype", "NpyHeader", "NpyHeaderError", "Reader",
           "View", "parse_descr", "read_header"]
