"""Seeded safetensors files for the C header prover's differential tests and its ASan fuzz
target (tests/test_stcore.py, fuzz/native/fuzz_stcore.py).

``plain(rng)`` writes a header as the safetensors library does (ASCII names, known dtypes,
tensors back to back, optional ``__metadata__``), in one of several JSON layouts (compact,
spaced, indented, padded); ``mutate(rng, blob)`` applies one hostile or odd edit: repeated
keys, escapes, reordered / overlapping / gapped offsets, bad dtypes, overflowing shapes,
unicode names, white space variants, truncations, trailing garbage, deep metadata, number
forms, byte flips. ``audit(blob, mode, limits)`` runs ``audit_safetensors`` and returns
everything it recorded.
"""

from __future__ import annotations

import json
import os
import random
import struct
from typing import Any

from ckptguard.analysis import safetensors as st_audit
from ckptguard.context import AuditContext, LimitExceeded, Source
from ckptguard.policy import DEFAULT_LIMITS, Limits, Policy

DTYPE_NAMES = sorted(st_audit.PLAIN_DTYPES)
U64 = (1 << 64) - 1
I64 = (1 << 63) - 1


def _name(rng: random.Random, i: int) -> str:
    base = rng.choice(["w", "layer.{}.weight", "blocks.{}.sub_3.bias", "model/{}/kernel",
                       "x-{}", "a b {}", "t{}", "~{}!", "Z{}"])
    return base.format(i) if "{}" in base else f"{base}{i}"


def contiguous_offsets(sizes: list[int], order: list[int]) -> dict[int, tuple[int, int]]:
    """``{tensor index: (begin, end)}`` laying the tensors out back to back in ``order``
    (what a valid safetensors data section is)."""
    offs: dict[int, tuple[int, int]] = {}
    pos = 0
    for k in order:
        offs[k] = (pos, pos + sizes[k])
        pos += sizes[k]
    return offs


def whole_bytes(shape: list[int], bits: int) -> tuple[list[int], int]:
    """``shape`` (a trailing 8 added when its elements do not fill whole bytes) and the
    tensor's byte count, for a dtype of ``bits`` bits an element."""
    numel = 1
    for d in shape:
        numel *= d
    if numel * bits % 8:
        shape = [*shape, 8] if shape else [8]
        numel *= 8
    return shape, numel * bits // 8


def plain_header(rng: random.Random, n: int | None = None) -> tuple[dict[str, Any], int]:
    """A header the prover must prove (as a dict, in its key order) and its data length."""
    if n is None:
        n = rng.choice([0, 1, 2, 3, 5, 8, 20, 60])
    tensors: list[tuple[str, str, list[int], int]] = []
    names: set[str] = set()
    for i in range(n):
        dt = rng.choice(DTYPE_NAMES)
        bits = st_audit.DTYPES[dt][0]
        shape = [rng.choice([0, 1, 2, 3, 4, 8, 16]) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        if rng.random() < 0.03:
            # no elements with the largest dimensions torch holds: the crate's fold stays 0,
            # and the first stride (the product of the others) is at most 2**63-1
            shape = rng.choice([[0, I64], [I64, 0], [0, 1, I64], [I64, 0, I64]])
        shape, nbytes = whole_bytes(shape, bits)
        name = _name(rng, i)
        while name in names:
            name += "_"
        names.add(name)
        tensors.append((name, dt, shape, nbytes))
    order = list(range(n))
    how = rng.random()
    if how < 0.4:
        order.sort(key=lambda k: tensors[k][0])  # the library: sorted by name
    elif how < 0.7:
        rng.shuffle(order)
    offs = contiguous_offsets([t[3] for t in tensors], order)
    pos = sum(t[3] for t in tensors)  # the data section's length
    header: dict[str, Any] = {}
    meta_first = rng.random() < 0.7
    meta: dict[str, str] | None = None
    if rng.random() < 0.5:
        meta = {"format": rng.choice(["pt", "np", "tf"])}
        r = rng.random()
        if r < 0.15:
            meta["note"] = "ü\"x\\y\n\t/日本 \U0001f600"
        elif r < 0.25:
            meta["blob"] = json.dumps({"a": [1, 2, {"b": "c"}]})
        elif r < 0.3:
            meta = {}
    if meta is not None and meta_first:
        header["__metadata__"] = meta
    keys = list(range(n))
    key_order = rng.random()
    if key_order < 0.4:
        keys.sort(key=lambda k: tensors[k][0])
    elif key_order < 0.7:
        keys.sort(key=lambda k: offs[k])
    else:
        rng.shuffle(keys)
    for k in keys:
        name, dt, shape, _ = tensors[k]
        fields = [("dtype", dt), ("shape", shape), ("data_offsets", list(offs[k]))]
        if rng.random() < 0.1:
            rng.shuffle(fields)  # any order of the three fields is the same entry
        header[name] = dict(fields)
    if meta is not None and not meta_first:
        header["__metadata__"] = meta
    return header, pos


def encode(header: Any, data_len: int, rng: random.Random) -> bytes:
    """The file: length, header JSON in one of several layouts, padding, data."""
    style = rng.randrange(6)
    ensure_ascii = rng.random() < 0.5
    if style == 0:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=ensure_ascii)
    elif style == 1:
        raw = json.dumps(header, ensure_ascii=ensure_ascii)
    elif style == 2:
        raw = json.dumps(header, indent=rng.choice([1, 2, "\t", "\r\n"]),
                         ensure_ascii=ensure_ascii)
    else:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=ensure_ascii)
    data = raw.encode("utf-8")
    pad = rng.random()
    if pad < 0.6:
        data += b" " * ((8 - len(data) % 8) % 8)  # the library's padding
    elif pad < 0.7:
        data += bytes(rng.choice(b" \t\n\r") for _ in range(rng.randrange(1, 9)))
    return struct.pack("<Q", len(data)) + data + bytes(data_len)


