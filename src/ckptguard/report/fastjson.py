"""Compact JSON of reports with many tensors, byte for byte what
``json.dumps(report.to_dict(), ensure_ascii=True, separators=(",", ":"))`` writes, without
building a dict per tensor.

A 50,000-tensor report is 12 MB of JSON. ``json.dumps`` over ``to_dict()`` builds 50,000
dicts of 12 keys and re-escapes 600,000 keys (~0.4 s and ~60 MB); here each *column*
(every tensor's name, every shape, ...) is encoded by one C-level pass (``map`` over
json's own ``encode_basestring_ascii``, ``int.__repr__``, or one ``json.dumps`` of the
column), and the rows are stitched together by slice assignment and one ``join``. A column
whose value types are not the plain ones (``str``, ``int``, ``bool``, ``None``, tuples of
``int``) makes the whole array fall back to ``json.dumps`` of the dicts: the output is
identical either way, only the cost differs (tests/test_report_fastjson.py proves it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import Any

from ..model import Report, TensorInfo

_COMPACT = (",", ":")
_NONE = type(None)
#: TensorInfo.to_dict's keys, in its order
_TENSOR_KEYS = ("name", "dtype", "shape", "stride", "storage", "storage_offset", "nbytes",
                "storage_nbytes", "data_offset", "device", "requires_grad", "file")
_BOOL = {True: "true", False: "false"}

Encoded = list[str]


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, separators=_COMPACT)


def _str_or_null(v: str | None) -> str:
    return "null" if v is None else str(encode_basestring_ascii(v))


def _int_list(v: tuple[int, ...]) -> str:
    return "[" + ",".join(map(int.__repr__, v)) + "]"


def _int_lists(values: Sequence[Any]) -> Encoded:
    """``[1,2]`` for each tuple of ints; each distinct shape is encoded once (a model has
    a few dozen)."""
    cache: dict[tuple[int, ...], str] = {}
    get = cache.get
    out: Encoded = []
    add = out.append
    for v in values:
        e = get(v)
        if e is None:
            e = cache[v] = _int_list(v)
        add(e)
    return out


def _plain_ints(values: Sequence[Any]) -> bool:
    """Every item a tuple of exact ints (``(True,)`` equals ``(1,)`` as a dict key: the
    shape cache needs the exact types)."""
    return set(map(type, chain.from_iterable(values))) <= {int}


def encode_column(values: Sequence[Any]) -> Encoded | None:
    """Each value's compact JSON, or None when the column holds a type this does not
    encode (the caller then falls back to ``json.dumps``)."""
    if not values:
        return []
    types = set(map(type, values))
    if types <= {str}:
        return list(map(encode_basestring_ascii, values))
    if types <= {int}:
        return list(map(int.__repr__, values))
    if types <= {bool}:
        return list(map(_BOOL.__getitem__, values))
    if types <= {_NONE}:
        return ["null"] * len(values)
    if types <= {int, _NONE}:  # ints and nulls only: no commas inside an item
        return compact(values)[1:-1].split(",")
    if types <= {str, _NONE}:
        return list(map(_str_or_null, values))
    if types <= {tuple} and _plain_ints(values):
        return _int_lists(values)
    if types <= {tuple, _NONE}:
        present = [v for v in values if v is not None]
        if _plain_ints(present):
            enc = iter(_int_lists(present))
            return ["null" if v is None else next(enc) for v in values]
    return None


#: rows encoded at a time: the columns of a batch are small, so a report of any size is
#: written in bounded memory
BATCH = 4096


def _rows(tensors: Sequence[TensorInfo]) -> str:
    """The rows of ``tensors`` (non-empty), comma-separated, without the brackets."""
    n = len(tensors)
    if set(map(type, tensors)) != {TensorInfo}:  # a subclass may encode differently
        return compact([t.to_dict() for t in tensors])[1:-1]
    slots: list[tuple[str, Encoded]] = []  # (the text before the column, the column)
    text = "{"
    for i, key in enumerate(_TENSOR_KEYS):
        col = encode_column(list(map(TensorInfo.__dict__[key].__get__, tensors)))
        if col is None:
            return compact([t.to_dict() for t in tensors])[1:-1]
        text += ("," if i else "") + encode_basestring_ascii(key) + ":"
        if col.count(col[0]) == n:  # the same text in every row
            text += col[0]
        else:
            slots.append((text, col))
            text = ""
    trail = text + "}"
    if not slots:
        return ",".join([trail] * n)
    width = 2 * len(slots)
    pieces: list[str] = [""] * (width * n)
    for j, (lead, col) in enumerate(slots):
        pieces[2 * j::width] = [lead] * n
        pieces[2 * j + 1::width] = col
    pieces[width::width] = [trail + "," + slots[0][0]] * (n - 1)
    return "".join(pieces) + trail


def tensors_chunks(tensors: Sequence[TensorInfo]) -> Iterator[str]:
    """``compact([t.to_dict() for t in tensors])`` in pieces of ``BATCH`` rows: a column
    with one value throughout (``"device":"cpu"``, ``"file":null``) is folded into the
    text between the others, and the rows are stitched by slice assignment and one
    ``join``."""
    yield "["
    for i in range(0, len(tensors), BATCH):
        yield ("," if i else "") + _rows(tensors[i:i + BATCH])
    yield "]"


def tensors_json(tensors: Sequence[TensorInfo]) -> str:
    return "".join(tensors_chunks(tensors))


#: Report.to_dict's keys, in its order: the tensors and children are encoded here
_REPORT_KEYS = ("path", "format", "verdict", "findings", "problems", "tensors", "identity",
                "members", "metadata", "bytes_read", "limits", "tool_version", "children")
_HEAD = _REPORT_KEYS[:_REPORT_KEYS.index("tensors")]
_TAIL = _REPORT_KEYS[_REPORT_KEYS.index("tensors") + 1:-1]


def report_chunks(report: Report) -> Iterator[str]:
    """``compact(report.to_dict())`` in pieces, the tensors (its own and its children's)
    column by column."""
    if type(report) is not Report:
        yield compact(report.to_dict())
        return
    d = dataclasses.replace(report, tensors=(), children=()).to_dict()
    if tuple(d) != _REPORT_KEYS:  # pragma: no cover - Report.to_dict changed: stay exact
        yield compact(report.to_dict())
        return
    head = compact({k: d[k] for k in _HEAD})
    yield head[:-1] + ',"tensors":'
    yield from tensors_chunks(report.tensors)
    yield "," + compact({k: d[k] for k in _TAIL})[1:-1] + ',"children":['
    for i, c in enumerate(report.children):
        if i:
            yield ","
        yield from report_chunks(c)
    yield "]}"


def report_json(report: Report) -> str:
    return "".join(report_chunks(report))


__all__ = ["BATCH", "compact", "encode_column", "report_chunks", "report_json",
           "tensors_chunks", "tensors_json"]
