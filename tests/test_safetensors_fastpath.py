"""The safetensors header fast path (``analysis/safetensors.py::_fast_header``) proves only
what the strict path accepts, and records exactly what the strict path records.

Differential: every fixture, and 12,000 seeded generated headers (canonical ones as the
safetensors library writes them and mutants of them), audited with and without the fast
path: the same findings (rule, message, location, evidence), tensor records in the same
order, metadata, limit hits and bytes read.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from ckg_st_headers import contiguous_offsets, whole_bytes

import ckptguard
from ckptguard.analysis import safetensors as st_audit
from ckptguard.context import AuditContext, LimitExceeded, Source
from ckptguard.model import Verdict
from ckptguard.policy import DEFAULT_LIMITS, Limits, Policy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DTYPE_NAMES = sorted(st_audit.PLAIN_DTYPES)


def _audit(blob: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch,
           limits: Limits = DEFAULT_LIMITS) -> tuple[dict[str, Any], bool]:
    """(everything the audit recorded, whether the fast path proved the header)."""
    used: list[bool] = []
    real = st_audit._fast_header

    def spy(*a: Any) -> bool:
        ok = real(*a) if fast else False
        used.append(ok)
        return ok

    with monkeypatch.context() as m:
        m.setattr(st_audit, "_fast_header", spy)
        # this file pins the Python fast path; the C prover in front of it has its own
        # differential (tests/test_stcore.py)
        m.setattr(st_audit, "_native_header", lambda *a: False)
        ctx = AuditContext("x.safetensors", Source.from_bytes(blob), Policy(), limits)
        try:
            st_audit.audit_safetensors(ctx)
        except LimitExceeded as e:
            ctx.limit_hit(e)
    rec = {
        "findings": [f.to_dict() for f in ctx.findings],
        "problems": [p.to_dict() for p in ctx.problems],
        "tensors": [t.to_dict() for t in ctx.tensors],
        "metadata": dict(ctx.metadata),
        "bytes_read": ctx.source.bytes_read,
    }
    return rec, bool(used and used[0])


def _same(blob: bytes, monkeypatch: pytest.MonkeyPatch, limits: Limits = DEFAULT_LIMITS
          ) -> bool:
    fast, proved = _audit(blob, True, monkeypatch, limits)
    slow, _ = _audit(blob, False, monkeypatch, limits)
    assert fast == slow, blob[:300]
    if proved:  # the fast path proves only headers without a finding of their own
        assert all(f["rule_id"] == "CKG504" for f in fast["findings"]), fast["findings"]
    return proved


# --- generated headers ---------------------------------------------------------------------

def _name(rng: random.Random, i: int) -> str:
    base = rng.choice(["w", "layer.{}.weight", "blocks.{}.attn.bias", "émbed.{}", "x-{}",
                       "a b {}", "k\\{}", "q\"{}", "日本{}", "n/{}"])
    return base.format(i) if "{}" in base else f"{base}{i}"


def canonical(rng: random.Random) -> tuple[dict[str, Any], int]:
    """A header as safetensors writes it (random names, dtypes, shapes, optional
    metadata, tensors laid out back to back in a random order) and its data length."""
    n = rng.choice([0, 1, 2, 3, 5, 8, 20])
    tensors: list[tuple[str, str, list[int], int]] = []
    for i in range(n):
        dt = rng.choice(DTYPE_NAMES)
        bits = st_audit.DTYPES[dt][0]
        shape = [rng.choice([0, 1, 2, 3, 4, 8]) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        shape, nbytes = whole_bytes(shape, bits)
        tensors.append((_name(rng, i), dt, shape, nbytes))
    order = list(range(n))
    rng.shuffle(order)
    offs = contiguous_offsets([t[3] for t in tensors], order)
    pos = sum(t[3] for t in tensors)  # the data section's length
    header: dict[str, Any] = {}
    if rng.random() < 0.5:
        header["__metadata__"] = {"format": rng.choice(["pt", "np", "tf"]),
                                  **({"note": "ü\\\"x"} if rng.random() < 0.3 else {})}
    keys = list(range(n))
    if rng.random() < 0.5:
        keys.sort(key=lambda k: tensors[k][0])
    for k in keys:
        name, dt, shape, _ = tensors[k]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": list(offs[k])}
    return header, pos


def encode(header: dict[str, Any], data_len: int, rng: random.Random) -> bytes:
    raw = json.dumps(header, separators=(",", ":"),
                     ensure_ascii=rng.random() < 0.5).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(data_len)


_SPLICES = [b"-0", b"-1", b"1.5", b"1e3", b"NaN", b"true", b"null", b"{}", b"[]", b'""',
            b"99999999999999999999999", b'"\\ud800"', b"[[1]]", b'{"a":{"b":{"c":[1]}}}',
            b'"dtype"', b",", b"}", b"]", b"\x00", b"\xff", b" "]


def mutate(blob: bytes, rng: random.Random) -> bytes:
    n = struct.unpack("<Q", blob[:8])[0]
    header, rest = bytearray(blob[8:8 + n]), blob[8 + n:]
    kind = rng.randrange(7)
    if kind == 0 and header:  # flip a byte
        header[rng.randrange(len(header))] = rng.randrange(256)
    elif kind == 1 and header:  # splice a token in place of a number or string
        i = rng.randrange(len(header))
        j = min(len(header), i + rng.randrange(1, 4))
        header[i:j] = rng.choice(_SPLICES)
    elif kind == 2:  # data region too long or too short
        rest = rest + bytes(rng.randrange(1, 9)) if rng.random() < 0.5 or not rest else \
            rest[:-1]
    elif kind == 3 and header:  # delete a byte
        del header[rng.randrange(len(header))]
    elif kind == 4:  # length field off by a little
        return struct.pack("<Q", max(0, n + rng.choice([-2, -1, 1, 8]))) + bytes(header) + rest
    else:  # a structural change through JSON
        try:
            h = json.loads(bytes(header))
        except ValueError:
            return blob
        return _edit(h, rest, rng)
    return struct.pack("<Q", len(header)) + bytes(header) + rest


def _edit(h: dict[str, Any], rest: bytes, rng: random.Random) -> bytes:
    names = [k for k in h if k != "__metadata__"]
    change = rng.randrange(10)
    if change == 0 and names:  # keys in another order (the library never writes it)
        k = rng.choice(names)
        h[k] = dict(reversed(list(h[k].items())))
    elif change == 1 and names:  # an extra field
        h[rng.choice(names)]["extra"] = 1
    elif change == 2 and len(names) > 1:  # overlapping offsets
        a, b = rng.sample(names, 2)
        h[a]["data_offsets"] = list(h[b]["data_offsets"])
    elif change == 3:  # metadata that is not a string map
        h["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"a": None}, {"\ud800": "x"}])
    elif change == 4 and names:  # an unprintable or empty name
        k = rng.choice(names)
        h[rng.choice(["", "a\nb", "\x7f", "\u200b"])] = h.pop(k)
    elif change == 5 and names:  # a shape that does not match the span
        k = rng.choice(names)
        h[k]["shape"] = [*h[k]["shape"], 2]
    elif change == 6 and names:  # a shape of another type
        h[rng.choice(names)]["shape"] = rng.choice([{}, [True], [1.0], [-1], [2**64], "4"])
    elif change == 7:  # a repeated key, written by hand
        raw = json.dumps(h).encode()
        if names:
            k = json.dumps(rng.choice(names)).encode()
            raw = raw[:-1] + b"," + k + b":" + json.dumps(h[json.loads(k)]).encode() + b"}"
        return struct.pack("<Q", len(raw)) + raw + rest
    elif change == 8 and names:  # a zero-length tensor beside another
        k = rng.choice(names)
        b = h[k]["data_offsets"][0]
        h["zero." + k] = {"dtype": "F32", "shape": [0], "data_offsets": [b, b]}
    else:  # an unknown dtype
        if names:
            h[rng.choice(names)]["dtype"] = rng.choice(["F128", "f32", "", "BOOL "])
    raw = json.dumps(h).encode()
    return struct.pack("<Q", len(raw)) + raw + rest


@pytest.mark.slow
def test_generated_headers_fast_equals_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1313)
    proved_canonical = proved_mutant = mutants = 0
    for _ in range(2000):
        header, data_len = canonical(rng)
        blob = encode(header, data_len, rng)
        assert _same(blob, monkeypatch), header  # every canonical header is proven
        proved_canonical += 1
        for _ in range(5):
            mutants += 1
            proved_mutant += _same(mutate(blob, rng), monkeypatch)
    assert proved_canonical == 2000
    # the mutants exercise both paths: many decline, some (harmless edits) are proven
    assert 0 < proved_mutant < mutants * 0.9, (proved_mutant, mutants)


def test_every_canonical_header_is_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    for _ in range(200):
        header, data_len = canonical(rng)
        rec, proved = _audit(encode(header, data_len, rng), True, monkeypatch)
        assert proved and rec["findings"] == [], header


# --- targeted declines: the strict path explains (verdict and rule) -------------------------

def _file(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(("header", "data", "rule"), [
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}', b"\0" * 4,
                 "CKG504", id="minus-zero-offset"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[\n-0,4]}}', b"\0" * 4,
                 "CKG504", id="minus-zero-after-newline"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[ -0 , 4]}}', b"\0" * 4,
                 "CKG504", id="minus-zero-after-space"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32",'
                 b'"shape":[-0],"data_offsets":[4,4]}}', b"\0" * 4, "CKG501",
                 id="minus-zero-dim"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,123456789012345678901]}}',
                 b"\0" * 4, "CKG501", id="21-digit-offset"),
    pytest.param(b'{"a":{"dtype":"F32","shape":{},"data_offsets":[0,4]}}', b"\0" * 4,
                 "CKG501", id="empty-object-shape"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":{}}}', b"\0" * 4,
                 "CKG504", id="empty-object-offsets"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                 b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4,
                 "CKG502", id="repeated-tensor"),
    pytest.param(b'{"__metadata__":{"k":"v","k":"w"}}', b"", "CKG502", id="repeated-meta"),
    pytest.param(b'{"__metadata__":{"k":1}}', b"", "CKG505", id="meta-int"),
    pytest.param(b'{"__metadata__":{"k":"\\ud800"}}', b"", "CKG501", id="meta-surrogate"),
    pytest.param(b'{"a\\n":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4,
                 "CKG506", id="unprintable-name"),
    pytest.param(b'{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4,
                 "CKG506", id="empty-name"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', b"\0" * 4,
                 "CKG501", id="bool-dim"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":'
                 b'{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4,
                 "CKG504", id="overlap"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 5,
                 "CKG504", id="trailing-bytes"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' + b"[" * 100,
                 b"", "CKG501", id="trailing-garbage"),
    pytest.param(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}", b"", "CKG501", id="deep"),
    pytest.param(b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}', b"\0",
                 "CKG503", id="half-byte"),  # torch packs F4 in pairs: an odd last dim
    pytest.param(b'{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', b"\0" * 3,
                 "CKG503", id="f6-binding-refuses"),
    pytest.param(b'{"a":{"dtype":"F64","shape":[4294967296,4294967296,0],'
                 b'"data_offsets":[0,0]}}', b"", "CKG504", id="overflow-before-zero"),
    pytest.param(b'{"a":{"dtype":"F32","shape":[0,9223372036854775808],'
                 b'"data_offsets":[0,0]}}', b"", "CKG501", id="dim-over-i64"),
])
def test_declined_headers_get_the_strict_finding(header: bytes, data: bytes, rule: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    blob = _file(header, data)
    _same(blob, monkeypatch)
    p = tmp_path / "m.safetensors"
    p.write_bytes(blob)
    r = ckptguard.scan(p)
    assert r.verdict is not Verdict.SAFE and rule in r.rule_ids(), (r.verdict, r.rule_ids())


def test_limits_apply_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    header, data_len = {}, 0
    while len([k for k in header if k != "__metadata__"]) < 3:
        header, data_len = canonical(rng)
    blob = encode(header, data_len, rng)
    for limits in (Limits(max_tensors=2), Limits(max_json_depth=2), Limits(max_json_depth=3)):
        _same(blob, monkeypatch, limits)
    rec, proved = _audit(blob, True, monkeypatch, Limits(max_tensors=2))
    assert not proved and "max_tensors" in json.dumps(rec["findings"])


def test_every_fixture_fast_equals_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = 0
    for p in sorted(FIXTURES.rglob("*")):
        if not p.is_file() or p.suffix in (".py", ".md", ".json"):
            continue
        blob = p.read_bytes()
        if len(blob) < 9 or blob[8:9] != b"{":
            continue  # not a safetensors layout: the sniff never sends it here
        _same(blob, monkeypatch)
        fast = ckptguard.scan(p)
        with monkeypatch.context() as m:
            m.setattr(st_audit, "_fast_header", lambda *a: False)
            m.setattr(st_audit, "_native_header", lambda *a: False)
            slow = ckptguard.scan(p)
        assert fast.to_dict() == slow.to_dict(), p
        seen += 1
    assert seen >= 8, seen  # the safetensors-layout fixtures (benign, hostile, robustness)


def test_names_with_minus_zero_are_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    header = b'{"layer-0.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' \
             b'"x,-0":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}'
    rec, proved = _audit(_file(header, b"\0" * 6), True, monkeypatch)
    assert rec["findings"] == [] and [t["name"] for t in rec["tensors"]] == ["layer-0.w", "x,-0"]
    assert not proved  # ",-0" inside a string still declines (needlessly, never wrongly)
    rec, proved = _audit(_file(header.replace(b"x,-0", b"x-0"), b"\0" * 6), True, monkeypatch)
    assert proved and rec["findings"] == []
