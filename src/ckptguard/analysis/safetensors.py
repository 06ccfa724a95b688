"""safetensors: validate the header without the safetensors library (the header itself is
parsed by ``readers/safetensors.py``).

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of UTF-8 JSON (an object:
tensor name -> ``{"dtype", "shape", "data_offsets"}``, plus an optional ``__metadata__``
string -> string map), then the data region, which the tensors' ``data_offsets`` (relative
to the data region) must cover exactly: sorted, contiguous, no gap, no overlap, nothing
after the last tensor.

The checks are at least as strict as the safetensors crate's own (``read_metadata`` and
``Metadata::validate``), so a file this module passes is one the loader reads the same way;
where the crate is lenient (duplicate keys, unknown fields, empty names) we refuse.
Only the header is read (and recorded for the same-bytes check); tensor data never is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from itertools import chain, islice, repeat
from operator import add, lt, mul, sub
from typing import Any

from .._native import native
from ..context import AuditContext, LimitExceeded
from ..model import TensorInfo
from ..primitives import escape
from ..readers.safetensors import HeaderError, parse_header, read_header_bytes, read_length

#: safetensors dtype -> (bits per element, torch dtype name). The crate's Dtype list.
DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (8, "bool"),
    "F4": (4, "float4_e2m1"),
    "F6_E2M3": (6, "float6_e2m3"),
    "F6_E3M2": (6, "float6_e3m2"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "C64": (64, "complex64"),
    "F64": (64, "float64"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
}

#: dtypes the crate knows that the Python binding (torch and numpy alike) refuses to load
#: ("Dtype not understood"): a file holding one loads nowhere in Python (CKG503)
BINDING_REFUSES = frozenset({"F6_E2M3", "F6_E3M2"})
#: dtypes the torch binding packs: F4 loads as ``float4_e2m1fn_x2``, two values a byte, the
#: last dimension halved (it must be even; numpy cannot load it at all)
PACKED = {"F4": "float4_e2m1fn_x2"}
#: the dtypes every fast path proves (the others go to the strict path, which explains)
PLAIN_DTYPES = {k: v for k, v in DTYPES.items() if k not in BINDING_REFUSES and k not in PACKED}
#: torch and numpy take dimensions as signed 64-bit integers (the crate as usize)
_I64 = (1 << 63) - 1

_METADATA = "__metadata__"
_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
#: the fields of a tensor entry in the order the safetensors library writes them
_FIELD_ORDER = ("dtype", "shape", "data_offsets")
_BITS = {k: bits for k, (bits, _) in PLAIN_DTYPES.items()}
_TORCH_DTYPE = {k: name for k, (_, name) in PLAIN_DTYPES.items()}
#: the fast path leaves headers to the strict parser when the C JSON scanner could recurse
#: deeper than this (the interpreter's recursion limit bounds it; see ``_fast_header``)
_FAST_MAX_RECURSION = 20_000
#: ``-0`` where a JSON number may start (after ``:``, ``[``, ``,`` or JSON white space);
#: inside a string (a name such as ``layer-0``) it is harmless, and only declines needlessly.
#: Seven substring searches cost ~1 ms on a 4 MB header, a regular expression ~40 ms.
_MINUS_ZERO = tuple(c + b"-0" for c in (b":", b"[", b",", b" ", b"\t", b"\n", b"\r"))
_U64 = (1 << 64) - 1
_MAX_METADATA_ITEMS = 64  # copied into Report.metadata (the rest is only counted)


def _is_uint(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _U64


def _crate_numel(shape: list[int]) -> int | None:
    """The element count as the crate computes it: the shape folded left to right with
    checked 64-bit multiplications, so a step that overflows refuses the file even when a
    later dimension is 0 (the exact product would be 0). None: it overflows."""
    numel = 1
    for d in shape:
        numel *= d
        if numel > _U64:
            return None
    return numel


def _strides_overflow(shape: list[int]) -> bool:
    """Does a tensor of ``shape`` without elements need a stride above 2**63-1? torch lays
    it out contiguously (each dimension counted as at least 1), and its largest stride, the
    first, is the product of the others: torch refuses it ("Stride calculation overflowed")
    whoever builds it, and the safetensors binding does too when the overflow is past the
    first zero dimension. A tensor with elements is bounded by its bytes in the file."""
    stride = 1
    for d in shape[1:]:
        stride *= d if d > 1 else 1
        if stride > _I64:
            return True
    return False


def _printable(name: str) -> bool:
    return bool(name) and name.isprintable()


def _utf8_clean(text: str) -> bool:
    """serde_json refuses lone surrogate escapes that Python's json accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def audit_safetensors(ctx: AuditContext) -> None:
    """Validate a safetensors file's header; record its tensors and metadata."""
    size = ctx.source.size
    src = ctx.source

    def read(offset: int, length: int) -> bytes:
        return src.read(offset, length, record=True)

    try:
        n = read_length(read, size)
        ctx.metadata["safetensors.header_bytes"] = str(n)
        data = read_header_bytes(read, size, n, max_header_bytes=ctx.limits.max_header_bytes)
        if _native_header(ctx, data, 8 + n, size) or _fast_header(ctx, data, 8 + n, size):
            return
        header = parse_header(data, n, max_json_depth=ctx.limits.max_json_depth)
    except HeaderError as e:
        ctx.add("CKG501", e.message, offset=e.offset, evidence=e.evidence)
        return
    del data
    if header.duplicates:
        keys = ", ".join(sorted({escape(k, 60) for k in header.duplicates}))
        ctx.add("CKG502", f"header JSON repeats keys: {escape(keys, 300)}", offset=8,
                evidence={"keys": escape(keys, 1000)})
    value = header.value
    if not isinstance(value, dict):
        ctx.add("CKG501", "header JSON is not an object", offset=8)
        return
    data_start = header.data_start
    _check_metadata(ctx, value.get(_METADATA, None), _METADATA in value)
    entries = [(k, v) for k, v in value.items() if k != _METADATA]
    if len(entries) > ctx.limits.max_tensors:
        raise LimitExceeded("max_tensors", ctx.limits.max_tensors,
                            f"{len(entries)} tensors in the header")
    ctx.metadata["safetensors.tensors"] = str(len(entries))
    spans: list[tuple[int, int, str]] = []
    tensors: list[TensorInfo] = []
    for name, info in entries:
        ctx.source.check_time()
        t = _check_tensor(ctx, name, info, data_start)
        if t is not None:
            spans.append((t.data_offset or 0, (t.data_offset or 0) + t.nbytes, name))
            tensors.append(t)
    if len(tensors) == len(entries):
        _check_layout(ctx, spans, data_start, size)
    tensors.sort(key=lambda t: (t.data_offset or 0, t.name))
    ctx.tensors.extend(tensors)


