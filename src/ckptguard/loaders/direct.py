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

import contextlib
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..analysis.fastpath import (
    FastDict,
    FastList,
    FastOrderedDict,
    FastResult,
    FastTensor,
    set_maker,
)
from ..analysis.tensors import STORAGE_DTYPES, TensorRecord
from ..model import Format, Report, Verdict
from ..policy import Limits, Policy
from ..primitives import gc_paused
from ._torch import MapLocation, dtype_of, torch
from .base import AuditedFile, LoaderError, fd_path, open_audited

_SLICE: Any = torch._C.StorageBase.__dict__["__getitem__"]
_EMPTY: Any = torch.empty
_EMPTY_STRIDED: Any = torch.empty_strided
_UNTYPED: Any = torch.UntypedStorage
#: sets the version counters of many tensors at once (torch >= 2.1); without it meta
#: tensors are made with ``set_`` as torch makes them
_SET_VERSIONS: Any = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
_PARAMETER: Any = torch.nn.Parameter

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
            rep.meta("torch.byteorder", "little") != "little" or \
            sys.byteorder != "little":
        return None
    return graph


def load_direct(af: AuditedFile, map_location: MapLocation = "cpu") -> Any:
    """The object ``torch.load(weights_only=True, mmap=True)`` would return, built from
    the audit; :data:`FALLBACK` when this engine does not handle the file."""
    graph = _graph(af)
    if graph is None or not _cpu_only(map_location) or \
            any(st.location != "cpu" or st.data_offset is None
                for st in graph.storages.values()):
        return FALLBACK
    path = fd_path(af.fd, af.check_stat())
    if path is None:
        return FALLBACK
    assert af.report.identity is not None
    # one private map of the audited inode, as torch.load(mmap=True) makes it
    overall = torch.UntypedStorage.from_file(path, False, af.report.identity.size) \
        if graph.storages else None
    obj = _build(graph.root, _cpu_maker(overall))
    if obj is not FALLBACK:
        af.verify()
    return obj


def open_audited_meta(path: str | os.PathLike[str], *, policy: Policy | None = None,
                      limits: Limits | None = None, lease: bool = False) -> AuditedFile:
    """``open_audited(path, keep_graph=True)``, where the native core, when it proves the
    torch zip's ``data.pkl``, builds the meta load's object during the audit (straight
    from its own graph, with this module's meta maker: no symbolic graph, no second walk);
    :func:`load_meta_direct` hands it out after the identity check. Its report then has
    no tensor rows (``report.tensors == ()``: a meta load hands out the object, and the
    core skips ~50k ``TensorInfo`` of a 50k-tensor file); where the report is handed out
    instead (not SAFE) or the build failed, the descriptor is audited again without the
    maker and ``report`` is ``open_audited``'s own."""
    spec, fresh = _meta_spec()
    prev = set_maker(spec)
    try:
        af = open_audited(path, policy=policy, limits=limits, keep_graph=True, lease=lease)
    finally:
        set_maker(prev)
    graph = af.graph
    if not isinstance(graph, FastResult) or not graph.rows_skipped:
        return af
    if graph.built is not None and af.report.verdict is Verdict.SAFE and \
            _graph(af) is graph:
        _bump_versions(fresh)
        return af
    # The core left the report's tensor rows out (the object it built is the load, not
    # the report), and here the report is what the caller gets (a refusal) or the build
    # failed: the same descriptor is audited again without a maker, so the report is the
    # one open_audited gives, rows and all, and no graph is kept (torch.load builds the
    # object, as it does after a failed build).
    af.graph = None
    del graph, fresh
    try:
        af.report = _audit_again(af)
    except BaseException:
        af.close()
        raise
    return af


def _audit_again(af: AuditedFile) -> Report:
    from ..analysis.engine import audit_fd

    return audit_fd(af.path, af.fd, policy=af.policy, limits=af.limits)


def load_meta_direct(af: AuditedFile) -> Any:
    """What ``torch.load(weights_only=True, map_location="meta")`` returns, built from the
    audit (no byte of the file is read again); :data:`FALLBACK` when this engine does not
    handle the file. As torch does on meta: one new meta storage of the storage's size
    per rebuilt tensor (torch caches only storages with data), carrying the record's
    data offset as ``_checkpoint_offset``."""
    graph = _graph(af)
    if graph is None:
        return FALLBACK
    if graph.built is not None:  # built during the audit (open_audited_meta)
        af.verify()
        return graph.built[0]
    if graph.root is None:  # that build failed: torch.load
        return FALLBACK
    af.verify()
    make, fresh = _meta_maker()
    obj = _build(graph.root, make)
    if obj is not FALLBACK:
        _bump_versions(fresh)
    return obj


