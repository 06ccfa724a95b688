"""Is what ``torch.load`` built what the audit saw?

torch parses ``data.pkl`` by reading the file again; the identity check after the load
(loaders/base.py: fstat with mtime and ctime, every audited region re-read) proves the file
*now* holds the audited bytes, not that torch parsed them: a writer holding a dirty shared
mapping of the file changes its bytes without a ctime update until writeback, and can put
them back before the check. So after every torch zip / legacy load the loaded object is
compared with the audit's tensor records, in one pass and in the audit's naming order
(``analysis.tensors.name_tensors``): the same tensor names, and for each tensor the same
dtype, shape, stride, storage offset and ``requires_grad``, none missing and none extra. For
torch zips the storages are compared too: tensors the audit placed in one storage share one
in the load and tensors it placed in different storages do not; under ``mmap`` on the CPU
every storage must sit at its audited file offset in torch's one map of the file.

The comparison is *exact* only while everything it walks is a plain container (dict,
OrderedDict, list, tuple), a scalar leaf or a dense strided ``Tensor`` / ``Parameter``
without Python attributes. Anything else (sparse, quantized and nested tensors, tensor
subclasses, other objects) makes it :data:`NOT_EXACT`: the loader then runs
:func:`~.invariants.check_loaded` on the whole object, which checks every tensor's
invariants whatever built it.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, Final

from ..model import TensorInfo
from ..primitives import escape_untrusted
from ._torch import torch


class _NotExact:
    def __repr__(self) -> str:
        return "NOT_EXACT"


#: :func:`structure_difference`'s answer when the object holds something it cannot compare.
NOT_EXACT: Final = _NotExact()

_TENSOR = torch.Tensor
_PARAMETER = torch.nn.Parameter
_STRIDED = torch.strided
_MAPS = (dict, OrderedDict)
_SEQS = (list, tuple)
#: leaves that hold no tensor (torch.Size holds ints only)
_LEAVES = frozenset({str, bytes, int, float, bool, complex, type(None), torch.dtype,
                     torch.device, torch.Size})
#: torch dtype -> the audit's dtype name ("float32"), filled on first use (by the slow path)
_DTYPE_NAMES: dict[Any, str] = {}


def _key_text(key: object) -> str:
    """``analysis.tensors._key_text`` for a loaded key."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    if isinstance(key, (int, float)):
        return str(key)
    return "?"


def _items(o: Any) -> Iterator[tuple[object, Any]]:
    """(key, child) pairs in the order ``name_tensors`` takes them: a mapping's items, then
    the attributes BUILD gave it (an OrderedDict's ``_metadata``); a sequence's items."""
    if type(o) in _SEQS:
        return enumerate(o)
    extra = getattr(o, "__dict__", None)
    return chain(o.items(), extra.items()) if extra else iter(o.items())


def _plain(t: Any) -> bool:
    """A dense strided tensor the records describe in full (no quantizer, no nesting, no
    Python attributes)."""
    return (t.layout is _STRIDED and not t.is_quantized and not t.is_nested
            and not t.__dict__)


def _dtype_name(dt: Any) -> str:
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = _DTYPE_NAMES[dt] = str(dt).removeprefix("torch.")
    return name


def _explain(name: str, t: Any, info: TensorInfo) -> str | _NotExact | None:
    """The slow path, for a tensor the one-line comparison did not accept: NOT_EXACT when
    the tensor is not plain, else what differs (None: nothing, the dtype name was new)."""
    if not _plain(t) or info.stride is None:
        return NOT_EXACT
    if name != info.name:
        return f"torch.load built tensor {name!r} where the audit saw {info.name!r}"
    dname = _dtype_name(t.dtype)
    if dname != info.dtype:
        return f"tensor {name!r} is {dname}, the audit saw {info.dtype}"
    if t.shape != info.shape:
        return f"tensor {name!r} has shape {list(t.shape)}, the audit saw {list(info.shape)}"
    if t.stride() != info.stride:
        return f"tensor {name!r} has stride {list(t.stride())}, the audit saw " \
               f"{list(info.stride)}"
    if t.storage_offset() != info.storage_offset:
        return f"tensor {name!r} starts at storage offset {t.storage_offset()}, the audit " \
               f"saw {info.storage_offset}"
    if t.requires_grad != info.requires_grad:
        return f"tensor {name!r} has requires_grad={t.requires_grad}, the audit saw " \
               f"{info.requires_grad}"
    return None


