"""``engine="ckptguard"``: build a SAFE torch zip's object straight from the audit.

When the fast path proved ``data.pkl`` (analysis/fastpath.py), the audit already holds
the whole object graph: plain containers, ``OrderedDict`` items and ``_metadata``, and a
checked record for every tensor (storage key and record offset, dtype, shape, stride,
storage offset, requires_grad, Parameter or not). This module materialises that graph the
way ``torch.load(weights_only=True, mmap=True)`` does, without parsing anything again:

- one private map (``MAP_PRIVATE``) of the audited inode (``/proc/self/fd/N``), sliced
  per storage at the audited record offset (torch: ``overall_storage[off:off + nbytes]``);
  tensors naming the same storage key share one storage, as in torch;
- ``torch._utils._rebuild_tensor_v2``'s effects: ``empty(0).set_(storage, offset, size,
  stride)``, ``requires_grad``, ``_backward_hooks = OrderedDict()``; Parameters as
  ``torch._utils._rebuild_parameter`` makes them;
- ``OrderedDict`` with its BUILD state applied as torch's weights-only unpickler does
  (``__dict__.update``); shared sub-objects stay shared.

Anything it does not handle (no fast-path graph, a device other than the CPU, a big-endian
archive, an unexpected value in the graph) returns :data:`FALLBACK`, and the caller uses
the default engine (audit, then ``torch.load``). The identity check runs before the object
is handed out, as for every loader. tests/test_direct_loader.py compares it with
``torch.load`` bit for bit.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

from ..analysis.fastpath import (
    FastDict,
    FastList,
    FastOrderedDict,
    FastResult,
    FastTensor,
)
from ..analysis.tensors import StorageRef, TensorRecord
from ..model import Format
from ..primitives import gc_paused
from ._torch import MapLocation, dtype_of, torch
from .base import AuditedFile, fd_path

_SLICE: Any = torch._C.StorageBase.__dict__["__getitem__"]
_STORAGE: Any = torch.UntypedStorage
_EMPTY: Any = torch.empty

#: returned when this engine does not handle the file (the caller falls back to torch.load)
FALLBACK: Any = object()

_SCALARS = frozenset({str, int, float, bool, type(None)})


class _Unsupported(Exception):
    pass


def _cpu_only(map_location: MapLocation) -> bool:
    if map_location is None or map_location == "cpu":
        return True
    return isinstance(map_location, torch.device) and map_location.type == "cpu" and \
        map_location.index is None


def _graph(af: AuditedFile) -> FastResult | None:
    graph = af.graph
    rep = af.report
    if not isinstance(graph, FastResult) or rep.format is not Format.TORCH_ZIP or \
            rep.identity is None or \
            dict(rep.metadata).get("torch.byteorder", "little") != "little" or \
            sys.byteorder != "little":
        return None
    return graph


def load_direct(af: AuditedFile, map_location: MapLocation = "cpu") -> Any:
    """The object ``torch.load(weights_only=True, mmap=True)`` would return, built from
    the audit; :data:`FALLBACK` when this engine does not handle the file."""
    graph = _graph(af)
    if graph is None or not _cpu_only(map_location) or \
            any(st.location != "cpu" for st in graph.storages.values()):
        return FALLBACK
    af.check_stat()
    path = fd_path(af.fd)
    if path is None:
        return FALLBACK
    assert af.report.identity is not None
    obj = _build(_Materialiser(path, af.report.identity.size), graph)
    if obj is not FALLBACK:
        af.verify()
    return obj


def load_meta_direct(af: AuditedFile) -> Any:
    """What ``torch.load(weights_only=True, map_location="meta")`` returns, built from the
    audit (no byte of the file is read again); :data:`FALLBACK` when this engine does not
    handle the file. As torch does on meta: one new meta storage of the storage's size
    per rebuilt tensor (torch caches only storages with data), carrying the record's
    data offset as ``_checkpoint_offset``."""
    graph = _graph(af)
    if graph is None:
        return FALLBACK
    af.verify()
    return _build(_MetaMaterialiser(), graph)


def _build(m: _Materialiser, graph: FastResult) -> Any:
    # tensors, storages and containers form no cycles: the collector would re-walk them
    with gc_paused():
        try:
            return m.value(graph.root)
        except (_Unsupported, RecursionError):
            return FALLBACK


class _Materialiser:
    """Builds the proven graph. What the fast path proved is not re-checked here (its
    _rebuild_v2 / _rebuild_parameter / FastOrderedDict): every FastTensor carries a record
    with an int storage offset, int size and stride tuples of one length, a view inside its
    storage, a storage whose record has exactly the storage's bytes, requires_grad only on
    dtypes with gradients, and hooks dicts that stayed empty (items or state added to one
    after the rebuild decline). One ``empty(0).set_(...)`` per tensor (a per-dtype
    prototype's ``new()``), one storage slice per storage, one ``OrderedDict`` of
    hooks per tensor (torch's unpickler makes one per rebuild)."""

    def __init__(self, path: str = "", size: int = 0) -> None:
        self.path = path
        self.size = size
        self._overall: Any = None
        self.storages: dict[str, Any] = {}
        self.memo: dict[int, Any] = {}
        self.new: dict[str, Any] = {}  # dtype name -> prototype.new

    def overall(self) -> Any:
        if self._overall is None:
            self._overall = torch.UntypedStorage.from_file(self.path, False, self.size)
        return self._overall

    def prototype(self, dtype: str) -> Any:
        # x.new() is torch.empty((0,), dtype=x.dtype) on x's device, ~20% cheaper per call
        fn = self.new[dtype] = torch.empty((0,), dtype=dtype_of(dtype)).new
        return fn

    def storage(self, st: StorageRef) -> Any:
        off = st.data_offset
        if off is None:
            raise _Unsupported("storage without an offset")
        # torch.load(mmap=True): overall_storage[off : off + nbytes] (the C method:
        # UntypedStorage.__getitem__ only adds a meta-device check in Python)
        s = self.storages[st.key] = _SLICE(self.overall(), slice(off, off + st.numel * st.itemsize))
        return s

    def tensor(self, rec: TensorRecord) -> Any:
        st = rec.storage
        assert st is not None
        s = self.storages.get(st.key)
        if s is None:
            s = self.storage(st)
        ne = self.new.get(rec.dtype)
        if ne is None:
            ne = self.prototype(rec.dtype)
        t = ne().set_(s, rec.storage_offset, rec.shape, rec.stride)
        return self.finish(t, rec)

    @staticmethod
    def finish(t: Any, rec: TensorRecord) -> Any:
        # torch._utils._rebuild_tensor_v2 / _rebuild_parameter
        kind = rec.kind
        if kind == "parameter":
            t = torch.nn.Parameter(t, rec.requires_grad)
        elif kind != "tensor":
            raise _Unsupported(kind)
        elif rec.requires_grad:
            t.requires_grad = True
        t._backward_hooks = OrderedDict()
        return t

    def item(self, x: Any) -> Any:
        """``value`` inlined for the common leaves (scalars, tensors)."""
        tx = type(x)
        if tx in _SCALARS:
            return x
        if tx is FastTensor:
            out = self.memo.get(id(x))
            if out is None:
                out = self.memo[id(x)] = self.tensor(x.tensor)
            return out
        return self.value(x)

    def value(self, v: Any) -> Any:
        t = type(v)
        if t in _SCALARS:
            return v
        vid = id(v)
        done = self.memo.get(vid)
        if done is not None:
            return done
        out: Any
        item = self.item
        if t is FastTensor:
            out = self.memo[vid] = self.tensor(v.tensor)
        elif t is FastDict:
            out = self.memo[vid] = {}
            for k, x in v.items():
                out[k] = item(x)
        elif t is FastOrderedDict:
            out = self.memo[vid] = OrderedDict()
            for k, x in v.items():
                out[k] = item(x)
            if v.state is not None:
                out.__dict__.update(self.value(v.state))
        elif t is FastList:
            out = self.memo[vid] = []
            out.extend([item(x) for x in v])
        elif t is tuple:
            out = self.memo[vid] = tuple([item(x) for x in v])
        else:
            raise _Unsupported(t.__name__)
        return out


class _MetaMaterialiser(_Materialiser):
    def __init__(self) -> None:
        super().__init__()
        self.dtypes: dict[str, Any] = {}
        self.meta = torch.device("meta")

    def tensor(self, rec: TensorRecord) -> Any:
        st = rec.storage
        assert st is not None
        meta = self.meta
        # torch.load(map_location="meta"): UntypedStorage(nbytes, device="meta") per
        # persistent_load, with _checkpoint_offset = the record's data offset
        s = _STORAGE(st.numel * st.itemsize, device=meta)
        s._checkpoint_offset = st.data_offset
        dt = self.dtypes.get(rec.dtype)
        if dt is None:
            dt = self.dtypes[rec.dtype] = dtype_of(rec.dtype)
        # (on meta, torch.empty is cheaper than a prototype's new / new_empty)
        t = _EMPTY(0, dtype=dt, device=meta).set_(s, rec.storage_offset, rec.shape,
                                                  rec.stride)
        return self.finish(t, rec)


__all__ = ["FALLBACK", "load_direct", "load_meta_direct"]