# What the fast path proved is not re-checked here (analysis/fastpath.py: _rebuild_v2,
# _rebuild_parameter, FastOrderedDict): every FastTensor carries a record with an int
# storage offset, int size and stride tuples of one length, a view inside its storage, a
# storage whose record holds exactly the storage's bytes, requires_grad only on dtypes
# with gradients, and hooks dicts that stayed empty (items or state added to one after the
# rebuild decline). Per tensor: one Python call (the maker), one ``new()`` of a per-dtype
# prototype + ``set_`` (torch: ``empty((0,), dtype).set_``), one ``OrderedDict`` of hooks
# (torch's unpickler makes one per rebuild); per storage one slice of the map.

_Maker = Callable[[TensorRecord], Any]


def _finish(t: Any, rec: TensorRecord) -> Any:
    # the rest of torch._utils._rebuild_tensor_v2 / _rebuild_parameter
    kind = rec.kind
    if kind == "tensor":
        if rec.requires_grad:
            t.requires_grad = True
    elif kind == "parameter":
        t = _PARAMETER(t, rec.requires_grad)
    else:
        raise _Unsupported(kind)
    t._backward_hooks = OrderedDict()
    return t


def _cpu_maker(overall: Any) -> _Maker:
    storages: dict[str, Any] = {}
    news: dict[str, Any] = {}
    storages_get = storages.get
    news_get = news.get

    def make(rec: TensorRecord) -> Any:
        st: Any = rec.storage
        s = storages_get(st.key)
        if s is None:
            # torch.load(mmap=True): overall_storage[off : off + nbytes] (the C method:
            # UntypedStorage.__getitem__ only adds a meta-device check in Python)
            off = st.data_offset
            s = storages[st.key] = _SLICE(overall, slice(off, off + st.numel * st.itemsize))
        new = news_get(rec.dtype)
        if new is None:
            # x.new() is torch.empty((0,), dtype=x.dtype) on x's device (cheaper per call)
            new = news[rec.dtype] = _EMPTY((0,), dtype=dtype_of(rec.dtype)).new
        return _finish(new().set_(s, rec.storage_offset, rec.shape, rec.stride), rec)

    return make


def _meta_maker() -> tuple[_Maker, list[Any]]:
    """The meta maker and the list of the tensors it made without ``set_`` (whose version
    counter :func:`_bump_versions` then sets to torch's 1)."""
    dtypes: dict[str, Any] = {}
    dtypes_get = dtypes.get
    meta = torch.device("meta")
    fresh: list[Any] = []
    fresh_append = fresh.append
    hooks = OrderedDict
    parameter = _PARAMETER
    versions = _SET_VERSIONS

    def make(rec: TensorRecord) -> Any:
        st: Any = rec.storage
        dt = dtypes_get(rec.dtype)
        if dt is None:
            dt = dtypes[rec.dtype] = dtype_of(rec.dtype)
        # torch.load(map_location="meta"): a new UntypedStorage(nbytes, device="meta") per
        # persistent_load (never cached: no data pointer) with _checkpoint_offset = the
        # record's data offset, then empty((0,)).set_(storage, offset, size, stride). The
        # same tensor, ~0.7 us cheaper where the view starts at 0 and spans its storage
        # exactly (a state dict's plain tensors): empty_strided makes the storage of that
        # size itself (its version counter is set to set_'s 1 afterwards, in one call).
        shape = rec.shape
        stride = rec.stride
        t = _EMPTY_STRIDED(shape, stride, dtype=dt, device=meta)
        s = t.untyped_storage()
        nbytes = st.numel * st.itemsize
        offset = rec.storage_offset
        if offset or s.nbytes() != nbytes or versions is None:
            s = _UNTYPED(nbytes, device=meta)
            t.set_(s, offset, shape, stride)
        else:
            fresh_append(t)
        s._checkpoint_offset = st.data_offset
        # the rest of torch._utils._rebuild_tensor_v2 / _rebuild_parameter (_finish)
        kind = rec.kind
        if kind == "tensor":
            if rec.requires_grad:
                t.requires_grad = True
        elif kind == "parameter":
            t = parameter(t, rec.requires_grad)
        else:
            raise _Unsupported(kind)
        t._backward_hooks = hooks()
        return t

    return make, fresh