def structure_difference(obj: Any, infos: Sequence[TensorInfo], *, storages: bool = True,
                         offsets: bool = False) -> str | _NotExact | None:
    """None when ``obj`` holds exactly the tensors ``infos`` describe; else what differs
    first (a sentence), or :data:`NOT_EXACT` when ``obj`` holds something the comparison
    cannot model (see the module docstring).

    ``storages``: compare which tensors share a storage (torch zips: ``infos[i].storage``
    names the record). ``offsets``: instead require every CPU storage at its audited file
    offset from one common base (a ``mmap=True`` load maps the file once; distinct records
    lie at distinct offsets, so this implies the sharing)."""
    tobj = type(obj)
    if tobj in _LEAVES:
        return None if not infos else f"torch.load built no tensor, the audit saw {len(infos)}"
    if not (tobj is _TENSOR or tobj is _PARAMETER or tobj in _MAPS or tobj in _SEQS):
        return NOT_EXACT
    # One pass, depth first in pickle order, each container once (as name_tensors walks);
    # the common case -- a tensor whose records all match -- is one boolean expression.
    n = len(infos)
    i = 0
    base: int | None = None
    by_key: dict[str | None, int] = {}
    by_ptr: dict[int, str | None] = {}
    names = _DTYPE_NAMES
    tensor, parameter, maps, seqs, leaves = _TENSOR, _PARAMETER, _MAPS, _SEQS, _LEAVES
    visited = {id(obj)}
    prefixes: list[str] = [""]
    prefix = ""
    t: Any
    frames: list[Iterator[tuple[object, Any]]] = [
        iter((("", obj),)) if tobj is _TENSOR or tobj is _PARAMETER else _items(obj)]
    while frames:
        nxt = next(frames[-1], None)
        if nxt is None:
            frames.pop()
            prefixes.pop()
            prefix = prefixes[-1] if prefixes else ""
            continue
        key, t = nxt
        tv = type(t)
        if tv is tensor or tv is parameter:
            k = key if type(key) is str else _key_text(key)
            name = f"{prefix}.{k}" if prefix else k
            if i >= n:
                return NOT_EXACT if not _plain(t) else \
                    f"torch.load built tensor {name!r}, which the audit did not see"
            info = infos[i]
            i += 1
            try:
                same = (name == info.name and names.get(t.dtype) == info.dtype
                        and t.shape == info.shape and t.stride() == info.stride
                        and (so := t.storage_offset()) == info.storage_offset
                        and t.requires_grad == info.requires_grad and not t.__dict__)
            except RuntimeError:  # sparse and nested tensors have no strides
                return NOT_EXACT
            if not same:
                diff = _explain(name, t, info)
                if diff is not None:
                    return diff
                so = t.storage_offset()
            if storages and info.storage_nbytes:
                # the storage's first byte (a tensor without elements has no data pointer)
                ptr = t.data_ptr() - so * t.element_size() if t.numel() else \
                    t.untyped_storage().data_ptr()
                if offsets and info.data_offset is not None and t.is_cpu:
                    b = ptr - info.data_offset
                    if base is None:
                        base = b
                    elif b != base:
                        return f"tensor {name!r}'s storage is not the audited record " \
                               f"{info.storage!r} at file offset {info.data_offset}"
                elif not t.is_meta:
                    key = info.storage
                    if by_key.setdefault(key, ptr) != ptr or by_ptr.setdefault(ptr, key) != key:
                        return f"tensor {name!r} does not share storage with the tensors the " \
                               f"audit placed in {key!r} (or shares another's)"
        elif tv in maps or tv in seqs:
            if id(t) in visited or (not t and not getattr(t, "__dict__", None)):
                continue
            visited.add(id(t))
            k = key if type(key) is str else _key_text(key)
            prefix = f"{prefix}.{k}" if prefix else k
            prefixes.append(prefix)
            frames.append(_items(t))
        elif tv not in leaves:
            return NOT_EXACT
    if i != n:
        return f"the audit saw {n} tensors, torch.load built {i} (first missing: " \
               f"{infos[i].name!r})"
    return None


# --- the values around the tensors ------------------------------------------------------------

#: the fast path's graph leaves that are values (analysis/fastpath.py accepts no others)
_GRAPH_SCALARS = frozenset({str, int, float, bool, type(None)})
_PACK_DOUBLE = struct.Struct("<d").pack


def _same_scalar(a: Any, b: Any) -> bool:
    """``a`` and ``b`` (of one type) are the same value: floats bit for bit (-0.0, NaN)."""
    return _PACK_DOUBLE(a) == _PACK_DOUBLE(b) if type(a) is float else bool(a == b)


