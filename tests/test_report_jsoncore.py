"""The C tensor-row encoder (``_native/jsoncore.c``) against ``json.dumps``: every fixture's
report (whole documents, compact and indented, with the module and with the pure path),
12,000 seeded tensor lists with hostile strings, huge ints, every dtype, odd types and
unset slots (the encoder writes json.dumps' bytes or declines, and then the Python path
writes them or raises what json.dumps raises), and the cases it must decline."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ckg_json_reports import (
    Int,
    Str,
    fastjson_rows,
    reference_rows,
    same_outcome,
    tensor,
    tensors,
)

import ckptguard
from ckptguard.model import Report, TensorInfo
from ckptguard.report import ScanResult
from ckptguard.report import fastjson as fj
from ckptguard.report.jsonreport import dumps, iter_json, scan_document

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CORE = fj._core()  # the C encoder set up for TensorInfo (init() done), or None
needs_core = pytest.mark.skipif(CORE is None, reason="jsoncore not built")
LEVELS = [None, 1, 2, 3, 6]  # rows are written at level 1 and deeper (or compact)


@pytest.fixture()
def pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """fastjson without the C encoder (as with CKPTGUARD_PURE=1 or no compiler)."""
    monkeypatch.setattr(fj, "_CORE", [None])
    yield


def _all_reports(r: Report) -> Iterator[Report]:
    yield r
    for c in r.children:
        yield from _all_reports(c)


def _fixture_reports() -> list[Report]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    paths = sorted({e["path"] for e in manifest["fixtures"]})
    assert len(paths) > 200
    return [ckptguard.scan(str(FIXTURES / p)) for p in paths]


@needs_core
def test_the_core_is_used_for_plain_tensors() -> None:
    ts = [TensorInfo(f"w{i}", "float32", (i, 3), (3, 1), str(i), 0, 12 * i) for i in range(50)]
    assert fj._core() is CORE
    for level in LEVELS:
        got = CORE.rows(ts, -1 if level is None else level)
        assert got is not None and got == fj._rows_by_json(ts, level)


@pytest.mark.slow
def test_every_fixture_report_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fixture's report, as a whole document (compact and indented) and row by row
    at several levels: json.dumps' bytes with the C encoder and without it."""
    reports = _fixture_reports()
    with_tensors = 0
    for r in reports:
        result = ScanResult(reports=(r,))
        want = dumps(scan_document(result))
        for core in ([CORE] if CORE is not None else []) + [None]:
            monkeypatch.setattr(fj, "_CORE", [core])
            assert "".join(iter_json(result)) == want, r.path
            assert fj.indented(fj.report_tree(r)) == json.dumps(r.to_dict(), indent=2,
                                                                 ensure_ascii=True)
            assert fj.report_json(r) == json.dumps(r.to_dict(), ensure_ascii=True,
                                                   separators=(",", ":"))
        for sub in _all_reports(r):
            if not sub.tensors:
                continue
            with_tensors += 1
            ts = list(sub.tensors)
            for level in LEVELS:
                want_rows = fj._rows_by_json(ts, level)
                if CORE is not None:
                    assert CORE.rows(ts, -1 if level is None else level) == want_rows
    assert with_tensors > 30


@pytest.mark.slow
def test_seeded_tensor_lists_core_pure_and_json_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """12,000 seeded lists: the C encoder's text (when it does not decline) is json.dumps';
    fastjson with and without it gives json.dumps' text or raises what json.dumps raises."""
    rng = random.Random(1234)
    accepted = declined = raised = 0
    for i in range(12_000):
        ts = tensors(rng)
        level = rng.choice(LEVELS)
        want = reference_rows(ts, level)
        if isinstance(want, BaseException):
            raised += 1
        if CORE is not None:
            got = CORE.rows(ts, -1 if level is None else level)
            if got is None:
                declined += 1
            else:
                accepted += 1
                assert got == want, (i, ts)
            monkeypatch.setattr(fj, "_CORE", [CORE])
            assert same_outcome(fastjson_rows(ts, level), want), (i, ts)
        monkeypatch.setattr(fj, "_CORE", [None])
        assert same_outcome(fastjson_rows(ts, level), want), (i, ts)
    assert raised > 50
    if CORE is not None:
        assert accepted > 6000 and declined > 500, (accepted, declined)