def plain(rng: random.Random, n: int | None = None) -> bytes:
    header, data_len = plain_header(rng, n)
    return encode(header, data_len, rng)


def split(blob: bytes) -> tuple[bytes, bytes]:
    n = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
    return blob[8:8 + n], blob[8 + n:]


def join(header: bytes, rest: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + rest


_NUMBERS = [b"-0", b"-1", b"0.0", b"1.5", b"1e3", b"1E0", b"01", b"00", b"+1", b"-",
            b"18446744073709551615", b"18446744073709551616", b"99999999999999999999999",
            b"4294967296", b"true", b"null", b"NaN", b"Infinity", b'"4"', b"[]", b"{}"]
_SPLICES = [b"-0", b"1.5", b"NaN", b"true", b"null", b"{}", b"[]", b'""', b'"\\ud800"',
            b"[[1]]", b'{"a":{"b":{"c":[1]}}}', b'"dtype"', b",", b"}", b"]", b"\x00",
            b"\xff", b" ", b"\\", b'"', b"\\u0041", b"\xc3\xa9", b"\xed\xa0\x80", b"\x0b",
            b"\x0c", b"\xc2\xa0"]
_WS = [b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\xc2\xa0", b"\x00", b"\xe2\x80\x8b"]


def _json_edit(rng: random.Random, header: bytes, rest: bytes) -> bytes | None:
    try:
        h = json.loads(header)
    except (ValueError, RecursionError):
        return None
    if not isinstance(h, dict):
        return None
    names = [k for k in h if k != "__metadata__" and isinstance(h[k], dict)]
    change = rng.randrange(16)
    if change == 0 and len(names) > 1:  # two tensors swap offsets
        a, b = rng.sample(names, 2)
        h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]
    elif change == 1 and len(names) > 1:  # overlap
        a, b = rng.sample(names, 2)
        h[a]["data_offsets"] = list(h[b].get("data_offsets", [0, 0]))
    elif change == 2 and names:  # a gap (and a shape that no longer matches)
        k = rng.choice(names)
        o = h[k].get("data_offsets")
        if isinstance(o, list) and len(o) == 2:
            h[k]["data_offsets"] = [o[0] + rng.choice([1, 8]), o[1] + rng.choice([0, 1, 8])]
    elif change == 3 and names:  # a bad dtype
        h[rng.choice(names)]["dtype"] = rng.choice(["F128", "f32", "", "BOOL ", "F16\u0000",
                                                    "I 8", 5, None, ["F32"]])
    elif change == 4 and names:  # an overflowing shape
        k = rng.choice(names)
        h[k]["shape"] = rng.choice([[U64, 2], [1 << 32, 1 << 32], [U64 + 1], [1 << 62, 1 << 62],
                                    [1 << 61], [U64], [3, 1 << 63]])
    elif change == 5 and names:  # a unicode, empty or unprintable name
        k = rng.choice(names)
        h[rng.choice(["é", "日本", "", "a\nb", "\x7f", "\u200b", "a\u00a0b", "\ud800",
                      "__metadata__ ", "a\\b", 'a"b'])] = h.pop(k)
    elif change == 6:  # metadata deep, or not a string map
        if rng.random() < 0.4:  # written by hand: json.dumps would recurse
            depth = rng.choice([2, 3, 10, 200, 3000])
            opens = "".join(rng.choice(['[', '{"k":']) for _ in range(depth))
            closes = "".join("]" if c == "[" else "}" for c in opens if c in "[{")[::-1]
            h["__metadata__"] = "\0DEEP"
            raw = json.dumps(h, separators=(",", ":")).replace(
                '"\\u0000DEEP"', '{"a":' + opens + '"x"' + closes + "}")
            return join(raw.encode(), rest)
        h["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"a": None}, {"a": ["x"]},
                                        {"\ud800": "x"}, {"a": "\udc00"}, None, {"a": True}])
    elif change == 7 and names:  # an extra or a missing field
        k = rng.choice(names)
        if rng.random() < 0.5:
            h[k][rng.choice(["extra", "dtype ", "Dtype"])] = 1
        else:
            h[k].pop(rng.choice(["dtype", "shape", "data_offsets"]), None)
    elif change == 8 and names:  # a zero-length tensor somewhere
        k = rng.choice(names)
        o = h[k].get("data_offsets", [0, 0])
        b = o[rng.randrange(2)] if isinstance(o, list) and len(o) == 2 else 0
        h["zero." + str(k)] = {"dtype": "F32", "shape": [rng.choice([0, 1])],
                               "data_offsets": [b, b]}
    elif change == 9 and names:  # shape and offsets of other types
        k = rng.choice(names)
        h[k][rng.choice(["shape", "data_offsets"])] = rng.choice(
            [{}, [True], [1.0], [-1], "4", None, [[1]], [0, 0, 0], [0]])
    elif change == 10 and names:  # the entry itself of another type
        h[rng.choice(names)] = rng.choice([[], "x", 1, None, {}])
    elif change == 11:  # the data region too long or too short
        rest = rest + bytes(rng.randrange(1, 9)) if rng.random() < 0.5 or not rest else \
            rest[:-rng.randrange(1, len(rest) + 1)]
    elif change == 12:  # metadata with escapes (proven: plain strings after decoding)
        h["__metadata__"] = {"a\\b": "\"q\"", "tab": "\t\b\f\u0001", "u": "\u00e9\U0001f600",
                             "z": "\u0000"}
    elif change == 13 and names:  # a key of the entry spelled with an escape
        raw = json.dumps(h, separators=(",", ":")).encode()
        raw = raw.replace(b'"dtype"', rng.choice([b'"dt\\u0079pe"', b'"dtype\\u0000"']), 1)
        return join(raw, rest)
    else:
        return None
    return join(json.dumps(h, separators=(",", ":")).encode(), rest)