#: the native prover, once initialised with the TensorInfo class and the dtype table
_STCORE_READY: list[object] = []
#: the TensorInfo fields stcore.c fills (every one); any other layout disables the prover
STCORE_FIELDS = ("name", "dtype", "shape", "stride", "storage", "storage_offset", "nbytes",
                 "storage_nbytes", "data_offset", "device", "requires_grad", "file")


def _stcore() -> Any:
    """``_native/stcore.c`` initialised (None: not built, ``CKPTGUARD_PURE=1``, or a
    TensorInfo whose fields are not the ones the C code fills)."""
    core = native("stcore")
    if core is not None and core not in _STCORE_READY:
        if tuple(f.name for f in fields(TensorInfo)) != STCORE_FIELDS or \
                hasattr(TensorInfo, "__post_init__"):
            return None
        core.init(TensorInfo, tuple((k, bits, name) for k, (bits, name) in PLAIN_DTYPES.items()))
        _STCORE_READY.append(core)
    return core


def _plain_metadata(meta: Any) -> bool:
    """``__metadata__`` parsed with ``object_pairs_hook=tuple`` is a plain string map: no
    repeated key, strings only, no lone surrogate (which serde_json refuses)."""
    return type(meta) is tuple and len(dict(meta)) == len(meta) and \
        not set(map(type, chain.from_iterable(meta))) - {str} and \
        all(map(_utf8_clean, chain.from_iterable(meta)))


