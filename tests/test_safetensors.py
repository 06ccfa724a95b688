"""safetensors header validation (analysis/safetensors.py), through ckptguard.scan."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import ckptguard
from ckptguard import Limits, Verdict
from ckptguard.analysis.engine import audit_bytes
from ckptguard.analysis.safetensors import (
    BINDING_REFUSES,
    DTYPES,
    PACKED,
    PLAIN_DTYPES,
    audit_safetensors,
)
from ckptguard.context import AuditContext, LimitExceeded, Source
from ckptguard.model import Format, decide
from ckptguard.policy import DEFAULT_LIMITS, Policy


def build(header: dict[str, Any] | bytes, data: bytes = b"", *, pad: bool = True,
          length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * ((8 - len(raw) % 8) % 8)
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def write(tmp_path: Path, blob: bytes, name: str = "m.safetensors") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# --- benign files written by the real library ---------------------------------------------

def test_real_file_is_safe_and_tensors_match(tmp_path: Path) -> None:
    tensors = {
        "encoder.weight": torch.randn(4, 3),
        "encoder.bias": torch.zeros(4, dtype=torch.float16),
        "emb": torch.ones(2, 5, dtype=torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(1.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
    }
    p = tmp_path / "model.safetensors"
    save_file(tensors, str(p), metadata={"format": "pt", "note": "hello"})
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert r.format is Format.SAFETENSORS
    got = {ti.name: (ti.dtype, ti.shape, ti.nbytes) for ti in r.tensors}
    want = {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape),
                v.numel() * v.element_size()) for k, v in tensors.items()}
    assert got == want
    md = dict(r.metadata)
    assert md["safetensors.metadata.format"] == "pt"
    assert md["safetensors.tensors"] == str(len(tensors))
    # the header was recorded for the same-bytes check, the data was not read
    assert r.identity is not None
    assert sum(reg.length for reg in r.identity.regions) == 8 + int(md["safetensors.header_bytes"])
    # data offsets point at the tensor bytes in the file
    blob = p.read_bytes()
    ti = next(x for x in r.tensors if x.name == "encoder.weight")
    assert ti.data_offset is not None
    expected = tensors["encoder.weight"].numpy().tobytes()
    assert blob[ti.data_offset:ti.data_offset + ti.nbytes] == expected


def test_real_file_without_tensors_is_safe(tmp_path: Path) -> None:
    p = tmp_path / "empty.safetensors"
    save_file({}, str(p))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.tensors == ()


@pytest.mark.parametrize("dtype", sorted(PLAIN_DTYPES))
def test_every_known_dtype_accepted(tmp_path: Path, dtype: str) -> None:
    bits = DTYPES[dtype][0]
    nbytes = 8 * bits // 8  # shape [8]
    p = write(tmp_path, build({"x": t(dtype, [8], 0, nbytes)}, b"\0" * nbytes))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    with safe_open(str(p), "pt") as f:  # the library reads what the report says
        got = f.get_tensor("x")
    (info,) = r.tensors
    assert str(got.dtype) == f"torch.{info.dtype}" and tuple(got.shape) == info.shape


def test_the_dtype_tables_partition_the_crates_list() -> None:
    assert PLAIN_DTYPES.keys() | BINDING_REFUSES | PACKED.keys() == DTYPES.keys()
    assert not PLAIN_DTYPES.keys() & (BINDING_REFUSES | PACKED.keys())
    assert {"F6_E2M3", "F6_E3M2"} == BINDING_REFUSES and PACKED == {"F4": "float4_e2m1fn_x2"}


@pytest.mark.parametrize("dtype", sorted(BINDING_REFUSES))
def test_dtypes_the_binding_refuses_are_ckg503(tmp_path: Path, dtype: str) -> None:
    """In the crate's list, refused by the Python binding: no Python program loads it."""
    p = write(tmp_path, build({"x": t(dtype, [4], 0, 3)}, b"\0" * 3))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG503" in r.rule_ids()
    with pytest.raises(Exception, match="not understood"), safe_open(str(p), "pt") as f:
        f.get_tensor("x")


