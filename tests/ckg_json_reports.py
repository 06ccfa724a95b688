"""Seeded tensor lists for the JSON encoder differentials (tests/test_report_jsoncore.py and
fuzz/native/fuzz_jsoncore.py): every field of ``TensorInfo`` with the values a report holds
and the odd ones the C encoder must write exactly as ``json.dumps`` does, or decline."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from ckptguard.analysis.safetensors import DTYPES as ST_DTYPES
from ckptguard.analysis.tensors import DTYPE_SIZES
from ckptguard.model import TensorInfo
from ckptguard.report import fastjson as fj

DTYPES = sorted({*DTYPE_SIZES, *ST_DTYPES})


class Str(str):
    """A str subclass (json.dumps writes its value; the encoder declines it)."""


class Int(int):
    """An int subclass."""


def _char(rng: random.Random) -> str:
    k = rng.randrange(10)
    if k < 4:
        return chr(rng.randrange(0x20, 0x7f))
    if k == 4:
        return rng.choice('"\\/\b\f\n\r\t\x00\x1f\x7f')
    if k == 5:
        return chr(rng.randrange(0x80, 0x800))
    if k == 6:
        return chr(rng.randrange(0xd800, 0xe000))  # a lone surrogate
    if k == 7:
        return chr(rng.randrange(0x10000, 0x110000))  # astral: a surrogate pair in JSON
    if k == 8:
        return chr(rng.choice([0x2028, 0x2029, 0xfeff, 0xffff, 0x10ffff, 0x80, 0xff, 0x100]))
    return chr(rng.randrange(0x800, 0xd800))


def text(rng: random.Random, n: int | None = None) -> str:
    n = rng.choice([0, 1, 3, 8, 40]) if n is None else n
    return "".join(_char(rng) for _ in range(n))


def integer(rng: random.Random) -> int:
    k = rng.randrange(8)
    if rng.random() < 0.002:
        return rng.choice([10**4300, -(10**4301)])  # over the int-to-str digit limit
    if k == 0:
        return rng.choice([0, 1, -1, 9, 10, -10, 2**31, -2**31, 2**63 - 1, -2**63, 2**63,
                           -2**63 - 1, 2**64, 10**18, 10**19, -(10**19)])
    if k == 1:
        return rng.randrange(-2**200, 2**200)
    if k == 2:
        return -rng.randrange(2**40)
    return rng.randrange(2**rng.choice([3, 16, 40, 62]))


def _int_tuple(rng: random.Random, odd: bool) -> Any:
    items: list[Any] = [integer(rng) if rng.random() < 0.3 else rng.randrange(1, 5000)
                        for _ in range(rng.choice([0, 1, 2, 4, 6]))]
    if odd and items and rng.random() < 0.5:
        items[rng.randrange(len(items))] = rng.choice([True, False, Int(3), 1.5, None, "1",
                                                        (1,), [2], 2**70])
    if odd and rng.random() < 0.15:
        return rng.choice([list(items), Str("ab"), 5, None, range(2)])
    return tuple(items)


def _scalar(rng: random.Random, usual: Any) -> Any:
    return rng.choice([None, True, False, integer(rng), text(rng), Str(text(rng, 2)), Int(7),
                       1.5, float("nan"), float("inf"), -0.0, (1, 2), [1], {"a": 1}, usual])


def tensor(rng: random.Random, odd: float = 0.0) -> TensorInfo:
    """One tensor; each field is odd (another type or value) with probability ``odd``."""
    def pick(usual: Any, strange: Any) -> Any:
        return strange() if rng.random() < odd else usual

    shape = _int_tuple(rng, rng.random() < odd)
    stride = rng.choice([None, _int_tuple(rng, rng.random() < odd)])
    return TensorInfo(
        name=pick(text(rng), lambda: _scalar(rng, "x")),
        dtype=pick(rng.choice(DTYPES), lambda: _scalar(rng, "float32")),
        shape=shape, stride=stride,
        storage=pick(rng.choice([None, "data/" + str(rng.randrange(99)), text(rng)]),
                     lambda: _scalar(rng, "0")),
        storage_offset=pick(rng.choice([0, 0, integer(rng)]), lambda: _scalar(rng, 0)),
        nbytes=pick(rng.randrange(10**9), lambda: _scalar(rng, 0)),
        storage_nbytes=pick(rng.choice([None, integer(rng)]), lambda: _scalar(rng, None)),
        data_offset=pick(rng.choice([None, integer(rng)]), lambda: _scalar(rng, None)),
        device=pick(rng.choice(["cpu", "cpu", "meta", "cuda:0"]), lambda: _scalar(rng, "cpu")),
        requires_grad=pick(rng.random() < 0.2, lambda: _scalar(rng, False)),
        file=pick(rng.choice([None, None, "shard-00001.safetensors", text(rng)]),
                  lambda: _scalar(rng, None)),
    )


def tensors(rng: random.Random) -> list[TensorInfo]:
    odd = rng.choice([0.0, 0.0, 0.0, 0.02, 0.2])
    out = [tensor(rng, odd) for _ in range(rng.choice([1, 1, 2, 3, 7, 20]))]
    if rng.random() < 0.02:  # an unset slot: to_dict raises AttributeError
        out.insert(rng.randrange(len(out) + 1), object.__new__(TensorInfo))
    return out


def reference_rows(ts: Sequence[TensorInfo], level: int | None) -> str | BaseException:
    """What ``fastjson._rows`` must return: ``json.dumps`` of the dicts (or what it raises)."""
    try:
        return fj._rows_by_json(ts, level)
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        return e


def fastjson_rows(ts: Sequence[TensorInfo], level: int | None) -> str | BaseException:
    """``fastjson._rows`` (with or without the C encoder), or what it raises."""
    try:
        return fj._rows(ts, level)
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        return e


def same_outcome(got: str | BaseException, want: str | BaseException) -> bool:
    if isinstance(want, BaseException) or isinstance(got, BaseException):
        return type(got) is type(want) and str(got) == str(want)
    return got == want


def dumps_rows(ts: Sequence[TensorInfo]) -> str:
    return json.dumps([t.to_dict() for t in ts], ensure_ascii=True, separators=(",", ":"))


__all__ = ["DTYPES", "Int", "Str", "dumps_rows", "fastjson_rows", "integer", "reference_rows", "same_outcome",
           "tensor", "tensors", "text"]