def _native_header(ctx: AuditContext, data: bytes, data_start: int, size: int) -> bool:
    """The plain header proven by the C prover (``_native/stcore.c``): True when it proved
    that the strict path records no finding, and then recorded exactly what the strict
    path records (the same tensors in the same order, the same metadata); False (nothing
    recorded) when the module is not built or declines, and ``_fast_header`` then the
    strict path run as before and explain.

    The C pass checks the whole grammar and every tensor and layout rule; the
    ``__metadata__`` object it only delimits (its strings may hold escapes and UTF-8): that
    span is decoded and parsed here and must be a plain string map (``_plain_metadata``)."""
    if ctx.limits.max_json_depth < 3:  # a proven header nests 3 deep
        return False
    core = _stcore()
    if core is None:
        return False
    got = core.prove(data, data_start, size, min(ctx.limits.max_tensors, sys.maxsize))
    if got is None:
        return False
    tensors, span, n = got
    meta: Any = None
    if span is not None:
        try:
            meta = json.loads(data[span[0]:span[1]].decode("utf-8"), object_pairs_hook=tuple)
        except ValueError:  # UnicodeDecodeError is a ValueError
            return False
        if not _plain_metadata(meta):
            return False
    ctx.source.check_time()
    _check_metadata(ctx, None if meta is None else dict(meta), meta is not None)
    ctx.metadata["safetensors.tensors"] = str(n)
    ctx.tensors.extend(tensors)
    return True


