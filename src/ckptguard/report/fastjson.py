"""JSON of reports with many tensors, byte for byte what ``json.dumps`` writes for
``to_dict()`` (compact, and ``indent=2``), without building a dict per tensor.

A 50,000-tensor report is 12 MB of JSON. ``json.dumps`` over ``to_dict()`` builds 50,000
dicts of 12 keys and re-escapes 600,000 keys (~0.4 s and ~60 MB); here each *column*
(every tensor's name, every shape, ...) is encoded by one C-level pass (``map`` over
json's own ``encode_basestring_ascii``, ``int.__repr__``, or one ``json.dumps`` of the
column), a column with one value throughout is folded into the text between the others,
and the rows are stitched together by slice assignment and one ``join``. The indented
layout (documents under ``jsonreport.COMPACT_ABOVE``) is written by :func:`indented`, which
``json.dumps(indent=2)`` would otherwise do in its pure-Python encoder.

A value of a type this module does not encode itself (anything but ``str``, ``int``,
``float``, ``bool``, ``None``, lists, tuples and ``str``-keyed dicts of them; tensor
columns: tuples of ``int`` or ``None``) goes through ``json.dumps`` (a batch of tensors,
or the whole indented document): the output is identical either way, only the cost
differs (tests/test_report_fastjson.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
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
#: the columns to_dict writes as lists (``list(shape)``): the types encoded as such here
_LIST_TYPES: dict[str, set[type]] = {"shape": {tuple}, "stride": {tuple, type(None)}}
#: value types whose equal values always have the same JSON text (not float: 0.0 == -0.0;
#: not tuple: (1,) == (True,))
_SCALARS = frozenset({str, int, bool, type(None)})
#: rows encoded at a time: the columns of a batch are small, so a report of any size is
#: written in bounded memory
BATCH = 4096

Encoded = list[str]


class Unencodable(Exception):
    """A value :func:`indented` does not encode itself (the caller uses ``json.dumps``)."""


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, separators=_COMPACT)


def _nl(level: int | None) -> str:
    """The line break and indentation before an item at ``level`` (nothing when compact)."""
    return "" if level is None else "\n" + "  " * level


# --- columns ---------------------------------------------------------------------------------

def _str_or_null(v: str | None) -> str:
    return "null" if v is None else str(encode_basestring_ascii(v))


class _IntLists(dict[tuple[int, ...], str]):
    """tuple of ints -> its JSON list (items at ``level + 1``), encoded on first use."""

    def __init__(self, level: int | None) -> None:
        super().__init__()
        self.sep = "," + _nl(None if level is None else level + 1)
        self.close = _nl(level) + "]"

    def __missing__(self, v: tuple[int, ...]) -> str:
        e = self[v] = ("[" + self.sep[1:] + self.sep.join(map(int.__repr__, v)) + self.close
                       if v else "[]")
        return e


def _int_lists(values: Sequence[Any], level: int | None) -> Encoded:
    """Each tuple of ints as a JSON list (its items at ``level + 1``); each distinct shape
    is encoded once (a model has a few dozen), the lookups in one C-level ``map``."""
    return list(map(_IntLists(level).__getitem__, values))


def _plain_ints(values: Sequence[Any]) -> bool:
    """Every item a tuple of exact ints (``(True,)`` equals ``(1,)`` as a dict key: the
    shape cache needs the exact types)."""
    return set(map(type, chain.from_iterable(values))) <= {int}


def encode_column(values: Sequence[Any], level: int | None = None) -> Encoded | None:
    """Each value's JSON (a list value's items at ``level + 1``; compact when ``level`` is
    None), or None when the column holds a type this does not encode."""
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
        return _int_lists(values, level)
    if types <= {tuple, _NONE}:
        present = [v for v in values if v is not None]
        if _plain_ints(present):
            enc = iter(_int_lists(present, level))
            return ["null" if v is None else next(enc) for v in values]
    return None


# --- tensors ---------------------------------------------------------------------------------

def _rows_by_json(tensors: Sequence[TensorInfo], level: int | None) -> str:
    """``_rows`` through ``json.dumps`` of the dicts (any type, any subclass)."""
    dicts = [t.to_dict() for t in tensors]
    if level is None:
        return compact(dicts)[1:-1]
    # the list at level 0, its rows at 1: shift every line to put the rows at ``level``
    text = json.dumps(dicts, indent=2, ensure_ascii=True).replace("\n", _nl(level - 1))
    return text[len("[" + _nl(level)):-len(_nl(level - 1) + "]")]


_CORE: list[Any] = []  # [module or None], once


def _core() -> Any:
    """``_native/jsoncore`` set up for :class:`TensorInfo`, or None (not built,
    ``CKPTGUARD_PURE=1``, or the class is not the plain slots class it reads)."""
    if not _CORE:
        from .._native import native

        core = native("jsoncore")
        if core is not None:
            try:
                core.init(TensorInfo, _TENSOR_KEYS)
            except (TypeError, AttributeError):
                core = None
        _CORE.append(core)
    return _CORE[0]


def _rows(tensors: Sequence[TensorInfo], level: int | None) -> str:
    """The rows of ``tensors`` (non-empty), each a tensor object at ``level`` (compact
    when None), separated by ``,`` (and a line break)."""
    if set(map(type, tensors)) != {TensorInfo}:  # a subclass may encode differently
        return _rows_by_json(tensors, level)
    core = _core()
    if core is not None:
        text = core.rows(tensors, -1 if level is None else level)
        if text is not None:
            return str(text)
    try:
        return _rows_by_columns(tensors, level)
    except ValueError:  # an int over the digit limit: json.dumps raises, row by row (its
        return _rows_by_json(tensors, level)  # error, when a row before holds another)


def _rows_by_columns(tensors: Sequence[TensorInfo], level: int | None) -> str:
    """``_rows`` column by column (exact ``TensorInfo`` rows)."""
    n = len(tensors)
    inner = None if level is None else level + 1
    ksep = ":" if level is None else ": "
    row_sep = "," + _nl(level)
    slots: list[tuple[str, Encoded]] = []  # (the text before the column, the column)
    seen: list[tuple[list[Any], set[type], Encoded]] = []  # columns encoded so far
    text = "{"
    for i, key in enumerate(_TENSOR_KEYS):
        text += ("," if i else "") + _nl(inner) + encode_basestring_ascii(key) + ksep
        try:
            values = list(map(TensorInfo.__dict__[key].__get__, tensors))
        except AttributeError:  # an unset slot: to_dict raises, json.dumps says where first
            return _rows_by_json(tensors, level)
        types = set(map(type, values))
        if not types <= _LIST_TYPES.get(key, types):  # to_dict writes list(shape): an int
            return _rows_by_json(tensors, level)  # or a str there is not written as itself
        if len(types) == 1 and types <= _SCALARS and values.count(values[0]) == n:
            # one value throughout ("device": "cpu", "file": null): equal values of one
            # of these types have one text
            one = encode_column(values[:1], inner)
            assert one is not None
            text += one[0]
            continue
        # a column equal to an earlier one (safetensors: storage is the name; nbytes is
        # storage_nbytes) with the same value types has the same text
        col = next((enc for v, t, enc in seen if t == types and v == values), None) \
            if types <= _SCALARS else None
        if col is None:
            col = encode_column(values, inner)
            if col is None:
                return _rows_by_json(tensors, level)
            seen.append((values, types, col))
        if col.count(col[0]) == n:  # the same text in every row
            text += col[0]
        else:
            slots.append((text, col))
            text = ""
    trail = text + _nl(level) + "}"
    if not slots:
        return row_sep.join([trail] * n)
    width = 2 * len(slots)
    pieces: list[str] = [""] * (width * n)
    for j, (lead, col) in enumerate(slots):
        pieces[2 * j::width] = [lead] * n
        pieces[2 * j + 1::width] = col
    pieces[width::width] = [trail + row_sep + slots[0][0]] * (n - 1)
    return "".join(pieces) + trail


def tensors_chunks(tensors: Sequence[TensorInfo], level: int | None = None) -> Iterator[str]:
    """``[t.to_dict() for t in tensors]`` as JSON (a list at ``level``, compact when None),
    in pieces of ``BATCH`` rows (a batch with a value of another type goes through
    ``json.dumps``, with the same result)."""
    if not tensors:
        yield "[]"
        return
    inner = None if level is None else level + 1
    yield "[" + _nl(inner)
    for i in range(0, len(tensors), BATCH):
        yield ("," + _nl(inner) if i else "") + _rows(tensors[i:i + BATCH], inner)
    yield _nl(level) + "]"


def tensors_json(tensors: Sequence[TensorInfo], level: int | None = None) -> str:
    return "".join(tensors_chunks(tensors, level))


# --- reports ---------------------------------------------------------------------------------

#: Report.to_dict's keys, in its order: the tensors and children are encoded here
_REPORT_KEYS = ("path", "format", "verdict", "findings", "problems", "tensors", "identity",
                "members", "metadata", "bytes_read", "limits", "tool_version", "children")
_HEAD = _REPORT_KEYS[:_REPORT_KEYS.index("tensors")]
_TAIL = _REPORT_KEYS[_REPORT_KEYS.index("tensors") + 1:-1]


def _fields(report: Report) -> dict[str, Any] | None:
    """``report.to_dict()`` without tensors and children; None when this module cannot
    reproduce the report's encoding (a subclass, or ``to_dict`` changed)."""
    if type(report) is not Report:
        return None
    d = dataclasses.replace(report, tensors=(), children=()).to_dict()
    return d if tuple(d) == _REPORT_KEYS else None