def _meta_spec() -> tuple[tuple[Any, ...], list[Any]]:
    """The meta maker as the native core runs it (picklecore.c ``meta_make``: the same
    steps as :func:`_meta_maker`'s ``make``, line for line, without a Python call per
    tensor): its torch callables and dtypes, and the list of tensors made without ``set_``
    (None where their version counters cannot be set: then every tensor gets ``set_``)."""
    dtypes: dict[str, Any] = {}
    for name, _ in STORAGE_DTYPES.values():
        # one not in this torch: the core's build fails on it and torch.load runs
        with contextlib.suppress(LoaderError):
            dtypes[name] = dtype_of(name)
    fresh: list[Any] = []
    spec = (_EMPTY_STRIDED, _UNTYPED, torch.device("meta"), dtypes, _PARAMETER,
            fresh if _SET_VERSIONS is not None else None)
    return spec, fresh


#: adds 1 to the version counter of each tensor of a list (torch >= 2.4 takes a list):
#: ~4x cheaper than setting 50k counters (no tuple of values to convert)
_INCREMENT: Any = getattr(torch._C, "_increment_version", None)
_increments: list[bool] = []  # [whether _INCREMENT takes a list], probed once


def _increments_lists() -> bool:
    if not _increments:
        ok = False
        if _INCREMENT is not None:
            try:
                probe = [_EMPTY_STRIDED((2,), (1,), device="meta") for _ in range(2)]
                _INCREMENT(probe)
                ok = [t._version for t in probe] == [1, 1]
            except Exception:  # noqa: BLE001 - another signature: set them instead
                ok = False
        _increments.append(ok)
    return _increments[0]


def _bump_versions(tensors: list[Any]) -> None:
    """Version counter 1 on each (what torch.load's ``set_`` leaves), one call for all.
    Each was just made by ``empty_strided`` (counter 0), is listed once, and nothing has
    written to it since: adding 1 to each is setting it to 1."""
    if not tensors:
        return
    if _increments_lists():
        _INCREMENT(tensors)
    else:
        _SET_VERSIONS(tensors, (1,) * len(tensors))


def _build(root: Any, make: _Maker) -> Any:
    """The proven graph with plain containers and ``make``'s tensors; shared sub-objects
    stay shared. :data:`FALLBACK` for anything unexpected."""
    memo: dict[int, Any] = {}
    memo_get = memo.get
    scalars = _SCALARS
    ft = FastTensor

    def value(v: Any) -> Any:
        t = type(v)
        if t in scalars:
            return v
        vid = id(v)
        done = memo_get(vid)
        if done is not None:
            return done
        out: Any
        if t is ft:
            out = memo[vid] = make(v.tensor)
            return out
        if t is FastDict or t is FastOrderedDict:
            if t is FastOrderedDict and v.hooks:
                # a tensor's backward-hooks dict the program also holds elsewhere: torch
                # shares it with the tensor, the tensors made here get their own
                raise _Unsupported("a backward-hooks dict that is also a value")
            out = memo[vid] = {} if t is FastDict else OrderedDict()
            for k, x in v.items():
                tx = type(x)
                if tx is ft:  # inlined: most items of a state dict
                    y = memo_get(id(x))
                    if y is None:
                        y = memo[id(x)] = make(x.tensor)
                elif tx in scalars:
                    y = x
                else:
                    y = value(x)
                out[k] = y
            if t is FastOrderedDict and v.state is not None:
                out.__dict__.update(value(v.state))
        elif t is FastList:
            out = memo[vid] = []
            out.extend([value(x) for x in v])
        elif t is tuple:
            out = memo[vid] = tuple([value(x) for x in v])
        else:
            raise _Unsupported(t.__name__)
        return out

    # tensors, storages and containers form no cycles: the collector would re-walk them
    with gc_paused():
        try:
            return value(root)
        except (_Unsupported, RuntimeError, TypeError, AttributeError, KeyError):
            # RecursionError (a RuntimeError) on deep nesting; the others only if the
            # graph holds something the fast path was not meant to accept: the default
            # engine (torch.load after the audit) then builds the object
            return FALLBACK


__all__ = ["FALLBACK", "load_direct", "load_meta_direct", "open_audited_meta"]
