"""The JSON report of many tensors (report/fastjson.py, jsonreport.iter_json): byte for byte
``json.dumps`` of ``to_dict()``, written in bounded pieces, without a dict per tensor."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ckptguard.cli.common import atomic_write
from ckptguard.model import (
    Effect,
    FileIdentity,
    Finding,
    Format,
    Location,
    Region,
    Report,
    Severity,
    TensorInfo,
    Verdict,
)
from ckptguard.report import FormatOptions, ScanResult, render, render_chunks
from ckptguard.report import fastjson as fj
from ckptguard.report.jsonreport import COMPACT_ABOVE, dumps, iter_json, scan_document

_NAMES = ["w", "layer.0.weight", "é", "日本", "a\"b", "back\\slash", "ctl\x01\x7f", "\ud800x",
          "tab\t", "", "</script>", "x" * 200]


def _tensor(rng: random.Random, i: int, odd: bool) -> TensorInfo:
    shape: Any = tuple(rng.choice([0, 1, 3, 4096, 2**40]) for _ in range(rng.randrange(4)))
    stride: Any = rng.choice([None, tuple(range(len(shape))), (1,) * len(shape)])
    storage: Any = rng.choice([None, str(i), "data/" + str(i % 7)])
    data_offset: Any = rng.choice([None, 64 * i, 2**63 + i])
    requires_grad: Any = rng.random() < 0.2
    if odd:  # types the column encoder leaves to json.dumps (the output must not change)
        k = rng.randrange(5)
        if k == 0:
            shape = (True, 2)
        elif k == 1:
            data_offset = -5
        elif k == 2:
            stride = [1, 2]
        elif k == 3:
            storage = 7
        else:
            requires_grad = 1
    return TensorInfo(name=rng.choice(_NAMES) + str(i), dtype=rng.choice(["float32", "bf16"]),
                      shape=shape, stride=stride, storage=storage,
                      storage_offset=rng.choice([0, 0, 5]), nbytes=rng.randrange(10**6),
                      storage_nbytes=rng.choice([None, 10]), data_offset=data_offset,
                      device=rng.choice(["cpu", "cpu", "meta"]), requires_grad=requires_grad,
                      file=rng.choice([None, None, "shard-1.safetensors"]))


def _report(rng: random.Random, n: int, odd: bool = False, children: int = 0) -> Report:
    loc = Location("p\u00e9/x.bin", "archive/data.pkl", 91)
    findings = tuple(Finding("CKG101", Severity.CRITICAL, Effect.BLOCKS, "m\x1b[31m", loc,
                             (("global", "os.system"),), "advice") for _ in range(rng.randrange(3)))
    return Report(
        path="/tmp/\u65e5.bin", format=Format.TORCH_ZIP, verdict=rng.choice(list(Verdict)),
        findings=findings, tensors=tuple(_tensor(rng, i, odd and rng.random() < 0.3)
                                         for i in range(n)),
        identity=FileIdentity(1, 2, 3, 4, 5, (Region(0, 10, "ab"),)),
        members=tuple(f"archive/data/{i}" for i in range(n)),
        metadata=(("k", "v\u2028"),), bytes_read=123, limits=(("max_tensors", 5.0),),
        tool_version="9", children=tuple(_report(rng, rng.randrange(50)) for _ in range(children)))


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


@pytest.mark.parametrize("n", [0, 1, 2, fj.BATCH - 1, fj.BATCH, fj.BATCH + 1, 2 * fj.BATCH + 3])
def test_report_json_is_json_dumps_byte_for_byte(n: int) -> None:
    rng = random.Random(n)
    for odd in (False, True):
        r = _report(rng, n, odd=odd, children=2)
        assert fj.report_json(r) == _compact(r.to_dict())
        assert fj.tensors_json(r.tensors) == _compact([t.to_dict() for t in r.tensors])


def test_random_reports_byte_for_byte() -> None:
    rng = random.Random(1315)
    for _ in range(300):
        r = _report(rng, rng.randrange(40), odd=rng.random() < 0.5, children=rng.randrange(3))
        assert fj.report_json(r) == _compact(r.to_dict())


@pytest.mark.parametrize("ts", [
    (TensorInfo("a", "f", (1,), stride=(True,)), TensorInfo("b", "f", (2,), stride=(2,))),
    (TensorInfo("a", "f", (1,), stride=(1,)), TensorInfo("b", "f", (1,), stride=(True,))),
    (TensorInfo("a", "f", (), nbytes=1, storage_nbytes=True),
     TensorInfo("b", "f", (), nbytes=0, storage_nbytes=False)),
    (TensorInfo("a", "f", (), nbytes=1, storage_nbytes=1, storage_offset=True),
     TensorInfo("b", "f", (), nbytes=1, storage_nbytes=1, storage_offset=True)),
    (TensorInfo("a", "f", (), storage="a", file="a"), TensorInfo("b", "f", (), storage="b")),
], ids=["bool-stride-equal-to-shape", "bool-in-one-row", "bool-equal-to-int-column",
        "constant-bool-for-int", "str-and-null"])
def test_equal_values_of_other_types_are_not_shared(ts: tuple[TensorInfo, ...]) -> None:
    """``(1,) == (True,)`` and ``1 == True``: a column is never reused or folded from values
    that are equal but encode differently."""
    for level in (None, 2):
        want = (_compact([t.to_dict() for t in ts]) if level is None else
                json.dumps([t.to_dict() for t in ts], indent=2).replace("\n", "\n" + "  " * level))
        assert fj.tensors_json(ts, level) == want


def test_constant_and_varying_columns() -> None:
    same = tuple(TensorInfo("a", "f", (1,)) for _ in range(10))
    assert fj.tensors_json(same) == _compact([t.to_dict() for t in same])
    one = (TensorInfo("a", "f", ()),)
    assert fj.tensors_json(one) == _compact([one[0].to_dict()])


def test_a_subclass_is_encoded_by_its_own_to_dict() -> None:
    @dataclass(frozen=True, slots=True)
    class Tagged(TensorInfo):
        def to_dict(self) -> dict[str, Any]:
            return {**TensorInfo.to_dict(self), "tag": 1}

    ts = (TensorInfo("a", "f", (1,)), Tagged("b", "f", (2,)))
    assert fj.tensors_json(ts) == _compact([t.to_dict() for t in ts])


@pytest.mark.parametrize("n", [0, 3, 3000, 12000])
def test_document_is_dumps_of_scan_document(n: int) -> None:
    """Small documents stay indented, large ones compact, exactly as ``dumps`` chooses."""
    rng = random.Random(n)
    result = ScanResult(reports=(_report(rng, n, children=1), _report(rng, 2)), skipped=1,
                        notes=("n\u00e9",))
    want = dumps(scan_document(result))
    assert render("json", result) == want
    assert "".join(render_chunks("json", result, FormatOptions())) == want
    assert want.startswith("{\n") == (len(_compact(scan_document(result))) <= COMPACT_ABOVE)


def test_large_document_is_written_in_bounded_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """RSS: no dict per tensor is built, and no piece is much larger than the indented
    threshold plus one batch of rows."""
    result = ScanResult(reports=(_report(random.Random(5), 40000),))
    want = dumps(scan_document(result))

    def no_dicts(self: TensorInfo) -> dict[str, Any]:
        raise AssertionError("a dict per tensor")

    monkeypatch.setattr(TensorInfo, "to_dict", no_dicts)
    pieces = list(iter_json(result))
    assert "".join(pieces) == want
    assert len(pieces) > 10
    assert max(map(len, pieces)) < COMPACT_ABOVE + 2 * fj.BATCH * 300


def test_output_file_from_pieces(tmp_path: Path) -> None:
    result = ScanResult(reports=(_report(random.Random(9), 9000),))
    out = tmp_path / "r.json"
    atomic_write(str(out), render_chunks("json", result))
    assert out.read_text(encoding="utf-8") == render("json", result)


def test_other_formats_render_in_one_piece() -> None:
    result = ScanResult(reports=(_report(random.Random(2), 3),))
    for fmt in ("text", "sarif"):
        assert list(render_chunks(fmt, result)) == [render(fmt, result)]


# --- the indented layout ---------------------------------------------------------------------

def test_indented_documents_byte_for_byte() -> None:
    """Random results of every shape, with and without odd tensor types (those batches go
    through json.dumps), indented exactly as ``json.dumps(indent=2)``."""
    from ckptguard.report.jsonreport import indented_document

    rng = random.Random(1316)
    for _ in range(150):
        reports = tuple(_report(rng, rng.randrange(30), odd=rng.random() < 0.4,
                                children=rng.randrange(3)) for _ in range(rng.randrange(3)))
        result = ScanResult(reports=reports, skipped=rng.randrange(3),
                            notes=tuple(rng.sample(_NAMES, rng.randrange(3))),
                            interrupted=rng.random() < 0.2)
        want = json.dumps(scan_document(result), indent=2, ensure_ascii=True) + "\n"
        assert indented_document(result) == want


def _value(rng: random.Random, depth: int) -> Any:
    k = rng.randrange(12 if depth < 4 else 7)
    leaves: list[Any] = [rng.choice(_NAMES), rng.randrange(-10**20, 10**20), rng.random() * 1e6,
                         rng.choice([True, False, None]), float("nan"), float("-inf"), 0.0]
    if k < 7:
        return leaves[k]
    if k < 9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if k < 10:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {rng.choice(_NAMES): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_indented_values_byte_for_byte() -> None:
    rng = random.Random(1317)
    for _ in range(2000):
        v = _value(rng, 0)
        assert fj.indented(v) == json.dumps(v, indent=2, ensure_ascii=True), v


@pytest.mark.parametrize("value", [{1: "a"}, {"a": {None: 1}}, [Severity.HIGH], Format.ZIP,
                                   {"a": {1, 2}}, b"x"])
def test_indented_refuses_what_it_cannot_reproduce(value: Any) -> None:
    with pytest.raises(fj.Unencodable):
        fj.indented(value)


@pytest.mark.parametrize("level", [None, 0, 1, 3])
def test_tensor_batches_through_json_dumps_match(level: int | None) -> None:
    rng = random.Random(level or 0)
    ts = tuple(_tensor(rng, i, odd=True) for i in range(7))
    got = fj.tensors_json(ts, level)
    want = (_compact([t.to_dict() for t in ts]) if level is None else
            json.dumps([t.to_dict() for t in ts], indent=2).replace("\n", "\n" + "  " * level))
    assert got == want


@pytest.mark.parametrize("name_len", [10, 400, 700])
def test_few_tensors_with_long_names_choose_like_dumps(name_len: int) -> None:
    """Few tensors but a large document (the size estimate says small, the text says
    large): still exactly what ``dumps`` chooses."""
    ts = tuple(TensorInfo("n" * name_len + str(i), "float32", (i,)) for i in range(2500))
    result = ScanResult(reports=(Report("p", Format.SAFETENSORS, Verdict.SAFE, tensors=ts),))
    want = dumps(scan_document(result))
    assert render("json", result) == want
    assert want.startswith("{\n") == (name_len < 400)


def test_from_file_json_lines_byte_for_byte() -> None:
    from ckptguard.cli.scan_list import json_line
    from ckptguard.report.jsonreport import lone_surrogates_as_text

    rng = random.Random(1318)
    for _ in range(100):
        r = _report(rng, rng.randrange(20), odd=rng.random() < 0.3, children=rng.randrange(2))
        sev = r.max_severity
        row = {"target": "hf://o/n\u00e9", "verdict": r.verdict.value,
               "max_severity": sev.name.lower() if sev is not None else None,
               "rules": sorted(r.rule_ids()), "bytes_read": r.bytes_read, "report": r.to_dict()}
        # byte for byte json.dumps, with lone surrogates spelled as text (test_json_surrogates)
        assert json_line("hf://o/n\u00e9", r) == lone_surrogates_as_text(
            json.dumps(row, separators=(",", ":")))