def _fast_header(ctx: AuditContext, data: bytes, data_start: int, size: int) -> bool:
    """The plain header, proven in a few C-speed passes over whole columns (no per-entry
    Python code): True when it recorded exactly what the strict path below records for
    it (the tensors in the same order, the same metadata, the layout finding if any);
    False when anything is unusual, and then the strict path parses again and explains.

    Accepted: UTF-8 JSON whose top level is an object without repeated keys; an optional
    ``__metadata__`` object of strings to strings without repeated keys or lone
    surrogates; every other value an object with exactly the keys dtype, shape,
    data_offsets in that order (the library's), a known dtype, a list of integers in
    0..2**64-1 for the shape, two such integers for the offsets spanning exactly the
    tensor's bytes, and a printable non-empty name. Such a header nests 3 deep, so the
    strict path's depth check passes whenever ``max_json_depth >= 3``. ``-0`` where a number
    may start declines (the C parser reads it as the integer 0, serde_json as a float), so
    does a recursion limit above ``_FAST_MAX_RECURSION`` (the C scanner's depth bound).

    Work stays linear in the header: integer literals are converted by the C parser (at
    most 4300 digits each, CPython's own bound; ~30 ns a byte for a header made of the
    longest ones, where the strict path stops at the first literal over 20 digits)."""
    if ctx.limits.max_json_depth < 3 or sys.getrecursionlimit() > _FAST_MAX_RECURSION or \
            (b"-0" in data and any(m in data for m in _MINUS_ZERO)):
        return False
    try:
        # objects become tuples of (key, value) pairs (arrays stay lists): repeated keys
        # stay visible and no Python code runs per value
        top = json.loads(data.decode("utf-8"), object_pairs_hook=tuple)
    except (ValueError, RecursionError, MemoryError):  # UnicodeDecodeError is a ValueError
        return False
    if type(top) is not tuple:
        return False
    # every column by slicing flat lists: [name0, info0, name1, info1, ...]
    flat: list[Any] = list(chain.from_iterable(top))
    del top
    names: list[str] = flat[0::2]
    infos: list[Any] = flat[1::2]
    del flat
    if len(set(names)) != len(names):
        return False  # a repeated key (CKG502)
    meta: Any = None
    if _METADATA in names:
        i = names.index(_METADATA)
        meta = infos[i]
        del names[i], infos[i]
        if not _plain_metadata(meta):
            return False
    n = len(names)
    if n > ctx.limits.max_tensors:
        return False  # the strict path raises the limit
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int, str]] | None = None  # None: laid out back to back, in order
    if n:
        if set(map(type, infos)) != {tuple} or set(map(len, infos)) != {3} or \
                "" in names or not all(map(str.isprintable, names)):
            return False
        # each entry: (("dtype", d), ("shape", s), ("data_offsets", o)) -> k d k s k o
        fields: list[Any] = list(chain.from_iterable(chain.from_iterable(infos)))
        del infos
        if fields[0::6].count(_FIELD_ORDER[0]) != n or \
                fields[2::6].count(_FIELD_ORDER[1]) != n or \
                fields[4::6].count(_FIELD_ORDER[2]) != n:
            return False
        dtypes, shapes, offsets = fields[1::6], fields[3::6], fields[5::6]
        del fields
        if set(map(type, dtypes)) != {str} or not set(dtypes) <= _BITS.keys() or \
                set(map(type, shapes)) != {list} or set(map(type, offsets)) != {list} or \
                set(map(len, offsets)) != {2}:
            return False
        dims = list(chain.from_iterable(shapes))
        if dims and (set(map(type, dims)) != {int} or min(dims) < 0 or max(dims) > _I64):
            return False
        numels = list(map(_crate_numel, shapes))
        if None in numels:
            return False  # the crate's product overflows on the way (the strict path says so)
        if 0 in numels and any(_strides_overflow(sh) for sh, n in zip(shapes, numels, strict=True)
                               if not n):
            return False  # no elements, but strides torch cannot hold (the strict path says so)
        bounds = list(chain.from_iterable(offsets))
        del offsets
        if set(map(type, bounds)) != {int}:
            return False
        begins, ends = bounds[0::2], bounds[1::2]
        del bounds
        if min(begins) < 0 or max(ends) > _U64:
            return False
        nbytes = list(map(sub, ends, begins))
        total_bits = list(map(mul, numels, map(_BITS.__getitem__, dtypes)))
        if min(nbytes) < 0 or max(total_bits) > _U64 or \
                list(map(mul, nbytes, repeat(8))) != total_bits:
            return False
        starts = list(map(add, begins, repeat(data_start)))
        tensors = list(map(TensorInfo, names, map(_TORCH_DTYPE.__getitem__, dtypes),
                           map(tuple, shapes), repeat(None), names, repeat(0), nbytes, nbytes,
                           starts))
        if all(map(lt, begins, islice(begins, 1, None))):  # the header lists them in order
            if begins[0] != 0 or ends[-1] != size - data_start or begins[1:] != ends[:-1]:
                spans = list(zip(starts, map(add, starts, nbytes), names, strict=True))
        else:
            order = sorted(zip(starts, names, range(n), strict=True))
            tensors = [tensors[i] for _, _, i in order]
            spans = sorted(zip(starts, map(add, starts, nbytes), names, strict=True))
            b, e, _ = zip(*spans, strict=True)
            if b[0] == data_start and e[-1] == size and b[1:] == e[:-1]:
                spans = None
    ctx.source.check_time()
    # every value proven: from here on the records are the strict path's
    _check_metadata(ctx, None if meta is None else dict(meta), meta is not None)
    ctx.metadata["safetensors.tensors"] = str(n)
    if spans is not None:
        _check_layout(ctx, spans, data_start, size)  # says which tensor, and how
    elif not n and data_start != size:
        _check_layout(ctx, [], data_start, size)
    ctx.tensors.extend(tensors)
    return True


