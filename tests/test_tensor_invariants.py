"""Issue 10.3: tensor invariants torch skips. Sparse (COO, CSR, CSC, BSR, BSC) indices,
quantization parameters and nested offsets are checked on every tensor a load rebuilt;
a violation is refused (TensorInvariantError, rules CKG420-CKG423) before anything is
handed out. Fixtures: fixtures/families/tensor_invariants.py."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_loader_helpers import assert_same_tensor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard import UnsafeCheckpointError, Verdict
from ckptguard.errors import TensorInvariantError
from ckptguard.loaders import _torch
from ckptguard.loaders.invariants import (
    LAYOUT_CHECKS,
    QUANTIZED_RANGES,
    Check,
    Violation,
    check_tensor,
)

REAL_LOAD = _torch.ORIGINAL_LOAD
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
FAMILY = [e for e in json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
          if e["family"] == "tensor-invariants"]
HOSTILE = {Path(e["path"]).stem.removeprefix("invariant_"): FIXTURES / e["path"]
           for e in FAMILY if e["path"].startswith("hostile/")}

#: fixtures whose problem the pickle spells out: the audit itself reports CKG421.
STATIC = frozenset({
    "q_scale_nan", "q_scale_inf", "q_scale_zero", "q_scale_negative",
    "q_zero_point_past_quint8", "q_zero_point_negative_quint8", "q_zero_point_past_qint8",
    "q_scheme_symmetric", "qc_axis_past", "qc_axis_negative", "qc_too_few_scales",
})

#: fixture -> the refusal: a ckptguard rule, or "torch" (torch's own rebuild refuses it).
EXPECTED: dict[str, str] = {
    **{k: "CKG420" for k in (
        "coo_index_past_dim0", "coo_index_at_dim1", "coo_negative_index", "coo_huge_index",
        "coo_1d_past", "coo_3d_past_last_dim", "coo_coalesced_lie", "coo_coalesced_duplicates",
        "csr_col_past", "csr_col_negative", "csr_crow_decreasing", "csr_crow_not_zero",
        "csr_crow_last_past_nnz", "csr_cols_unsorted", "csc_row_past", "csc_ccol_decreasing",
        "bsr_col_block_past", "bsr_crow_decreasing", "bsc_row_block_past",
        "bsc_ccol_last_past_nnz")},
    **{k: "CKG421" for k in (
        "q_scale_nan", "q_scale_inf", "q_scale_zero", "q_scale_negative",
        "q_zero_point_past_quint8", "q_zero_point_negative_quint8", "q_zero_point_past_qint8",
        "q_scheme_symmetric", "qc_axis_past", "qc_axis_negative", "qc_too_few_scales",
        "qc_scale_nan", "qc_scale_zero", "qc_zero_point_past_qint8")},
    **{k: "CKG422" for k in ("nested_negative_offset", "nested_zero_stride")},
    **{k: "torch" for k in ("nested_offset_past_buffer", "nested_negative_size",
                            "nested_counts_disagree")},
}


@pytest.fixture(autouse=True)
def _quiet() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are "prototype"
        yield


def test_every_variant_has_an_expectation() -> None:
    assert set(HOSTILE) == set(EXPECTED)
    assert len(HOSTILE) >= 30 and len(FAMILY) == len(HOSTILE)


def _assert_refused(exc: BaseException, rule: str) -> None:
    assert isinstance(exc, TensorInvariantError) and isinstance(exc, UnsafeCheckpointError)
    assert exc.report.verdict is Verdict.UNSAFE
    assert rule in exc.report.rule_ids()
    assert f"[{rule} HIGH]" in str(exc)


@pytest.mark.parametrize("name", sorted(STATIC))
def test_static_variant_is_unsafe_at_scan(name: str) -> None:
    path = HOSTILE[name]
    report = ckptguard.scan(path)
    assert report.verdict is Verdict.UNSAFE and "CKG421" in report.rule_ids()
    with pytest.raises(UnsafeCheckpointError) as ei:
        ckptguard.safe_load(path)
    assert not isinstance(ei.value, TensorInvariantError)  # refused before torch runs
    assert "CKG421" in ei.value.report.rule_ids()


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - STATIC))
def test_hostile_variant_is_refused(name: str) -> None:
    path = HOSTILE[name]
    rule = EXPECTED[name]
    assert ckptguard.scan(path).verdict is Verdict.SAFE  # the records are fine; values are not
    if rule == "torch":
        with pytest.raises((RuntimeError, ValueError)):
            REAL_LOAD(path, weights_only=True)
        with pytest.raises((RuntimeError, ValueError)) as ei:
            ckptguard.safe_load(path)
        assert not isinstance(ei.value, TensorInvariantError)
        return
    REAL_LOAD(path, weights_only=True)  # torch itself loads it without complaint
    for kwargs in ({}, {"mmap": False}, {"copy": True}):
        with pytest.raises(TensorInvariantError) as ei:
            ckptguard.safe_load(path, **kwargs)
        _assert_refused(ei.value, rule)
    with pytest.raises(TensorInvariantError) as ei, ckptguard.iter_state_dict(path) as it:
        list(it)
    _assert_refused(ei.value, rule)
    with ckptguard.guard_torch_load():
        with pytest.raises(TensorInvariantError) as ei:
            torch.load(path)
        _assert_refused(ei.value, rule)
        with pytest.raises(TensorInvariantError) as ei:
            torch.load(io.BytesIO(path.read_bytes()))
        _assert_refused(ei.value, rule)


def _parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that make up ``t``, for a bit-exact comparison."""
    if t.layout is torch.sparse_coo:
        return [t._indices(), t._values()]
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [t.crow_indices(), t.col_indices(), t.values()]
    if t.layout in (torch.sparse_csc, torch.sparse_bsc):
        return [t.ccol_indices(), t.row_indices(), t.values()]
    if t.is_nested:
        return [*t.unbind(), t._nested_tensor_size(), t._nested_tensor_strides(),
                t._nested_tensor_storage_offsets()]
    if t.is_quantized:
        if t.qscheme() == torch.per_tensor_affine:
            return [t.int_repr(), torch.tensor([t.q_scale()]), torch.tensor([t.q_zero_point()])]
        return [t.int_repr(), t.q_per_channel_scales(), t.q_per_channel_zero_points(),
                torch.tensor([t.q_per_channel_axis()])]
    return [t]


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.layout == b.layout and a.dtype == b.dtype and a.is_nested == b.is_nested
    if not a.is_nested:
        assert a.shape == b.shape
    pa, pb = _parts(a), _parts(b)
    assert len(pa) == len(pb)
    for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
        assert_same_tensor(x, y, str(i))