def mutate(rng: random.Random, blob: bytes) -> bytes:
    """One edit of a file (the result may still be plain: the prover must then prove it)."""
    header, rest = split(blob)
    hb = bytearray(header)
    kind = rng.randrange(14)
    if kind == 0 and hb:  # flip a byte
        hb[rng.randrange(len(hb))] = rng.randrange(256)
    elif kind == 1 and hb:  # splice a token
        i = rng.randrange(len(hb))
        hb[i:min(len(hb), i + rng.randrange(1, 4))] = rng.choice(_SPLICES)
    elif kind == 2 and hb:  # a number in another form
        digits = [i for i, c in enumerate(hb) if 0x30 <= c <= 0x39 and hb[i - 1:i] in
                  (b"[", b",", b" ", b":")]
        if digits:
            i = rng.choice(digits)
            j = i
            while j < len(hb) and 0x30 <= hb[j] <= 0x39:
                j += 1
            hb[i:j] = rng.choice(_NUMBERS)
    elif kind == 3 and hb:  # white space of another kind between two tokens
        spots = [i for i, c in enumerate(hb) if c in b",:[]{}"]
        if spots:
            i = rng.choice(spots) + rng.randrange(2)
            hb[i:i] = rng.choice(_WS) * rng.randrange(1, 3)
    elif kind == 4 and hb:  # truncated header (the length field follows, or not)
        cut = rng.randrange(len(hb))
        if rng.random() < 0.5:
            return join(bytes(hb[:cut]), rest)
        return blob[:8 + cut]
    elif kind == 5:  # trailing garbage after the object
        hb += rng.choice([b"x", b"}", b"\x00", b" ", b"{}", b",", b"]", b"\n\r\t ", b"\xff",
                          b"[" * 100])
    elif kind == 6:  # a repeated key, by hand
        try:
            h = json.loads(header)
        except (ValueError, RecursionError):
            return blob
        if not isinstance(h, dict) or not h:
            return blob
        k = rng.choice(list(h))
        inner = h[k]
        if rng.random() < 0.5 and isinstance(inner, dict) and inner:  # inside an entry
            f = rng.choice(list(inner))
            v = json.dumps(inner[f], separators=(",", ":"))
            body = json.dumps(inner, separators=(",", ":"))
            inner_raw = body[:-1] + ("," if len(inner) else "") + json.dumps(f) + ":" + v + "}"
            raw = json.dumps({**h, k: "\0MARK"}, separators=(",", ":")).replace(
                '"\\u0000MARK"', inner_raw)
        else:
            raw = json.dumps(h, separators=(",", ":"))
            raw = raw[:-1] + "," + json.dumps(k) + ":" + json.dumps(
                h[k], separators=(",", ":")) + "}"
        return join(raw.encode(), rest)
    elif kind == 7:  # the length field off by a little
        return struct.pack("<Q", max(0, len(hb) + rng.choice([-2, -1, 1, 8]))) + bytes(hb) + \
            rest
    elif kind == 8 and hb:  # delete a byte
        del hb[rng.randrange(len(hb))]
    else:
        try:
            out = _json_edit(rng, header, rest)
        except (LookupError, TypeError, ValueError, RecursionError):
            out = None  # an earlier edit left a shape this one cannot edit
        return blob if out is None else out
    return join(bytes(hb), rest)