@pytest.mark.parametrize("shape", [[4], [2, 4], [3, 2], [1, 1, 6]])
def test_f4_is_reported_as_torch_builds_it(tmp_path: Path, shape: list[int]) -> None:
    """The torch binding loads F4 as float4_e2m1fn_x2: two values a byte, last dim halved."""
    n = 1
    for d in shape:
        n *= d
    data = bytes(range(n // 2))
    p = write(tmp_path, build({"x": t("F4", shape, 0, n // 2)}, data))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    (info,) = r.tensors
    assert info.dtype == "float4_e2m1fn_x2" and info.shape == (*shape[:-1], shape[-1] // 2)
    with safe_open(str(p), "pt") as f:
        want = f.get_tensor("x")
    assert want.dtype == torch.float4_e2m1fn_x2 and tuple(want.shape) == info.shape
    got = ckptguard.safe_load(p)["x"]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.view(torch.uint8).tolist() == want.view(torch.uint8).tolist()


@pytest.mark.parametrize("shape", [[3], [2, 3], []])
def test_f4_with_an_odd_last_dimension_is_ckg503(tmp_path: Path, shape: list[int]) -> None:
    n = 1
    for d in shape:
        n *= d
    nbytes = (n + 1) // 2
    p = write(tmp_path, build({"x": t("F4", shape, 0, nbytes)}, b"\0" * nbytes))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG503" in r.rule_ids(), sorted(r.rule_ids())
    with pytest.raises(Exception), safe_open(str(p), "pt") as f:
        f.get_tensor("x")


@pytest.mark.parametrize("shape,rule", [
    ([2**32, 2**32, 0], "CKG504"), ([2**62, 2**62, 0], "CKG504"), ([0, 2**63], "CKG501"),
    ([2**63, 0], "CKG501"), ([0, 2**64 - 1], "CKG501"),
])
def test_shapes_no_python_reader_loads(tmp_path: Path, shape: list[int], rule: str) -> None:
    """Zero elements, yet refused: the crate's checked product overflows before the zero, or
    a dimension does not fit torch's and numpy's int64. Was SAFE, and safe_load raised a
    raw RuntimeError/TypeError."""
    p = write(tmp_path, build({"x": t("F32", shape, 0, 0), "y": t("F32", [1], 0, 4)},
                              b"\0" * 4))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and rule in r.rule_ids(), sorted(r.rule_ids())
    with pytest.raises(Exception), safe_open(str(p), "pt") as f:
        f.get_tensor("x")


# --- CKG501: header ---------------------------------------------------------------------

def _direct(blob: bytes) -> AuditContext:
    """Run audit_safetensors itself (the sniff sends only plausible files to it)."""
    ctx = AuditContext("x.safetensors", Source.from_bytes(blob), Policy(), DEFAULT_LIMITS)
    try:
        audit_safetensors(ctx)
    except LimitExceeded as e:
        ctx.limit_hit(e)
    return ctx


@pytest.mark.parametrize("blob", [
    pytest.param(struct.pack("<Q", 10**6) + b"{}      ", id="length-past-eof"),
    pytest.param(struct.pack("<Q", 2**64 - 1) + b"{}      ", id="length-u64-max"),
    pytest.param(b"\x02\x00\x00", id="shorter-than-length-field"),
])
def test_bad_length_field(tmp_path: Path, blob: bytes) -> None:
    # content alone is not safetensors, but under a .safetensors name the validator runs
    # and names the defect; under another name it stays unknown content (never SAFE)
    r = ckptguard.scan(write(tmp_path, blob))
    assert r.verdict is Verdict.UNSAFE and "CKG501" in r.rule_ids()
    other = tmp_path / "blob.bin"
    other.write_bytes(blob)
    r2 = ckptguard.scan(other)
    assert r2.verdict is Verdict.INCOMPLETE and "CKG001" in r2.rule_ids()
    # the reader itself, handed such bytes, names the defect
    ctx = _direct(blob)
    assert decide(ctx.findings) is Verdict.UNSAFE
    assert {f.rule_id for f in ctx.findings} == {"CKG501"}


@pytest.mark.parametrize("blob", [
    pytest.param(build(b"{\xff\xfe}"), id="invalid-utf8"),
    pytest.param(build(b"{not json}"), id="not-json"),
    pytest.param(build(b'{"a": 1} trailing'), id="json-trailing-garbage"),
    pytest.param(build(b"{" + b"[" * 5000 + b"]" * 5000 + b"}"), id="deep-nesting"),
    pytest.param(build({"x": t("F32", [1], 0, 4) | {"extra": 1}}, b"\0" * 4), id="extra-field"),
    pytest.param(build({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), id="missing-field"),
    pytest.param(build({"x": [1, 2]}), id="entry-not-object"),
    pytest.param(build({"x": t("F32", [1.0], 0, 4)}, b"\0" * 4), id="float-shape"),  # type: ignore[list-item]
    pytest.param(build({"x": t("F32", [-1], 0, 4)}, b"\0" * 4), id="negative-shape"),
    pytest.param(build({"x": t("F32", [True], 0, 4)}, b"\0" * 4), id="bool-shape"),  # type: ignore[list-item]
    pytest.param(build(b'{"x": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
                       b"\0" * 4), id="nan-constant"),
    pytest.param(build(b'{"__metadata__": {"k": "\\ud800"}}'), id="lone-surrogate-metadata"),
])
def test_malformed_header_ckg501(tmp_path: Path, blob: bytes) -> None:
    r = ckptguard.scan(write(tmp_path, blob))
    assert r.format is Format.SAFETENSORS
    assert r.verdict is Verdict.UNSAFE and "CKG501" in r.rule_ids()
    assert r.problems == ()


@pytest.mark.parametrize("header", [b"[]", b' {"a": 1}', b'"text"'])
def test_header_not_an_object(tmp_path: Path, header: bytes) -> None:
    # these do not sniff as safetensors: never SAFE, never a traceback
    r = ckptguard.scan(write(tmp_path, build(header)))
    assert r.verdict is not Verdict.SAFE and r.problems == ()
    ctx = _direct(build(header))
    assert decide(ctx.findings) is Verdict.UNSAFE
    assert {f.rule_id for f in ctx.findings} == {"CKG501"}


def test_valid_json_array_header_ckg501() -> None:
    ctx = _direct(struct.pack("<Q", 2) + b"{}")  # sanity: an empty object is fine
    assert ctx.findings == []
    ctx = _direct(struct.pack("<Q", 4) + b"[{}]")
    assert {f.rule_id for f in ctx.findings} == {"CKG501"}


def test_header_length_over_configured_limit_is_incomplete(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(400)}, str(p), metadata={"k": "v" * 2000})
    r = ckptguard.scan(p, limits=Limits(max_header_bytes=1024))
    assert r.verdict is Verdict.INCOMPLETE and "CKG901" in r.rule_ids()


def test_header_length_over_crate_maximum(tmp_path: Path) -> None:
    blob = struct.pack("<Q", 100_000_001) + b"{" + b" " * 100_000_000
    r = audit_bytes(blob, "big.safetensors", policy=Policy(), limits=DEFAULT_LIMITS)
    assert r.verdict is Verdict.UNSAFE and "CKG501" in r.rule_ids()


def test_deep_nesting_does_not_recurse(tmp_path: Path) -> None:
    depth = 200_000
    blob = build(b'{"__metadata__": ' + b"[" * depth + b"]" * depth + b"}")
    r = ckptguard.scan(write(tmp_path, blob))
    assert r.verdict is Verdict.UNSAFE and "CKG501" in r.rule_ids() and r.problems == ()


def test_brackets_inside_strings_are_not_nesting(tmp_path: Path) -> None:
    meta = {"format": "pt", "odd": "[" * 500 + '\\"{' * 100}
    p = write(tmp_path, build({"__metadata__": meta, "x": t("U8", [2], 0, 2)}, b"ab"))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()


# --- CKG502: duplicate keys -------------------------------------------------------------

def test_duplicate_tensor_key(tmp_path: Path) -> None:
    raw = (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
           b'"x": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}')
    r = ckptguard.scan(write(tmp_path, build(raw, b"\0" * 4)))
    assert r.verdict is Verdict.UNSAFE and "CKG502" in r.rule_ids()


def test_duplicate_nested_key(tmp_path: Path) -> None:
    raw = b'{"x": {"dtype": "F32", "dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}'
    r = ckptguard.scan(write(tmp_path, build(raw, b"\0" * 4)))
    assert r.verdict is Verdict.UNSAFE and "CKG502" in r.rule_ids()


def test_duplicate_metadata_key(tmp_path: Path) -> None:
    raw = b'{"__metadata__": {"format": "pt", "format": "np"}}'
    r = ckptguard.scan(write(tmp_path, build(raw)))
    assert r.verdict is Verdict.UNSAFE and "CKG502" in r.rule_ids()


# --- CKG503: dtype ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["F128", "f32", "OBJECT", "", 7, None])
def test_unknown_dtype(tmp_path: Path, dtype: object) -> None:
    p = write(tmp_path, build({"x": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}},
                              b"\0" * 4))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG503" in r.rule_ids()


# --- CKG504: offsets and sizes ----------------------------------------------------------

@pytest.mark.parametrize("header,data", [
    pytest.param({"x": t("F32", [2], 0, 4)}, b"\0" * 4, id="span-smaller-than-shape"),
    pytest.param({"x": t("F32", [1], 0, 8)}, b"\0" * 8, id="span-larger-than-shape"),
    pytest.param({"x": t("F32", [1], 4, 0)}, b"\0" * 4, id="end-before-begin"),
    pytest.param({"x": t("F32", [1], 0, 4), "y": t("F32", [1], 2, 6)}, b"\0" * 6,
                 id="overlap"),
    pytest.param({"x": t("F32", [1], 0, 4), "y": t("F32", [1], 0, 4)}, b"\0" * 4,
                 id="alias-same-bytes"),
    pytest.param({"x": t("F32", [1], 0, 4), "y": t("F32", [1], 8, 12)}, b"\0" * 12,
                 id="gap"),
    pytest.param({"x": t("F32", [1], 4, 8)}, b"\0" * 8, id="gap-at-start"),
    pytest.param({"x": t("F32", [1], 0, 4)}, b"\0" * 4 + b"HIDDEN", id="trailing-bytes"),
    pytest.param({"x": t("F32", [2], 0, 8)}, b"\0" * 4, id="past-end-of-file"),
    pytest.param({"x": t("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4, id="shape-overflow"),
    pytest.param({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4,
                 id="offsets-not-pair"),
    pytest.param({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**64]}},
                 b"\0" * 4, id="offset-over-u64"),
    pytest.param(b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [-0, 4]}}',
                 b"\0" * 4, id="negative-zero-offset"),
])
def test_bad_offsets_ckg504(tmp_path: Path, header: dict[str, Any] | bytes, data: bytes) -> None:
    r = ckptguard.scan(write(tmp_path, build(header, data)))
    assert r.verdict is Verdict.UNSAFE and "CKG504" in r.rule_ids()


def test_offsets_out_of_order_in_header_are_fine(tmp_path: Path) -> None:
    # JSON order does not matter; sorted by offset the layout is contiguous
    header = {"b": t("U8", [2], 2, 4), "a": t("U8", [2], 0, 2)}
    r = ckptguard.scan(write(tmp_path, build(header, b"abcd")))
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert [x.name for x in r.tensors] == ["a", "b"]


# --- CKG505 / CKG506 --------------------------------------------------------------------

@pytest.mark.parametrize("meta", [
    {"k": 1}, {"k": None}, {"k": ["a"]}, {"k": {"nested": "x"}}, ["a"], "text", 3,
])
def test_metadata_not_string_map(tmp_path: Path, meta: object) -> None:
    p = write(tmp_path, build({"__metadata__": meta, "x": t("U8", [1], 0, 1)}, b"a"))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG505" in r.rule_ids()


@pytest.mark.parametrize("name", ["", "a\x00b", "line\nbreak", "esc\x1b[31m", "bidi\u202e",
                                  "zero\u200bwidth"])
def test_bad_tensor_name(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, build({name: t("U8", [1], 0, 1)}, b"a"))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG506" in r.rule_ids()


def test_unicode_printable_names_are_fine(tmp_path: Path) -> None:
    p = tmp_path / "u.safetensors"
    save_file({"módulo.peso": torch.zeros(1), "层.0 weight": torch.zeros(1)}, str(p))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and {x.name for x in r.tensors} == {"módulo.peso",
                                                                         "层.0 weight"}


# --- disguise / format detection ---------------------------------------------------------

def test_pickle_named_safetensors_is_not_safe(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG003" in r.rule_ids()


def test_scan_does_not_import_torch_safetensors_numpy(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    code = (
        "import sys, ckptguard\n"
        f"r = ckptguard.scan({str(p)!r})\n"
        "assert r.verdict.value == 'SAFE', r\n"
        "bad = [m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- property: never SAFE unless the library reads the same tensors ------------------------

def _library_view(path: Path) -> dict[str, tuple[int, ...]] | None:
    try:
        with safe_open(str(path), "np") as f:
            out: dict[str, tuple[int, ...]] = {}
            for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
                sl = f.get_slice(k)
                out[k] = tuple(sl.get_shape())
            return out
    except Exception:
        return None


_names = st.sampled_from(["a", "b", "w", "", "__metadata__", "x\n"])
_dtypes = st.sampled_from(["F32", "U8", "F4", "BF16", "I64", "F8_E4M3", "X"])
_entry = st.fixed_dictionaries({
    "dtype": _dtypes,
    "shape": st.lists(st.integers(0, 4), max_size=3),
    "data_offsets": st.lists(st.integers(0, 40), min_size=2, max_size=2),
})


@st.composite
def _plausible(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:  # arbitrary bytes after a plausible length prefix
        body = draw(st.binary(min_size=1, max_size=200))
        n = draw(st.integers(0, len(body) + 8))
        return struct.pack("<Q", n) + body
    header = draw(st.dictionaries(_names, _entry, max_size=4))
    raw = json.dumps(header).encode()
    if kind == 1:  # structurally valid JSON, arbitrary values and data
        data = draw(st.binary(max_size=60))
        return struct.pack("<Q", len(raw)) + raw + data
    # mutate one byte of a header-like file
    blob = bytearray(struct.pack("<Q", len(raw)) + raw + b"\0" * draw(st.integers(0, 40)))
    i = draw(st.integers(0, len(blob) - 1))
    blob[i] = draw(st.integers(0, 255))
    return bytes(blob)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(_plausible())
def test_property_never_safe_unless_library_agrees(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "prop.safetensors"
    p.write_bytes(blob)
    r = ckptguard.scan(p)  # must never raise
    assert r.problems == (), r.problems
    if r.verdict is Verdict.SAFE:
        lib = _library_view(p)
        assert lib is not None, "ckptguard says SAFE but safetensors refuses the file"
        assert lib == {x.name: x.shape for x in r.tensors}


def test_property_finds_valid_examples(tmp_path: Path) -> None:
    """Sanity check that the property test's space contains SAFE files at all."""
    header = {"a": t("F32", [2], 0, 8), "b": t("U8", [3], 8, 11)}
    p = write(tmp_path, build(header, b"\0" * 11, pad=False))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE
    assert _library_view(p) == {"a": (2,), "b": (3,)}