def _valid(kind: str) -> torch.Tensor:
    dense = torch.arange(16.0).reshape(4, 4)
    dense[1] = 0
    return {
        "coo": dense.to_sparse,
        "coo_uncoalesced": lambda: torch.sparse_coo_tensor(torch.tensor([[1, 0, 1], [2, 0, 2]]),
                                                           torch.ones(3), (3, 3)),
        "csr": dense.to_sparse_csr,
        "csc": dense.to_sparse_csc,
        "bsr": lambda: dense.to_sparse_bsr((2, 2)),
        "bsc": lambda: dense.to_sparse_bsc((2, 2)),
        "q_per_tensor": lambda: torch.quantize_per_tensor(dense, 0.1, 10, torch.quint8),
        "q_per_channel": lambda: torch.quantize_per_channel(
            dense, torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, -3, 5, 1]), 0,
            torch.qint8),
        "q_float_qparams": lambda: torch.quantize_per_channel(
            dense, torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.0, 1.5, -2.0, 0.5]), 1,
            torch.quint8),
        "nested": lambda: torch.nested.nested_tensor([torch.arange(2.0), torch.arange(3.0)]),
        "nested_2d": lambda: torch.nested.nested_tensor([torch.ones(2, 3), torch.zeros(4, 3)]),
    }[kind]()


VALID = ["coo", "coo_uncoalesced", "csr", "csc", "bsr", "bsc", "q_per_tensor",
         "q_per_channel", "q_float_qparams", "nested", "nested_2d"]


