"""safetensors tensors without elements whose contiguous strides overflow 64 bits (security
review round 8): the crate counts their elements (0) and accepted them, the audit said SAFE,
and then torch refused to build them ("Stride calculation overflowed") -- in safe_load, its
meta and copy loads, the gate, and for some shapes in the safetensors binding itself. The
audit now refuses them (CKG504) on the native, pure and strict paths alike, and keeps
every shape torch can build."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from ckg_st_headers import three_ways

import ckptguard
from ckptguard.model import Verdict

torch = pytest.importorskip("torch")

I64 = 2**63 - 1


def blob(shape: list[int], dtype: str = "F32") -> bytes:
    header = {"a": {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]},
              "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\x07"


def _stride0(shape: list[int]) -> int:
    out = 1
    for d in shape[1:]:
        out *= max(d, 1)
    return out


#: shapes without elements; which of them torch can lay out (its first stride fits int64)
SHAPES: list[list[int]] = [
    [0], [0, 3], [5, 0], [0, 0], [0, I64], [I64, 0], [2**62, 0, 2**62], [0, 2**31, 2**31],
    [0, 2**32, 2**31], [0, 2**62, 2**62], [0] + [2] * 62, [0] + [2] * 63, [0] + [2] * 70,
    [3, 0, 2**62, 2], [3, 0, 2**61, 4], [0, I64, 1, 1], [0, I64, 2],
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s))[:60])
def test_zero_element_strides(tmp_path: Path, shape: list[int]) -> None:
    data = blob(shape)
    fits = _stride0(shape) <= I64
    proven, nat, pure, strict = three_ways(data)
    assert nat == pure == strict
    rules = {f["rule_id"] for f in nat["findings"]}
    assert rules == (set() if fits else {"CKG504"}), rules
    assert proven is fits
    p = tmp_path / "z.safetensors"
    p.write_bytes(data)
    report = ckptguard.scan(str(p))
    assert report.verdict is (Verdict.SAFE if fits else Verdict.UNSAFE)
    if fits:  # what the audit calls SAFE loads, as torch builds it
        out = ckptguard.safe_load(p)
        assert tuple(out["a"].shape) == tuple(shape) and out["a"].numel() == 0
        meta = ckptguard.safe_load(p, map_location="meta")
        assert tuple(meta["a"].shape) == tuple(shape)
        assert ckptguard.safe_load(p, copy=True)["b"].tolist() == [7]
    else:  # and what it refuses, torch itself cannot build
        with pytest.raises(RuntimeError, match="overflow"):
            torch.empty(shape)