def report_chunks(report: Report) -> Iterator[str]:
    """``compact(report.to_dict())`` in pieces, the tensors (its own and its children's)
    column by column."""
    d = _fields(report)
    if d is None:
        yield compact(report.to_dict())
        return
    yield compact({k: d[k] for k in _HEAD})[:-1] + ',"tensors":'
    yield from tensors_chunks(report.tensors)
    yield "," + compact({k: d[k] for k in _TAIL})[1:-1] + ',"children":['
    for i, c in enumerate(report.children):
        if i:
            yield ","
        yield from report_chunks(c)
    yield "]}"


def report_json(report: Report) -> str:
    return "".join(report_chunks(report))


# --- the indented layout ---------------------------------------------------------------------

class Deferred:
    """A value whose JSON text depends on the level it is written at (the tensors)."""

    def __init__(self, text: Callable[[int], str]) -> None:
        self.text = text


def _float(o: float) -> str:
    """json's ``floatstr`` (``allow_nan``): ``repr``, or NaN / Infinity / -Infinity."""
    if math.isnan(o):
        return "NaN"
    if math.isinf(o):
        return "Infinity" if o > 0 else "-Infinity"
    return float.__repr__(o)


def indented(o: Any, level: int = 0) -> str:
    """``json.dumps(o, indent=2, ensure_ascii=True)`` for ``o`` at ``level``; raises
    :class:`Unencodable` for a type it does not encode exactly."""
    t = type(o)
    if t is str:
        return str(encode_basestring_ascii(o))
    if o is None:
        return "null"
    if t is bool:
        return _BOOL[o]
    if t is int:
        return int.__repr__(o)
    if t is float:
        return _float(o)
    if t is Deferred:
        return str(o.text(level))
    nl = _nl(level + 1)
    if t is list or t is tuple:
        if not o:
            return "[]"
        items: Iterable[str]
        if set(map(type, o)) <= {str}:
            items = map(encode_basestring_ascii, o)
        else:
            items = (indented(v, level + 1) for v in o)
        return "[" + nl + ("," + nl).join(items) + _nl(level) + "]"
    if t is dict:
        if not o:
            return "{}"
        if set(map(type, o)) != {str}:
            raise Unencodable("a dict key that is not a str")
        return "{" + nl + ("," + nl).join(
            encode_basestring_ascii(k) + ": " + indented(v, level + 1)
            for k, v in o.items()) + _nl(level) + "}"
    raise Unencodable(t.__name__)


def report_tree(report: Report) -> dict[str, Any]:
    """``report.to_dict()`` for :func:`indented`, its tensors (and its children's) as
    :class:`Deferred` values; raises :class:`Unencodable` when it cannot be exact."""
    d = _fields(report)
    if d is None:
        raise Unencodable("a Report subclass or changed to_dict")
    tensors = report.tensors
    d["tensors"] = Deferred(lambda level: "".join(tensors_chunks(tensors, level)))
    d["children"] = [report_tree(c) for c in report.children]
    return d


__all__ = ["BATCH", "Deferred", "Unencodable", "compact", "encode_column", "indented",
           "report_chunks", "report_json", "report_tree", "tensors_chunks", "tensors_json"]