@pytest.mark.parametrize("kind", VALID)
def test_valid_layouts_load_bit_exact(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "v.pt"
    torch.save({"t": _valid(kind), "w": torch.arange(3.0)}, path)
    assert ckptguard.scan(path).verdict is Verdict.SAFE
    ref = REAL_LOAD(path, weights_only=True)["t"]
    for kwargs in ({}, {"copy": True}, {"mmap": False}):
        _assert_same(ckptguard.safe_load(path, **kwargs)["t"], ref)
    with ckptguard.guard_torch_load():
        _assert_same(torch.load(path)["t"], ref)


# --- a generator over random sparse indices: ours refuses iff torch's own check does -------

def _torch_check(layout: str, parts: list[list[Any]], shape: tuple[int, ...]) -> bool:
    """In a worker process: does torch's own invariant check refuse these parts?"""
    import torch as t

    tensors = [t.tensor(p, dtype=t.float32 if k == len(parts) - 1 else t.int64)
               for k, p in enumerate(parts)]
    try:
        with t.sparse.check_sparse_tensor_invariants(enable=True):
            if layout == "coo":
                t.sparse_coo_tensor(tensors[0].reshape(2, -1), tensors[1], shape)
            else:
                t.sparse_csr_tensor(tensors[0], tensors[1], tensors[2], shape)
    except RuntimeError:
        return True
    return False


_CHECKER: list[Any] = []


@pytest.fixture(scope="module", autouse=True)
def _stop_checker() -> Any:
    yield
    while _CHECKER:
        _CHECKER.pop().shutdown(wait=True)


def _torch_says_invalid(t: torch.Tensor) -> bool:
    """torch's own invariant check, in a spawned worker process: on some invalid compressed
    indices (``crow=[0, 3, 0]`` with no column) torch 2.13's check itself reads out of
    bounds and crashes, which counts as "invalid" here (and is why safe_load pre-checks
    them before calling it)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if t.layout is torch.sparse_coo:
        layout, parts = "coo", [t._indices().flatten().tolist(), t._values().tolist()]
    else:
        layout, parts = "csr", [t.crow_indices().tolist(), t.col_indices().tolist(),
                                t.values().tolist()]
    if not _CHECKER:
        _CHECKER.append(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
    try:
        return bool(_CHECKER[0].submit(_torch_check, layout, parts, tuple(t.shape)).result(120))
    except BrokenProcessPool:  # torch's check crashed the worker: certainly invalid
        _CHECKER.pop().shutdown(wait=False)
        return True


@pytest.mark.slow
@pytest.mark.parametrize("crow", [[0, 3, 0], [0, 4, 0, 0, 0], [0, 2, 0], [0, -1, 0]])
def test_compressed_indices_that_crash_torchs_own_check_are_refused(tmp_path: Path,
                                                                   crow: list[int]) -> None:
    """torch's validator reads column indices at the offsets crow names: with offsets past
    nnz it crashes the process. safe_load refuses these before torch's check runs."""
    rows = len(crow) - 1
    t = torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor([], dtype=torch.int64),
                                torch.tensor([]), (rows, 3), check_invariants=False)
    assert _torch_says_invalid(t)
    path = tmp_path / "csr.pt"
    torch.save({"t": t}, path)
    with pytest.raises(TensorInvariantError) as info:
        ckptguard.safe_load(path)
    assert info.value.report.rule_ids() == {"CKG420"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 4), cols=st.integers(1, 4), data=st.data(),
       layout=st.sampled_from(["coo", "csr"]))
def test_random_sparse_indices(tmp_path: Path, rows: int, cols: int, data: Any,
                               layout: str) -> None:
    nnz = data.draw(st.integers(0, 4))
    idx = st.integers(-2, 6)
    if layout == "coo":
        ind = torch.tensor([[data.draw(idx) for _ in range(nnz)] for _ in range(2)],
                           dtype=torch.int64).reshape(2, nnz)
        t = torch.sparse_coo_tensor(ind, torch.arange(float(nnz)), (rows, cols),
                                    check_invariants=False)
    else:
        inner = sorted(data.draw(st.integers(0, nnz)) for _ in range(rows - 1))
        crow = torch.tensor([0, *inner, nnz], dtype=torch.int64)
        if data.draw(st.booleans()):
            crow[data.draw(st.integers(0, rows))] = data.draw(idx)
        col = torch.tensor([data.draw(idx) for _ in range(nnz)], dtype=torch.int64)
        t = torch.sparse_csr_tensor(crow, col, torch.arange(float(nnz)), (rows, cols),
                                    check_invariants=False)
    path = tmp_path / "s.pt"
    torch.save({"t": t}, path)
    invalid = _torch_says_invalid(t)
    try:
        out = ckptguard.safe_load(path)
    except TensorInvariantError as e:
        assert invalid, "ckptguard refused a tensor torch's own check accepts"
        assert "CKG420" in e.report.rule_ids()
        return
    assert not invalid, "ckptguard loaded a sparse tensor torch's own check refuses"
    _assert_same(out["t"], REAL_LOAD(path, weights_only=True)["t"])