def _check_metadata(ctx: AuditContext, meta: Any, present: bool) -> None:
    if not present:
        return
    if not isinstance(meta, dict):
        ctx.add("CKG505", f"__metadata__ is a {type(meta).__name__}, not an object", offset=8)
        return
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        keys = ", ".join(escape(k, 60) for k in sorted(bad)[:10])
        ctx.add("CKG505", f"__metadata__ values that are not strings: {keys}", offset=8,
                evidence={"keys": keys})
    unclean = [k for k, v in meta.items()
               if not _utf8_clean(k) or (isinstance(v, str) and not _utf8_clean(v))]
    if unclean:
        ctx.add("CKG501", "__metadata__ holds lone UTF-16 surrogate escapes, which the "
                "safetensors library refuses", offset=8)
    for k in sorted(meta)[:_MAX_METADATA_ITEMS]:
        v = meta[k]
        if isinstance(v, str):
            ctx.metadata[f"safetensors.metadata.{escape(k, 60)}"] = escape(v, 200)
    ctx.metadata["safetensors.metadata_items"] = str(len(meta))


def _check_tensor(ctx: AuditContext, name: str, info: Any, data_start: int) -> TensorInfo | None:
    # The fast path (a well-formed entry) does no escaping and no set arithmetic: this runs
    # once per tensor, 50,000 times for a large checkpoint.
    if (type(info) is dict and len(info) == 3 and type(name) is str and name.isprintable()
            and name):
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        spec = PLAIN_DTYPES.get(dtype) if type(dtype) is str else None
        if spec is not None and type(shape) is list and type(offsets) is list and \
                len(offsets) == 2:
            numel = 1
            ok = True
            for d in shape:
                if type(d) is not int or d < 0 or d > _I64:
                    ok = False
                    break
                numel *= d
                if numel > _U64:  # the crate's checked product overflows here
                    ok = False
                    break
            if ok and not numel and _strides_overflow(shape):
                ok = False
            begin, end = offsets
            if ok and type(begin) is int and type(end) is int and 0 <= begin <= end <= _U64:
                total_bits = numel * spec[0]
                if total_bits <= _U64 and not total_bits % 8 and end - begin == total_bits // 8:
                    return TensorInfo(name=name, dtype=spec[1], shape=tuple(shape),
                                      storage=name, nbytes=end - begin,
                                      storage_nbytes=end - begin,
                                      data_offset=data_start + begin)
    return _check_tensor_slow(ctx, name, info, data_start)


