"""The C safetensors header prover (``_native/stcore.c`` via
``analysis/safetensors.py::_native_header``) proves the plain header or declines.

Differential, with the native module and with ``CKPTGUARD_PURE=1`` (and against the strict
Python parser alone): every safetensors-layout fixture of ``fixtures/manifest.json`` gives
the same Report and the same JSON report bytes; >= 10,000 seeded files
(tests/ckg_st_headers.py: plain headers in several JSON layouts, and mutants: repeated keys,
escapes, reordered / overlapping / gapped offsets, bad dtypes, overflowing shapes, unicode
names, white space, truncations, trailing garbage, deep metadata, number forms) record the
same findings, tensors (same order, same values), metadata and bytes read; wherever the
prover accepts, the strict parser records no finding; every plain header is proven.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from ckg_st_headers import (
    audit,
    encode,
    join,
    mutate,
    plain,
    plain_header,
    random_limits,
    three_ways,
)

import ckptguard
from ckptguard._native import native
from ckptguard.analysis import engine
from ckptguard.analysis import safetensors as st_audit
from ckptguard.model import TensorInfo, Verdict
from ckptguard.policy import DEFAULT_LIMITS, Limits, Policy
from ckptguard.report import render
from ckptguard.report.result import ScanResult

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((ROOT / "fixtures" / "manifest.json").read_text())
#: the manifest's safetensors files (by name or by layout) and every other fixture file with
#: a safetensors layout (``{`` after the length field: what the sniff sends to the auditor)
ST_FIXTURES = sorted(
    {f["path"] for f in MANIFEST["fixtures"]
     if f["path"].endswith(".safetensors")
     or (ROOT / "fixtures" / f["path"]).read_bytes()[8:9] == b"{"}
    | {str(p.relative_to(ROOT / "fixtures")) for p in (ROOT / "fixtures").rglob("*")
       if p.is_file() and p.suffix not in (".py", ".md", ".json")
       and p.read_bytes()[8:9] == b"{"})
N_GENERATED = int(os.environ.get("CKG_STCORE_EXAMPLES", "10000"))

needs_native = pytest.mark.skipif(native("stcore") is None,
                                  reason="stcore not built (pure-Python install)")


def _scan_json(data: bytes, name: str, pure: bool, monkeypatch: pytest.MonkeyPatch
               ) -> tuple[Any, str]:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
        r = engine.audit_bytes(data, name, policy=Policy(), limits=DEFAULT_LIMITS)
    return r, render("json", ScanResult(reports=(r,)))


def _proves(header: bytes, data: bytes = b"") -> bool:
    return audit(join(header, data), "native")["proven"]


def test_manifest_has_safetensors_fixtures() -> None:
    assert len(ST_FIXTURES) >= 8, ST_FIXTURES


@needs_native
@pytest.mark.parametrize("path", ST_FIXTURES)
def test_fixture_native_equals_pure(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (ROOT / "fixtures" / path).read_bytes()
    name = Path(path).name
    fast, fast_json = _scan_json(data, name, False, monkeypatch)
    slow, slow_json = _scan_json(data, name, True, monkeypatch)
    assert fast.verdict == slow.verdict and fast.rule_ids() == slow.rule_ids()
    assert fast.to_dict() == slow.to_dict()
    assert fast_json == slow_json
    recs = {m: audit(data, m) for m in ("native", "pure", "python", "strict")}
    proven = recs["native"].pop("proven")
    for m in ("pure", "python", "strict"):
        recs[m].pop("proven")
        assert recs[m] == recs["native"], (path, m)
    if proven:  # nothing in the header (other stages may still flag a polyglot)
        assert recs["strict"]["findings"] == [] and recs["strict"]["problems"] == []


@pytest.mark.slow
@needs_native
def test_generated_native_equals_pure_and_strict() -> None:
    rng = random.Random(1313)
    proven_plain = proven_mutant = mutants = plains = 0
    seen_tensors = 0
    while plains + mutants < N_GENERATED:
        blob = plain(rng)
        limits = random_limits(rng) if rng.random() < 0.15 else DEFAULT_LIMITS
        cases = [(blob, True)]
        for _ in range(4):
            b = blob
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                b = mutate(rng, b)
            cases.append((b, False))
        for b, is_plain in cases:
            proven, nat, pure, strict = three_ways(b, limits)
            assert nat == pure == strict, b[:400]
            if proven:
                assert strict["findings"] == [] and strict["problems"] == [], b[:400]
                seen_tensors += len(nat["tensors"])
            if is_plain:
                plains += 1
                if limits is DEFAULT_LIMITS:
                    assert proven, b[:400]  # every plain header is proven
                proven_plain += proven
            else:
                mutants += 1
                proven_mutant += proven
    assert plains + mutants >= 10_000 or N_GENERATED < 10_000
    assert proven_plain >= plains * 0.8, (proven_plain, plains)
    # the mutants exercise both directions: most decline, the harmless ones are proven
    assert 0 < proven_mutant < mutants * 0.5, (proven_mutant, mutants)
    assert seen_tensors > N_GENERATED // 2


@needs_native
def test_generated_reports_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole Report and its JSON bytes, on 300 plain files and mutants."""
    rng = random.Random(77)
    for i in range(300):
        blob = plain(rng)
        if i % 2:
            blob = mutate(rng, blob)
        fast, fast_json = _scan_json(blob, "x.safetensors", False, monkeypatch)
        slow, slow_json = _scan_json(blob, "x.safetensors", True, monkeypatch)
        assert fast.to_dict() == slow.to_dict() and fast_json == slow_json, blob[:300]