# --- the decision tables, pinned both ways --------------------------------------------------

def test_layout_table() -> None:
    layouts = {str(v) for v in vars(torch).values() if isinstance(v, torch.layout)}
    assert LAYOUT_CHECKS == {
        "torch.strided": Check.STRIDED, "torch.sparse_coo": Check.SPARSE_COO,
        "torch.sparse_csr": Check.SPARSE_COMPRESSED, "torch.sparse_csc": Check.SPARSE_COMPRESSED,
        "torch.sparse_bsr": Check.SPARSE_COMPRESSED, "torch.sparse_bsc": Check.SPARSE_COMPRESSED,
    }
    assert set(LAYOUT_CHECKS) <= layouts
    assert layouts - set(LAYOUT_CHECKS) >= {"torch._mkldnn", "torch.jagged"}  # refused


def test_unchecked_layout_is_refused() -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no mkldnn in this torch build")
    with pytest.raises(Violation) as ei:
        check_tensor(torch.ones(2, 2).to_mkldnn())
    assert ei.value.rule_id == "CKG423"


def test_quantized_range_table() -> None:
    qdtypes = {str(v) for v in vars(torch).values()
               if isinstance(v, torch.dtype) and str(v).startswith(("torch.qint", "torch.quint"))}
    assert set(QUANTIZED_RANGES) == qdtypes
    for name, base in (("torch.quint8", torch.uint8), ("torch.qint8", torch.int8),
                       ("torch.qint32", torch.int32)):
        info = torch.iinfo(base)  # the integer type each quantized dtype stores
        assert QUANTIZED_RANGES[name] == (info.min, info.max)
    assert QUANTIZED_RANGES["torch.quint4x2"] == (0, 15)
    assert QUANTIZED_RANGES["torch.quint2x4"] == (0, 3)


@pytest.mark.parametrize(("zp", "ok"), [(0, True), (255, True), (256, False), (-1, False)])
def test_quint8_zero_point_edges(zp: int, ok: bool) -> None:
    t = torch._empty_affine_quantized((2,), scale=0.5, zero_point=zp, dtype=torch.quint8)
    if ok:
        check_tensor(t)
    else:
        with pytest.raises(Violation) as ei:
            check_tensor(t)
        assert ei.value.rule_id == "CKG421"


@pytest.mark.parametrize(("scale", "ok"), [(0.5, True), (1e-30, True), (0.0, False),
                                           (-1.0, False), (float("nan"), False),
                                           (float("inf"), False)])
def test_per_tensor_scale_at_load(scale: float, ok: bool) -> None:
    """The loader's own check (defence in depth behind the audit's CKG421)."""
    t = torch._empty_affine_quantized((2,), scale=scale, zero_point=0, dtype=torch.qint8)
    if ok:
        check_tensor(t)
    else:
        with pytest.raises(Violation) as ei:
            check_tensor(t)
        assert ei.value.rule_id == "CKG421"


def test_static_and_load_zero_point_tables_agree() -> None:
    from ckptguard.analysis.qparams import ZERO_POINT_RANGES

    assert {f"torch.{k}": v for k, v in ZERO_POINT_RANGES.items()} == QUANTIZED_RANGES


def test_meta_tensors_are_not_checked() -> None:
    check_tensor(torch.sparse_coo_tensor(torch.tensor([[9]]), torch.ones(1), (2,),
                                         check_invariants=False).to("meta"))


# --- the audit's quantizer table (analysis/qparams.py), both directions ----------------------

class _G:
    def __init__(self, full: str) -> None:
        self.full = full


class _Rec:
    def __init__(self, n: int) -> None:
        self.tensor = type("R", (), {"shape": (n,)})()