def audit(blob: bytes, mode: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Everything ``audit_safetensors`` recorded. mode: ``native`` (the audit as it runs:
    the C prover, then the Python fast path, then the strict parser), ``pure``
    (``CKPTGUARD_PURE=1``), ``python`` (the Python fast path and the strict parser) or
    ``strict`` (the strict parser alone). ``proven``: the C prover proved the header."""
    proven: list[bool] = []
    real_native, real_fast = st_audit._native_header, st_audit._fast_header

    def spy(*a: Any) -> bool:
        ok = real_native(*a) if mode in ("native", "pure") else False
        proven.append(ok)
        return ok

    old_env = os.environ.get("CKPTGUARD_PURE")
    os.environ["CKPTGUARD_PURE"] = "1" if mode == "pure" else "0"
    st_audit._native_header = spy  # type: ignore[assignment]
    if mode == "strict":
        st_audit._fast_header = lambda *a: False  # type: ignore[assignment]
    try:
        ctx = AuditContext("x.safetensors", Source.from_bytes(blob), Policy(), limits)
        try:
            st_audit.audit_safetensors(ctx)
        except LimitExceeded as e:
            ctx.limit_hit(e)
    finally:
        st_audit._native_header = real_native  # type: ignore[assignment]
        st_audit._fast_header = real_fast  # type: ignore[assignment]
        if old_env is None:
            os.environ.pop("CKPTGUARD_PURE", None)
        else:
            os.environ["CKPTGUARD_PURE"] = old_env
    return {
        "findings": [f.to_dict() for f in ctx.findings],
        "problems": [p.to_dict() for p in ctx.problems],
        "tensors": [t.to_dict() for t in ctx.tensors],
        "tensor_types": sorted({type(t).__name__ for t in ctx.tensors}),
        "metadata": dict(ctx.metadata),
        "metadata_order": list(ctx.metadata),
        "bytes_read": ctx.source.bytes_read,
        "proven": bool(proven and proven[0]),
    }


def random_limits(rng: random.Random) -> Limits:
    return DEFAULT_LIMITS.replace(max_tensors=rng.choice([0, 1, 2, 5, 100]),
                                  max_json_depth=rng.choice([2, 3, 4, 64]))


__all__ = ["DTYPE_NAMES", "audit", "encode", "join", "mutate", "plain", "plain_header",
           "random_limits", "split"]


def three_ways(blob: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bool, dict[str, Any],
                                                                      dict[str, Any],
                                                                      dict[str, Any]]:
    """(the C prover proved it, then the native, pure and strict audits' records without
    their ``proven`` flags): the three must be equal."""
    nat, pure, strict = (audit(blob, mode, limits) for mode in ("native", "pure", "strict"))
    proven = nat.pop("proven")
    pure.pop("proven")
    strict.pop("proven")
    return bool(proven), nat, pure, strict