def _bench_like(n: int) -> bytes:
    """A header like bench/'s s50000.safetensors: sorted names, F32 [4,4] / [16]."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    names = sorted(f"blocks.{i // 10}.sub_{i % 10}.{'weight' if i % 2 == 0 else 'bias'}"
                   for i in range(n))
    pos = 0
    for name in names:
        shape = [4, 4] if name.endswith("weight") else [16]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [pos, pos + 64]}
        pos += 64
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(pos)


@needs_native
def test_native_proves_the_benchmark_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path cannot silently decline everything: the benchmark's plain header (and
    the real file, where bench/ built it) is proven by the C prover itself."""
    blob = _bench_like(5000)
    rec = audit(blob, "native")
    assert rec["proven"] and rec["findings"] == [] and len(rec["tensors"]) == 5000
    assert rec["tensor_types"] == ["TensorInfo"]
    n = struct.unpack("<Q", blob[:8])[0]
    core = st_audit._stcore()
    got = core.prove(blob[8:8 + n], 8 + n, len(blob), 50_000)
    assert got is not None and got[2] == 5000 and got[1] is not None
    assert all(type(t) is TensorInfo for t in got[0])
    assert audit(blob, "strict") == {**rec, "proven": False}
    fast, fast_json = _scan_json(blob, "s.safetensors", False, monkeypatch)
    slow, slow_json = _scan_json(blob, "s.safetensors", True, monkeypatch)
    assert slow.to_dict() == fast.to_dict()
    assert fast.verdict is Verdict.SAFE and fast_json == slow_json
    real = Path("/work/main/bench/out/ckpts/s1000.safetensors")
    if real.is_file():
        assert audit(real.read_bytes(), "native")["proven"]


@needs_native
def test_records_are_the_strict_records() -> None:
    """Field by field, including shared shapes, zero-length tensors and their order."""
    header = (b'{"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},'
              b'"a":{"shape":[1],"data_offsets":[0,4],"dtype":"F32"},'
              b'"c":{"dtype":"F16","shape":[0,9223372036854775807],"data_offsets":[4,4]},'
              b'"d":{"dtype":"BF16","shape":[],"data_offsets":[4,6]},'
              b'"__metadata__":{"k\\"":"v\\u00e9\\ud83d\\ude00","a":""}}')
    rec = audit(join(header, bytes(6)), "native")
    assert rec["proven"]
    assert [t["name"] for t in rec["tensors"]] == ["a", "b", "c", "d"]
    assert rec == {**audit(join(header, bytes(6)), "strict"), "proven": True}
    assert rec["metadata"]["safetensors.metadata_items"] == "2"
    assert 'safetensors.metadata.k"' in rec["metadata"]


# --- the decision table: plain headers proven, each defect declined (and the strict
# path's finding, or a clean strict result where the prover is merely cautious) -------------