def _show(v: Any) -> str:
    """A loaded value for a message (untrusted: escaped and clipped; no giant ints)."""
    if type(v) is int and v.bit_length() > 200:
        return f"an int of {v.bit_length()} bits"
    if type(v) not in _GRAPH_SCALARS:
        return f"a {escape_untrusted(type(v).__name__, 40)}"
    return f"{type(v).__name__} {escape_untrusted(repr(v), 60)}"


def _where(at: str) -> str:
    return f"value '{escape_untrusted(at, 80)}'" if at else "the top-level value"


def _show_keys(keys: list[Any]) -> str:
    return escape_untrusted(", ".join(escape_untrusted(repr(k), 40) for k in keys[:8])
                            + (f", ... ({len(keys)} in all)" if len(keys) > 8 else ""), 160)


def graph_difference(obj: Any, root: Any) -> str | _NotExact | None:
    """None when ``obj`` (what ``torch.load`` built) has exactly the containers, keys,
    values and sharing of the fast path's graph of the audited ``data.pkl`` (``root``,
    ``analysis.fastpath.FastResult.root``); else what differs first, or :data:`NOT_EXACT`
    when the graph holds a node this comparison does not model.

    :func:`structure_difference` compares the tensors with the audit's records; this
    compares everything around them -- ints, floats (bit for bit), strings, bools, None,
    the container types, every key in order, an ``OrderedDict``'s attributes
    (``_metadata``), and which objects are shared -- and matches each tensor by place and
    kind (tensor or ``Parameter``). Together they leave nothing of a proven pickle that
    torch could have read differently unnoticed."""
    from ..analysis.fastpath import FastDict, FastList, FastOrderedDict, FastTensor

    pairs: dict[int, Any] = {}   # id(graph node) -> the loaded object paired with it
    back: dict[int, int] = {}    # id(loaded object) -> id(its graph node)
    stack: list[tuple[str, Any, Any]] = [("", obj, root)]
    scalars = _GRAPH_SCALARS
    while stack:
        at, o, g = stack.pop()
        tg = type(g)
        if tg in scalars:
            if type(o) is not tg or not _same_scalar(o, g):
                return f"{_where(at)} is {_show(o)}, the audit saw {_show(g)}"
            continue
        gid, oid = id(g), id(o)
        seen = pairs.get(gid)
        if seen is not None:
            if seen is not o:
                return f"{_where(at)} is a copy where the audit shares one object"
            continue
        if back.setdefault(oid, gid) != gid:
            return f"{_where(at)} is shared where the audit has two objects"
        pairs[gid] = o
        if tg is FastTensor:
            want = _PARAMETER if g.tensor.kind == "parameter" else _TENSOR
            if type(o) is not want:
                return f"{_where(at)} is a {type(o).__name__}, the audit saw a {want.__name__}"
            continue
        if tg is tuple:
            want_type: Any = tuple
        elif tg is FastList:
            want_type = list
        elif tg is FastDict:
            want_type = dict
        elif tg is FastOrderedDict:
            want_type = OrderedDict
        else:
            return NOT_EXACT
        if type(o) is not want_type:
            return f"{_where(at)} is a {type(o).__name__}, the audit saw a {want_type.__name__}"
        prefix = f"{at}." if at else ""
        if want_type is tuple or want_type is list:
            if len(o) != len(g):
                return f"{_where(at)} has {len(o)} items, the audit saw {len(g)}"
            stack.extend((f"{prefix}{i}", x, y) for i, (x, y) in enumerate(zip(o, g, strict=True)))
            continue
        keys, gkeys = list(o), list(g)
        if len(keys) != len(gkeys) or any(type(a) is not type(b) or a != b
                                          for a, b in zip(keys, gkeys, strict=True)):
            return f"{_where(at)} has keys [{_show_keys(keys)}], the audit saw " \
                   f"[{_show_keys(gkeys)}]"
        stack.extend((f"{prefix}{k}", o[k], g[k]) for k in gkeys)
        if tg is FastOrderedDict:
            # BUILD's state, applied with __dict__.update (torch's weights-only unpickler):
            # its items, not the dict object itself
            attrs = o.__dict__
            state = g.state if g.state is not None else {}
            akeys, skeys = list(attrs), list(state)
            if akeys != skeys or any(type(k) is not str for k in skeys):
                return f"{_where(at)} has attributes [{_show_keys(akeys)}], the audit saw " \
                       f"[{_show_keys(skeys)}]"
            stack.extend((f"{prefix}{k}", attrs[k], state[k]) for k in skeys)
    return None


__all__ = ["NOT_EXACT", "graph_difference", "structure_difference"]