@pytest.mark.parametrize(("params", "size", "dtype", "problem"), [
    ((_G("torch.per_tensor_affine"), 0.1, 10), (2, 3), "quint8", None),
    ((_G("torch.per_tensor_affine"), 0.1, 255), (2, 3), "quint8", None),
    ((_G("torch.per_tensor_affine"), 0.1, 256), (2, 3), "quint8", "zero point"),
    ((_G("torch.per_tensor_affine"), 0.1, -129), (2, 3), "qint8", "zero point"),
    ((_G("torch.per_tensor_affine"), 0.0, 0), (2, 3), "qint8", "scale"),
    ((_G("torch.per_tensor_affine"), float("nan"), 0), (2, 3), "qint8", "scale"),
    ((_G("torch.per_tensor_affine"), 0.1), (2, 3), "qint8", "needs 3"),
    ((_G("torch.per_tensor_symmetric"), 0.1, 0), (2, 3), "qint8", "cannot be rebuilt"),
    ((_G("torch.per_channel_symmetric"), _Rec(2), _Rec(2), 0), (2, 3), "qint8",
     "cannot be rebuilt"),
    ((_G("torch.per_channel_affine"), _Rec(2), _Rec(2), 0), (2, 3), "qint8", None),
    ((_G("torch.per_channel_affine"), _Rec(3), _Rec(3), 1), (2, 3), "qint8", None),
    ((_G("torch.per_channel_affine_float_qparams"), _Rec(2), _Rec(2), 0), (2, 3), "quint8",
     None),
    ((_G("torch.per_channel_affine"), _Rec(2), _Rec(2), 2), (2, 3), "qint8", "axis"),
    ((_G("torch.per_channel_affine"), _Rec(2), _Rec(2), -1), (2, 3), "qint8", "axis"),
    ((_G("torch.per_channel_affine"), _Rec(1), _Rec(2), 0), (2, 3), "qint8", "1 scales"),
    ((_G("torch.per_channel_affine"), _Rec(2), [0, 0, 0], 0), (2, 3), "qint8", "3 zero points"),
    ("not a tuple", (2, 3), "qint8", "not a tuple"),
])
def test_qparams_table(params: Any, size: tuple[int, ...], dtype: str,
                       problem: str | None) -> None:
    from ckptguard.analysis.qparams import qparams_problem

    got = qparams_problem(params, size, dtype)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_view_outside_storage_is_refused() -> None:
    """Defence in depth behind torch's set_ and the audit's CKG404: a strided tensor whose
    view leaves its storage (its storage shrunk after the view was made) is refused."""
    base = torch.arange(12.0)
    view = base.view(3, 4)
    check_tensor(view)
    base.untyped_storage().resize_(16)  # 4 float32 elements left under a 12-element view
    with pytest.raises(Violation) as ei:
        check_tensor(view)
    assert ei.value.rule_id == "CKG404"


def _nested_file(tmp_path: Path, n: int, meta_strides: dict[str, tuple[int, ...]]) -> Path:
    """A nested tensor of ``n`` components of 1 element each over a 6-float buffer, whose
    sizes / strides / offsets tensors have the given strides (contiguous by default)."""
    import struct

    from ckg_families import generate_module

    g = generate_module()
    op = g.op

    def meta(key: str, which: str, values: list[int], shape: tuple[int, ...]) -> bytes:
        stride = meta_strides.get(which, (1,) if len(shape) == 1 else (shape[1], 1))
        numel = 1 if 0 in stride else len(values)
        return g.tensor(key, "LongStorage", numel, 0, shape, stride), \
            struct.pack(f"<{numel}q", *values[:numel])

    sizes, sz_b = meta("1", "sizes", [1] * n, (n, 1))
    strides, st_b = meta("2", "strides", [1] * n, (n, 1))
    offsets, of_b = meta("3", "offsets", list(range(n)) if n <= 6 else [0] * n, (n,))
    expr = g.P(op.GLOBAL("torch._utils", "_rebuild_nested_tensor"), op.MARK,
               g.tensor("0", "FloatStorage", 6, 0, (6,), (1,)), sizes, strides, offsets,
               op.TUPLE, op.REDUCE)
    pkl = g.state_dict([("n", expr)])
    p = tmp_path / "nested_meta.pt"
    p.write_bytes(g.torch_zip(pkl, [("0", g.F32_6), ("1", sz_b), ("2", st_b), ("3", of_b)],
                              seed="nested-meta"))
    return p


@pytest.mark.parametrize("n", [4, 1000])
def test_nested_offsets_that_are_not_contiguous_are_refused(tmp_path: Path, n: int) -> None:
    """torch's NestedTensorImpl reads the offsets tensor as a plain contiguous array from
    its data pointer (it asserts contiguity for sizes and strides, not for offsets); a
    stride-0 one over a single element (which .tolist() reads as n copies of it) makes torch
    read n x 8 bytes past an 8-byte storage. CKG422."""
    p = _nested_file(tmp_path, n, {"offsets": (0,)})
    assert ckptguard.scan(p).verdict is Verdict.SAFE  # the values are tensor data
    with pytest.raises(TensorInvariantError) as info:
        ckptguard.safe_load(p)
    assert "CKG422" in str(info.value) and "contiguous" in str(info.value)