T = b'"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@needs_native
@pytest.mark.parametrize(("header", "data", "proven", "rule"), [
    pytest.param(b"{" + T + b"}", 4, True, None, id="plain"),
    pytest.param(b"{}", 0, True, None, id="empty"),
    pytest.param(b'{"__metadata__":{}}', 0, True, None, id="empty-metadata"),
    pytest.param(b"{ " + T + b" }\t\r\n ", 4, True, None, id="json-white-space"),
    pytest.param(b'{"t":{"data_offsets":[0,4],"shape":[1],"dtype":"F32"}}', 4, True, None,
                 id="fields-any-order"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}',
                 4, False, "CKG504", id="u64-max"),
    pytest.param(b"{" + T + b"," + T + b"}", 4, False, "CKG502", id="repeated-name"),
    pytest.param(b'{"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4,
                 False, "CKG502", id="repeated-field"),
    pytest.param(b'{"__metadata__":{},"__metadata__":{}}', 0, False, "CKG502",
                 id="repeated-metadata"),
    pytest.param(b'{"__metadata__":{"a":"x","a":"y"}}', 0, False, "CKG502",
                 id="repeated-metadata-key"),
    pytest.param(b'{"\\u0074":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, False,
                 None, id="escaped-name"),
    pytest.param('{"é":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.encode(), 4, False,
                 None, id="utf8-name"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}', 4, False,
                 "CKG501", id="extra-field"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1]}}', 4, False, "CKG501",
                 id="missing-field"),
    pytest.param(b'{"t":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}}', 4, False,
                 "CKG503", id="bad-dtype"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', 0, False,
                 "CKG501", id="minus-zero"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', 4, False,
                 "CKG501", id="float-dim"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}', 4, False,
                 "CKG501", id="exponent-dim"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', 4, False,
                 "CKG501", id="leading-zero"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}',
                 4, False, "CKG501", id="dim-over-u64"),
    pytest.param(b'{"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}',
                 0, False, "CKG504", id="shape-overflow"),
    pytest.param(b'{"t":{"dtype":"F64","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}',
                 0, False, "CKG504", id="zero-first-then-huge"),  # torch's strides overflow
    pytest.param(b'{"t":{"dtype":"F64","shape":[0,9223372036854775807],"data_offsets":[0,0]}}',
                 0, True, None, id="zero-first-then-i64"),
    pytest.param(b'{"t":{"dtype":"F64","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}',
                 0, False, "CKG504", id="overflow-before-zero"),  # the crate's checked fold
    pytest.param(b'{"t":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}}',
                 0, False, "CKG501", id="dim-over-i64"),  # torch and numpy: int64 dims
    pytest.param(b'{"t":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}', 1, False,
                 "CKG503", id="half-byte"),  # torch packs F4 in pairs: an odd last dim
    pytest.param(b'{"t":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}', 2, False,
                 None, id="f4-packed"),  # the strict path builds the pairs
    pytest.param(b'{"t":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[0,3]}}', 3, False,
                 "CKG503", id="f6-binding-refuses"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', 4, False,
                 "CKG504", id="shape-mismatch"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}', 5, False,
                 "CKG504", id="gap-at-start"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                 b'"u":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, False, "CKG504",
                 id="overlap"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                 b'"u":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', 12, False,
                 "CKG504", id="gap"),
    pytest.param(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                 b'"u":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}}', 4, False, "CKG504",
                 id="empty-inside-another"),
    pytest.param(b"{" + T + b"}", 5, False, "CKG504", id="trailing-data"),
    pytest.param(b"{" + T + b"}", 3, False, "CKG504", id="past-the-end"),
    pytest.param(b"{" + T + b"}x", 4, False, "CKG501", id="trailing-garbage"),
    pytest.param(b"{" + T + b"}\x00", 4, False, "CKG501", id="trailing-nul"),
    pytest.param(b"{" + T + b"}\x0c", 4, False, "CKG501", id="form-feed"),
    pytest.param(b"{" + T, 4, False, "CKG501", id="truncated"),
    pytest.param(b'{"__metadata__":{"a":"\\ud800"}}', 0, False, "CKG501",
                 id="metadata-lone-surrogate"),
    pytest.param(b'{"__metadata__":{"a":"\xff"}}', 0, False, "CKG501", id="metadata-bad-utf8"),
    pytest.param(b'{"__metadata__":{"a":"\xed\xa0\x80"}}', 0, False, "CKG501",
                 id="metadata-encoded-surrogate"),
    pytest.param(b'{"__metadata__":{"a":1}}', 0, False, "CKG505", id="metadata-int"),
    pytest.param(b'{"__metadata__":{"a":' + b"[" * 50 + b"]" * 50 + b"}}", 0, False,
                 "CKG505", id="metadata-deep"),
    pytest.param(b'{"__metadata__":null}', 0, False, "CKG505", id="metadata-null"),
    pytest.param(b'{"__metadata__":{"a":"x\\q"}}', 0, False, "CKG501",
                 id="metadata-bad-escape"),
    pytest.param(b'{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, False,
                 "CKG506", id="empty-name"),
    pytest.param(b'{"t":[]}', 0, False, "CKG501", id="entry-not-object"),
])
def test_decision_table(header: bytes, data: int, proven: bool, rule: str | None,
                        tmp_path: Path) -> None:
    blob = join(header, bytes(data))
    rec = audit(blob, "native")
    assert rec["proven"] is proven
    strict = audit(blob, "strict")
    assert {**rec, "proven": False} == strict
    p = tmp_path / "t.safetensors"
    p.write_bytes(blob)
    r = ckptguard.scan(p)
    if rule is None:
        assert r.verdict is Verdict.SAFE and not r.rule_ids(), r.rule_ids()
    else:
        assert r.verdict is not Verdict.SAFE and rule in r.rule_ids(), (r.verdict, r.rule_ids())