def _check_tensor_slow(ctx: AuditContext, name: str, info: Any,
                       data_start: int) -> TensorInfo | None:
    """Say precisely what is wrong with an entry the fast path did not accept."""
    shown = escape(name, 80)
    if not _printable(name):
        ctx.add("CKG506", f"tensor name {shown!r} is empty or holds control or non-printable "
                "characters", offset=8, evidence={"name": shown})
    if not isinstance(info, dict):
        ctx.add("CKG501", f"tensor {shown!r}: entry is a {type(info).__name__}, not an object",
                offset=8, evidence={"name": shown})
        return None
    extra = sorted(set(info) - _FIELDS)
    missing = sorted(_FIELDS - set(info))
    if extra or missing:
        ctx.add("CKG501", f"tensor {shown!r}: fields must be exactly dtype, shape, data_offsets"
                f" (missing: {', '.join(missing) or '-'}; extra: "
                f"{escape(', '.join(extra), 80) or '-'})", offset=8, evidence={"name": shown})
        return None
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        shown_dtype = escape(dtype if isinstance(dtype, str) else repr(dtype), 40)
        ctx.add("CKG503", f"tensor {shown!r}: unknown dtype {shown_dtype!r}", offset=8,
                evidence={"name": shown, "dtype": shown_dtype})
        return None
    if dtype in BINDING_REFUSES:
        ctx.add("CKG503", f"tensor {shown!r}: dtype {dtype} is in the safetensors crate's list, "
                "but its Python binding (torch and numpy) refuses it: no Python program "
                "loads this file", offset=8, evidence={"name": shown, "dtype": dtype})
        return None
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        ctx.add("CKG501", f"tensor {shown!r}: shape is not a list of non-negative integers",
                offset=8, evidence={"name": shown})
        return None
    if any(d > _I64 for d in shape):
        ctx.add("CKG501", f"tensor {shown!r}: a dimension above 2**63-1, which torch and numpy "
                "cannot hold (they refuse the tensor)", offset=8, evidence={"name": shown})
        return None
    if dtype in PACKED and (not shape or shape[-1] % 2):
        ctx.add("CKG503", f"tensor {shown!r}: {dtype} loads in torch as {PACKED[dtype]}, two "
                "values a byte, which needs an even last dimension (the binding refuses "
                f"shape {escape(str(shape), 80)})", offset=8,
                evidence={"name": shown, "dtype": dtype})
        return None
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_uint(o) for o in offsets)):
        ctx.add("CKG504", f"tensor {shown!r}: data_offsets is not a pair of non-negative "
                "integers", offset=8, evidence={"name": shown})
        return None
    begin, end = offsets
    bits, torch_name = DTYPES[dtype]
    numel = _crate_numel(shape)
    if numel is None:
        ctx.add("CKG504", f"tensor {shown!r}: shape {escape(str(shape), 80)} overflows 64 bits "
                "as the safetensors crate multiplies it (left to right, checked): the library "
                "refuses the file", offset=8, evidence={"name": shown})
        return None
    if not numel and _strides_overflow(shape):
        ctx.add("CKG504", f"tensor {shown!r}: shape {escape(str(shape), 80)} has no elements "
                "but its contiguous strides overflow 64 bits: torch refuses to build it "
                "(\"Stride calculation overflowed\"), in the binding and in every loader",
                offset=8, evidence={"name": shown})
        return None
    total_bits = numel * bits
    if total_bits > _U64 or total_bits % 8:
        ctx.add("CKG504", f"tensor {shown!r}: shape {shape} of {dtype} is not a whole number "
                "of bytes or overflows", offset=8, evidence={"name": shown})
        return None
    nbytes = total_bits // 8
    if end < begin or end - begin != nbytes:
        ctx.add("CKG504", f"tensor {shown!r}: shape {escape(str(shape), 80)} x {dtype} is "
                f"{nbytes} bytes but data_offsets span {begin}..{end}", offset=8,
                evidence={"name": shown, "expected_bytes": str(nbytes),
                          "span": f"{begin}..{end}"})
        return None
    if dtype in PACKED:  # what the torch binding builds: two values per element
        torch_name, shape = PACKED[dtype], [*shape[:-1], shape[-1] // 2]
    return TensorInfo(
        name=name,
        dtype=torch_name,
        shape=tuple(shape),
        storage=name,
        nbytes=nbytes,
        storage_nbytes=nbytes,
        data_offset=data_start + begin,
    )


def _check_layout(ctx: AuditContext, spans: list[tuple[int, int, str]], data_start: int,
                  size: int) -> None:
    """Sorted by offset, each tensor must start where the previous ended, from 0 to the end
    of the data region."""
    expected = data_start
    for begin, end, name in sorted(spans):
        if begin != expected:
            what = "overlaps the previous tensor" if begin < expected else "leaves a gap"
            ctx.add("CKG504", f"tensor {escape(name, 80)!r} at data offset "
                    f"{begin - data_start} {what} (expected {expected - data_start})",
                    offset=begin, evidence={"name": escape(name, 80)})
            return
        expected = end
    if expected != size:
        if expected < size:
            ctx.add("CKG504", f"{size - expected} bytes after the last tensor are covered by "
                    "no tensor (hidden trailing data)", offset=expected,
                    evidence={"trailing_bytes": str(size - expected)})
        else:
            ctx.add("CKG504", f"tensors extend {expected - size} bytes past the end of the file",
                    offset=size, evidence={"missing_bytes": str(expected - size)})


__all__ = ["BINDING_REFUSES", "DTYPES", "PACKED", "PLAIN_DTYPES", "audit_safetensors"]