@needs_core
@pytest.mark.parametrize("value", [
    "", "plain", '"', "\\", "/", "\x00", "\x1f", "\x7f", "\x80", "\u00e9", "\u2028", "\ud800",
    "\udfff", "\ud83d\ude00", "\U0001f600", "\U0010ffff", "\uffff", "\b\f\n\r\t",
    "a" * 10_000 + "\U0001f600" * 1000,
])
def test_strings_are_encode_basestring_ascii(value: str) -> None:
    t = TensorInfo(value, value, (), storage=value, device=value, file=value)
    got = CORE.rows([t], -1)
    assert got == json.dumps(t.to_dict(), ensure_ascii=True, separators=(",", ":"))


@needs_core
@pytest.mark.parametrize("value", [0, -1, 1, 9, 10, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64,
                                   10**100, -(10**300), True, False, None])
def test_ints_bools_and_none(value: Any) -> None:
    t = TensorInfo("n", "f", (value,) if type(value) in (int, bool) else (),
                   stride=(value, 1) if type(value) in (int, bool) else None,
                   storage_offset=value, nbytes=value, storage_nbytes=value,
                   data_offset=value, requires_grad=value)
    for level in LEVELS:
        assert CORE.rows([t], -1 if level is None else level) == fj._rows_by_json([t], level)


@needs_core
@pytest.mark.parametrize("make", [
    lambda: TensorInfo(Str("a"), "f", ()),  # a str subclass
    lambda: TensorInfo("a", "f", (Int(1),)),  # an int subclass in a shape
    lambda: TensorInfo("a", "f", (), nbytes=Int(3)),
    lambda: TensorInfo("a", "f", [1, 2]),  # type: ignore[arg-type]  # a list shape
    lambda: TensorInfo("a", "f", (1.5,)),  # type: ignore[arg-type]
    lambda: TensorInfo("a", "f", (), nbytes=1.5),  # type: ignore[arg-type]
    lambda: TensorInfo("a", "f", (), stride=[1]),  # type: ignore[arg-type]
    lambda: TensorInfo("a", "f", ((1,),)),  # type: ignore[arg-type]
    lambda: TensorInfo("a", "f", (), file=("x",)),  # type: ignore[arg-type]
    lambda: TensorInfo("a", "f", (), data_offset=10**5000),  # over the int-to-str digit limit
    lambda: object.__new__(TensorInfo),  # unset slots
])
def test_what_the_core_declines(make: Any) -> None:
    t = make()
    for level in LEVELS:
        assert CORE.rows([TensorInfo("ok", "f", (1,)), t], -1 if level is None else level) \
            is None


@needs_core
def test_the_core_declines_other_containers_and_classes() -> None:
    class Sub(TensorInfo):
        __slots__ = ()

    t = TensorInfo("a", "f", (1,))
    assert CORE.rows([t, Sub("b", "f", ())], -1) is None
    assert CORE.rows(iter([t]), -1) is None
    assert CORE.rows([], -1) is None
    assert CORE.rows([t], 65) is None and CORE.rows([t], -2) is None
    assert CORE.rows((t,), 64) == fj._rows_by_json([t], 64)
    with pytest.raises(TypeError):
        CORE.init(TensorInfo, ("name",))
    with pytest.raises((TypeError, AttributeError)):
        CORE.init(dict, fj._TENSOR_KEYS)

    class Dicted:  # instances with a __dict__: not a plain slots class
        name = 1

    with pytest.raises(TypeError):
        CORE.init(Dicted, fj._TENSOR_KEYS)
    CORE.init(TensorInfo, fj._TENSOR_KEYS)  # (set up again for the other tests)


def test_the_pure_path_writes_the_same(pure: None) -> None:
    ts = [tensor(random.Random(i)) for i in range(200)]
    assert fj._core() is None
    for level in LEVELS:
        assert same_outcome(fastjson_rows(ts, level), reference_rows(ts, level))


@pytest.mark.parametrize("core", ["native", "pure"])
def test_the_first_error_in_row_order_is_json_dumps_one(core: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that to_dict cannot write (a non-iterable shape) before a row with an int over
    the digit limit in an earlier column: json.dumps raises the first row's TypeError, and
    so does fastjson (found by fuzz/native/fuzz_jsoncore.py: the columns raised the
    ValueError)."""
    if core == "native" and CORE is None:
        pytest.skip("jsoncore not built")
    monkeypatch.setattr(fj, "_CORE", [CORE if core == "native" else None])
    ts = [TensorInfo("a", "f", 5),  # type: ignore[arg-type]
          TensorInfo("b", "f", (1,), storage_offset=10**4400)]
    for level in LEVELS:
        want = reference_rows(ts, level)
        assert isinstance(want, TypeError)
        assert same_outcome(fastjson_rows(ts, level), want)
    huge = [TensorInfo("b", "f", (1,), storage_offset=10**4400)]
    assert isinstance(fastjson_rows(huge, None), ValueError)