def test_contiguous_nested_metadata_loads(tmp_path: Path) -> None:
    """The control: the same file with contiguous metadata loads, equal to torch.load."""
    p = _nested_file(tmp_path, 6, {})
    got = ckptguard.safe_load(p)["n"]
    want = torch.load(p, weights_only=True)["n"]
    assert [t.tolist() for t in got.unbind()] == [t.tolist() for t in want.unbind()]


#: block sparse tensors whose block has a zero side: torch's own validator accepts them and
#: ``to_dense`` divides by the block size (SIGFPE)
ZERO_BLOCKS = [(layout, block) for layout in ("bsr", "bsc")
               for block in ((2, 0), (0, 2), (0, 0))]


def _zero_block_file(tmp_path: Path, layout: str, block: tuple[int, int]) -> Path:
    ctor = getattr(torch, f"sparse_{layout}_tensor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ctor(torch.zeros(3, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                 torch.zeros(0, *block), (4, 4), check_invariants=False)
    p = tmp_path / f"{layout}_{block[0]}x{block[1]}.pt"
    torch.save({"s": t}, p)
    return p


@pytest.mark.parametrize(("layout", "block"), ZERO_BLOCKS)
def test_block_sparse_with_a_zero_block_side_is_refused(tmp_path: Path, layout: str,
                                                        block: tuple[int, int]) -> None:
    """Either side of the block counts: the scan reads the block shape from the values
    record, and the load-time walk checks it again (it checked only the compressed side: a
    BSR with 2x0 blocks loaded, and its to_dense died of SIGFPE)."""
    import signal
    import subprocess
    import sys

    p = _zero_block_file(tmp_path, layout, block)
    # the block shape is a record: the scan names it
    report = ckptguard.scan(p)
    assert report.verdict is Verdict.UNSAFE and report.rule_ids() == {"CKG420"}
    assert f"{block[0]}x{block[1]} blocks" in report.findings[0].message
    with pytest.raises(UnsafeCheckpointError) as info:
        ckptguard.safe_load(p)
    assert "CKG420" in str(info.value)
    # ... and the load-time walk refuses it too, whatever reached it
    with pytest.raises(Violation) as v:
        check_tensor(REAL_LOAD(p, weights_only=True)["s"])
    assert v.value.rule_id == "CKG420" and "block size" in str(v.value)
    code = ("import sys, warnings, torch\nwarnings.simplefilter('ignore')\n"
            "torch.load(sys.argv[1], weights_only=True)['s'].to_dense()\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True,
                         timeout=120, check=False)
    assert out.returncode == -signal.SIGFPE  # the payload fires under plain torch.load


@pytest.mark.parametrize("kind", ["csr_hybrid", "csr_batched", "bsr", "bsc", "bsr_hybrid",
                                  "bsr_batched", "bsc_batched_hybrid"])
def test_hybrid_and_batched_compressed_layouts_load(tmp_path: Path, kind: str) -> None:
    """Sparse dimensions sit after the batch ones and before the dense ones (a valid hybrid
    CSR was refused when the check read the last two dimensions)."""
    g = torch.Generator().manual_seed(3)
    make = {
        "csr_hybrid": lambda: torch.randn(4, 6, 3, generator=g).to_sparse_csr(dense_dim=1),
        "csr_batched": lambda: torch.stack([torch.eye(3), 2 * torch.eye(3)]).to_sparse_csr(),
        "bsr": lambda: torch.randn(4, 6, generator=g).to_sparse_bsr((2, 3)),
        "bsc": lambda: torch.randn(4, 6, generator=g).to_sparse_bsc((2, 3)),
        "bsr_hybrid": lambda: torch.randn(4, 6, 5, generator=g).to_sparse_bsr(
            (2, 3), dense_dim=1),
        "bsr_batched": lambda: torch.randn(2, 4, 6, generator=g).to_sparse_bsr((2, 3)),
        "bsc_batched_hybrid": lambda: torch.randn(2, 4, 6, 2, generator=g).to_sparse_bsc(
            (2, 3), dense_dim=1),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = make[kind]()
        p = tmp_path / f"{kind}.pt"
        torch.save({"s": t}, p)
        got = ckptguard.safe_load(p)["s"]
        want = torch.load(p, weights_only=True)["s"]
        assert got.layout == want.layout and torch.equal(got.to_dense(), want.to_dense())