@needs_native
def test_limits_decline() -> None:
    blob = _bench_like(10)
    assert audit(blob, "native")["proven"]
    for limits in (Limits(max_tensors=9), Limits(max_json_depth=2)):
        rec = audit(blob, "native", limits)
        assert not rec["proven"] and {**rec, "proven": False} == audit(blob, "strict", limits)
    assert audit(blob, "native", Limits(max_tensors=10))["proven"]
    assert "max_tensors" in json.dumps(audit(blob, "native", Limits(max_tensors=9))["findings"])


@needs_native
def test_init_refuses_other_classes() -> None:
    core = native("stcore")
    assert core is not None

    class Plain:
        pass

    with pytest.raises(TypeError):
        core.init(Plain, ())
    with pytest.raises(ValueError):
        core.init(TensorInfo, (("", 8, "x"),))
    st_audit._STCORE_READY.clear()  # initialised again (same class, same table) on next use
    assert audit(_bench_like(3), "native")["proven"]


def test_fields_pinned() -> None:
    """The C code fills exactly TensorInfo's fields (and its FIELDS table names them)."""
    import dataclasses
    assert tuple(f.name for f in dataclasses.fields(TensorInfo)) == st_audit.STCORE_FIELDS
    src = (ROOT / "src" / "ckptguard" / "_native" / "stcore.c").read_text()
    table = src[src.index("FIELDS[N_FIELDS] = {"):]
    table = table[:table.index("};")]
    assert tuple(table.split('"')[1::2]) == st_audit.STCORE_FIELDS


@needs_native
@pytest.mark.parametrize("dtype", sorted(st_audit.PLAIN_DTYPES))
def test_every_dtype_proven_with_its_torch_name(dtype: str) -> None:
    bits, torch_name = st_audit.PLAIN_DTYPES[dtype]
    nbytes = 8 * bits // 8
    header = (b'{"t":{"dtype":"' + dtype.encode() + b'","shape":[2,4],"data_offsets":[0,'
              + str(nbytes).encode() + b"]}}")
    rec = audit(join(header, bytes(nbytes)), "native")
    assert rec["proven"] and rec["tensors"][0]["dtype"] == torch_name
    assert rec["tensors"][0]["nbytes"] == nbytes
    assert {**rec, "proven": False} == audit(join(header, bytes(nbytes)), "strict")


def test_pure_never_uses_the_prover(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    header, data_len = plain_header(rng, 4)
    blob = encode(header, data_len, rng)
    assert not audit(blob, "pure")["proven"]
    monkeypatch.setenv("CKPTGUARD_PURE", "1")
    assert st_audit._stcore() is None


@needs_native
def test_mutants_of_the_benchmark_header() -> None:
    """Mutants of a large plain header (the non-ascending and unordered paths: qsort)."""
    rng = random.Random(11)
    base = _bench_like(400)
    for _ in range(60):
        b = mutate(rng, base)
        nat, strict = audit(b, "native"), audit(b, "strict")
        assert {**nat, "proven": False} == strict
        if nat["proven"]:
            assert strict["findings"] == []
