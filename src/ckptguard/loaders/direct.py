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
    _empty_od,
)
from ..analysis.tensors import StorageRef, TensorRecord
from ..model import Format
from ..primitives import gc_paused
from ._torch import MapLocation, dtype_of, torch
from .base import AuditedFile, fd_path

_SLICE: Any = torch._C.StorageBase.__dict__["__getitem__"]

#: returned when this engine does not handle the file (the caller falls back to torch.load)
FALLBACK: Any = object()


class _Unsupported(Exception):
    pass


def _cpu_only(map_location: MapLocation) -> bool:
    if map_location is None or map_location == "cpu":
        return True
    return isinstance(map_location, torch.device) and map_location.type == "cpu" and \
        map_location.index is None


def load_direct(af: AuditedFile, map_location: MapLocation = "cpu") -> Any:
    """The object ``torch.load(weights_only=True, mmap=True)`` would return, built from
    the audit; :data:`FALLBACK` when this engine does not handle the file."""
    graph = af.graph
    rep = af.report
    if not isinstance(graph, FastResult) or rep.format is not Format.TORCH_ZIP or \
            rep.identity is None or not _cpu_only(map_location) or \
            dict(rep.metadata).get("torch.byteorder", "little") != "little" or \
            sys.byteorder != "little":
        return FALLBACK
    if any(st.location != "cpu" for st in graph.storages.values()):
        return FALLBACK
    af.check_stat()
    path = fd_path(af.fd)
    if path is None:
        return FALLBACK
    m = _Materialiser(path, rep.identity.size)
    # tensors, storages and containers form no cycles: the collector would re-walk them
    with gc_paused():
        try:
            obj = m.value(graph.root)
        except (_Unsupported, RecursionError):
            return FALLBACK
    af.verify()
    return obj


class _Materialiser:
    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._overall: Any = None
        self.storages: dict[str, Any] = {}
        self.memo: dict[int, Any] = {}
        self.empty = torch.empty
        self.dtypes: dict[str, Any] = {}

    def overall(self) -> Any:
        if self._overall is None:
            self._overall = torch.UntypedStorage.from_file(self.path, False, self.size)
        return self._overall

    def storage(self, st: StorageRef) -> Any:
        s = self.storages.get(st.key)
        if s is None:
            off = st.data_offset
            if off is None:
                raise _Unsupported("storage without an offset")
            # torch.load(mmap=True): overall_storage[off : off + nbytes] (the C method:
            # UntypedStorage.__getitem__ only adds a meta-device check in Python)
            s = _SLICE(self.overall(), slice(off, off + st.numel * st.itemsize))
            self.storages[st.key] = s
        return s

    def tensor(self, rec: TensorRecord) -> Any:
        st = rec.storage
        if st is None or rec.stride is None:
            raise _Unsupported("tensor without storage or strides")
        dt = self.dtypes.get(rec.dtype)
        if dt is None:
            dt = self.dtypes[rec.dtype] = dtype_of(rec.dtype)
        t = self.empty((0,), dtype=dt).set_(self.storage(st), rec.storage_offset, rec.shape,
                                            rec.stride)
        if rec.kind == "parameter":
            p = torch.nn.Parameter(t, rec.requires_grad)
            p._backward_hooks = OrderedDict()
            return p
        if rec.kind != "tensor":
            raise _Unsupported(rec.kind)
        if rec.requires_grad:
            t.requires_grad = True
        t._backward_hooks = OrderedDict()
        return t

    def value(self, v: Any) -> Any:
        t = type(v)
        if t is str or t is int or t is float or t is bool or v is None:
            return v
        vid = id(v)
        done = self.memo.get(vid)
        if done is not None:
            return done
        out: Any
        if t is FastTensor:
            rec = v.tensor
            assert rec is not None
            hooks = v.args[2] if rec.kind == "parameter" else v.args[5]
            if not _empty_od(hooks) or (rec.kind == "parameter" and
                                        not _empty_od(v.args[0].args[5])):
                # the hooks OrderedDict was filled after the rebuild: torch would attach it
                raise _Unsupported("backward hooks")
            out = self.tensor(rec)
            self.memo[vid] = out
        elif t is FastDict:
            out = self.memo[vid] = {}
            for k, x in v.items():
                out[k] = self.value(x)
        elif t is FastOrderedDict:
            out = self.memo[vid] = OrderedDict()
            for k, x in v.items():
                out[k] = self.value(x)
            if v.state is not None:
                out.__dict__.update(self.value(v.state))
        elif t is FastList:
            out = self.memo[vid] = []
            out.extend(self.value(x) for x in v)
        elif t is tuple:
            out = tuple(self.value(x) for x in v)
            self.memo[vid] = out
        else:
            raise _Unsupported(t.__name__)
        return out


__all__ = ["FALLBACK", "load_direct"]
