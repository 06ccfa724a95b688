"""The fast path (DESIGN.md principle 9): prove a plain torch state-dict pickle SAFE at
C speed, or decline and leave the file to the symbolic VM.

It never reports anything. When it accepts ``data.pkl`` of a torch zip, the result it
returns is exactly what :func:`~ckptguard.analysis.vm.audit_pickle` would return for it
with no finding (same globals, same tensor records under the same names); anything it
does not fully understand -- an opcode, a global, an argument shape, a limit it cannot
bound -- makes it decline (``None``), and the VM runs as before. The differential tests
(tests/test_fastpath.py) pin that equivalence on every fixture and on generated programs.

How (docs/fastpath.md has the measurements behind each choice):

1. **Tokenise with one regular expression** (C speed): the whole stream must be
   ``PROTO 2|3``, then only the opcodes torch.save writes for state dicts (all inside
   torch's weights-only set), each with a well-formed argument (strings under 256 bytes,
   GLOBAL names of identifier characters, LONG_BINPUT indexes under 2**22), then one STOP
   at the very end. A second pass lists the opcodes (one byte each) to count them and to
   check MARK nesting (a depth-bounded regular expression).
2. **Make the C unpickler harmless before it runs**: every EMPTY_DICT / EMPTY_LIST is
   rewritten into a call of our own dict/list subclass (so every key is type-checked in
   Python before anything hashes it, and SETITEM on a list is refused as the VM refuses
   it), and the program is wrapped in ``MARK ... TUPLE`` so values left on the stack at
   STOP show up as a longer tuple.
3. **Run CPython's own ``_pickle.Unpickler``** with ``find_class`` returning inert stubs
   for a handful of allowlisted globals (tensor and parameter rebuilds, OrderedDict,
   typed storage classes) and ``persistent_load`` checking storage ids against the
   archive exactly as the VM does. Any other global, any exception: decline.
4. Name tensors with the VM's own :func:`~ckptguard.analysis.vm.name_tensors`.

The symbolic graph it leaves behind (plain containers, OrderedDict and tensor records) is
what ``engine="ckptguard"`` materialises without a second parse (loaders/direct.py).
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import cache
from types import EllipsisType
from typing import Any

from .._native import native
from ..context import AuditContext, LimitExceeded
from ..model import TensorInfo
from ..policy import GlobalStatus, Policy, classify_global
from .tensors import (
    GRAD_DTYPES,
    LOCATION_PREFIXES,
    QUANTIZED_DTYPES,
    STORAGE_DTYPES,
    StorageCatalog,
    StorageRef,
    TensorRecord,
    name_tensors,
)
from .values import Call, Global
from .vm import PickleResult, _py_mapped, _torch_mapped, _valid_dotted

# --- the token grammar --------------------------------------------------------------------

def _counted(op: bytes, width: int, top: int) -> bytes:
    """``op`` + a little-endian length of ``width`` bytes (< ``top``) + that many bytes."""
    pad = b"\x00" * (width - 1)
    alts = [re.escape(bytes([n]) + pad) + (b".{%d}" % n if n else b"") for n in range(top)]
    return re.escape(op) + b"(?:" + b"|".join(alts) + b")"


_NAME = rb"[A-Za-z_][A-Za-z0-9_.]{0,127}"
#: every opcode the fast path accepts, with a well-formed argument, most frequent first;
#: EMPTY_DICT / EMPTY_LIST are apart (they are rewritten)
_TOKEN = b"(?:" + b"|".join([
    rb"[Kqh].",                    # BININT1 / BINPUT / BINGET
    rb"r..[\x00-\x3f]\x00",        # LONG_BINPUT: index < 2**22 (a bounded C memo array)
    rb"[(\x85\x86\x87\x88\x89NtQRsa)]",  # MARK, tuples, bools, None, REDUCE, ...
    _counted(b"X", 4, 128),        # BINUNICODE under 128 bytes
    rb"[Jj]....",                  # BININT / LONG_BINGET
    rb"M..",                       # BININT2
    rb"G.{8}",                     # BINFLOAT
    _counted(b"\x8a", 1, 9),       # LONG1 up to 8 bytes
    b"c" + _NAME + rb"\n" + _NAME + rb"\n",  # GLOBAL
]) + b")"
#: bytes that start a token: a program has at most this many opcodes
_STARTS = b"Kqhr(\x85\x86\x87\x88\x89NtQRsuaeb)XJjMG\x8ac}]"
#: a run of tokens, then one the rewrite must see: EMPTY_DICT / EMPTY_LIST (rewritten),
#: BUILD (counted: every one must reach FastOrderedDict.__setstate__; the C unpickler
#: applies any other silently, e.g. slot state to a StorageRef) and SETITEMS / APPENDS
#: (right after a MARK the C unpickler skips them without looking at the target, which the
#: VM checks: declined)
@cache
def _run_pattern() -> re.Pattern[bytes]:
    """Compiled on first use (~1 ms each, this and :func:`_token_pattern`): a scan the
    native core proves never needs them."""
    return re.compile(b"(" + _TOKEN + rb"*+)([}\]bue]?)", re.S)


#: what replaces EMPTY_DICT / EMPTY_LIST before the C unpickler runs: GLOBAL of our own
#: module name (the file may not name it), EMPTY_TUPLE, REDUCE
_OWN = b"__ckptguard_fast__"
_OWN_NAME = _OWN.decode()
_NEW = {b"}": b"c" + _OWN + b"\nD\n)R", b"]": b"c" + _OWN + b"\nL\n)R"}
#: around the program: our sentinel, MARK ... program ... TUPLE, TUPLE2
_HEAD = b"c" + _OWN + b"\nS\n("
#: MARK + SETITEMS / APPENDS of nothing become a BUILD with our marker (see _NoItems)
_NO_ITEMS = {0x75: b"c" + _OWN + b"\nZ\nb", 0x65: b"c" + _OWN + b"\nY\nb"}


@cache
def _token_pattern() -> re.Pattern[bytes]:
    return re.compile(_TOKEN, re.S)


def _last_token(data: bytes, start: int, end: int) -> int:
    """Where the last token of the run ``data[start:end]`` starts (the run's tokens, as the
    run pattern split them; a run is scanned at most once, so this stays linear)."""
    last, p, match = start, start, _token_pattern().match
    while p < end:
        m = match(data, p, end)
        assert m is not None  # the run pattern matched these very tokens
        last, p = p, m.end()
    return last
_TAIL = b"t\x86."


class _Decline(Exception):
    """The fast path cannot prove this program SAFE; the VM decides."""


# --- what the C unpickler builds -----------------------------------------------------------

#: int keys below this hash to themselves, all distinct (hash(k) = k mod 2**61 - 1, and
#: hash(-1) = hash(-2)): no crafted collision chains in C's dict insert
_MAX_KEY = 1 << 60


class _NoItems:
    """What a SETITEMS (``dict``) or APPENDS (``list``) of no items becomes: a BUILD with
    this marker as the state, so the target's type is checked (the C unpickler would skip
    an empty SETITEMS/APPENDS without looking at it; the VM refuses a wrong target)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


_NO_ITEMS_DICT = _NoItems("dict")
_NO_ITEMS_LIST = _NoItems("list")


class FastDict(dict[Any, Any]):
    """A dict the program built (EMPTY_DICT): keys are checked before they are hashed."""

    __slots__ = ()

    def __setitem__(self, k: Any, v: Any) -> None:
        if type(k) is not str and (type(k) is not int or not 0 <= k < _MAX_KEY):
            raise _Decline("dict key that is not a str or a small non-negative int")
        dict.__setitem__(self, k, v)

    def __setstate__(self, state: Any) -> None:
        if state is _NO_ITEMS_DICT:
            return  # SETITEMS of nothing
        raise _Decline("BUILD on a dict")


class FastList(list[Any]):
    """A list the program built (EMPTY_LIST): SETITEM on it is refused (the VM refuses)."""

    __slots__ = ()

    def __setitem__(self, k: Any, v: Any) -> None:
        raise _Decline("SETITEM on a list")

    def __setstate__(self, state: Any) -> None:
        if state is _NO_ITEMS_LIST:
            return  # APPENDS of nothing
        raise _Decline("BUILD on a list")


class FastOrderedDict(dict[Any, Any]):
    """``collections.OrderedDict()``: called without arguments only; its BUILD state
    (``_metadata``) must hold plain values, never a tensor or a list."""

    __slots__ = ("hooks", "state")

    def __init__(self, *args: Any) -> None:
        if args:
            raise _Decline("OrderedDict called with arguments")
        self.state: FastDict | None = None
        self.hooks = False  # handed to a rebuild as its backward hooks: must stay empty

    def __setitem__(self, k: Any, v: Any) -> None:
        if self.hooks:
            raise _Decline("items added to a tensor's backward-hooks dict after the rebuild")
        if type(k) is not str and (type(k) is not int or not 0 <= k < _MAX_KEY):
            raise _Decline("OrderedDict key that is not a str or a small non-negative int")
        dict.__setitem__(self, k, v)

    def __setstate__(self, state: Any) -> None:
        if state is _NO_ITEMS_DICT:
            return  # SETITEMS of nothing
        if self.hooks:
            raise _Decline("state set on a tensor's backward-hooks dict after the rebuild")
        if type(state) is not FastDict or not _plain_meta(state, 4):
            raise _Decline("OrderedDict state that is not plain metadata")
        if self.state is not None:
            raise _Decline("a second BUILD on one OrderedDict (the VM reports it, CKG204)")
        self.state = state
        _tls.builds += 1


#: per-thread counters of the run in progress: BUILDs that reached an OrderedDict, and the
#: items _plain_meta may still look at (a memo-shared metadata DAG must not cost n**4)
_tls = threading.local()


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain_meta(d: dict[Any, Any], depth: int) -> bool:
    """A dict of str keys whose values are scalars or such dicts (``_metadata``)."""
    if depth <= 0:
        return False
    _tls.budget -= len(d)
    if _tls.budget < 0:
        raise _Decline("metadata too costly to check")
    for k, v in d.items():
        if type(k) is not str:
            return False
        t = type(v)
        if t in _SCALARS:
            continue
        if t is FastOrderedDict:
            if v.state is not None or not _plain_meta(v, depth - 1):
                return False
        elif t is not FastDict or not _plain_meta(v, depth - 1):
            return False
    return True


class FastTensor(Call):
    """The result of a tensor or parameter rebuild, with its record in ``tensor``.

    Made with ``object.__new__`` and only ``func``, ``args`` and ``tensor`` set (what the
    naming walk and the loader read): a rebuilt tensor has no items, state or offset."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _Decline("BUILD on a tensor")


_new_tensor = object.__new__


def _empty_od(v: object) -> bool:
    return type(v) is FastOrderedDict and not v and v.state is None


#: the globals the fast path understands (any other, even allowlisted: decline)
_UNDERSTOOD = frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                         "collections.OrderedDict"}) | {f"torch.{s}" for s in STORAGE_DTYPES
                                                        if s not in ("UntypedStorage",
                                                                     "TypedStorage")}


def _understood_global(module: str, name: str, proto: int,
                       ctx: AuditContext) -> Global | None:
    """The Global the fast path resolves ``module.name`` to, or None when it is not one it
    understands, the VM would resolve it to another name, or the policy does not allow it."""
    return _resolve_global(module, name, proto, ctx.policy)


def _resolve_global(module: str, name: str, proto: int, policy: Policy) -> Global | None:
    raw = f"{module}.{name}"
    if raw not in _UNDERSTOOD or not _valid_dotted(module):
        return None
    # the VM's resolution: torch's rename table, then pickle's (protocol < 3)
    py = _py_mapped(module, name) if proto < 3 else raw
    if _torch_mapped(module, name) != raw or py != raw:
        return None
    if classify_global(raw, policy).status is not GlobalStatus.ALLOW:
        return None
    return Global(module, name, raw, 0, GlobalStatus.ALLOW)


@dataclass
class FastResult:
    """An accepted program: the VM-equivalent result and the symbolic root.

    ``infos``: the report's tensor records, when the native core built them (the caller
    then skips its own per-tensor loop); None when the caller builds them."""

    result: PickleResult
    root: object
    storages: dict[str, StorageRef]
    infos: list[TensorInfo] | None = None
    #: ``(object,)``: the loaded object itself, built by the native core during the audit
    #: with the maker of :func:`set_maker` (then ``root`` is None); None otherwise
    built: tuple[object] | None = None
    #: the core ran with a maker and left out the report's tensor rows (``infos`` is
    #: empty): the report is complete in every other field, and a caller that hands it
    #: out audits again without a maker (loaders/direct.py ``open_audited_meta``)
    rows_skipped: bool = False


class _Run:
    def __init__(self, ctx: AuditContext, catalog: StorageCatalog, proto: int) -> None:
        self.ctx = ctx
        self.records = catalog.records
        self.seen: dict[str, StorageRef] = {}
        self.proto = proto
        self.globals: dict[str, Global] = {}
        self.stubs: dict[tuple[str, str], Any] = {}
        self.g_v2: Global | None = None
        #: rebuild arguments are kept only for engine="ckptguard" (its hooks re-check)
        self.keep_args = ctx.keep_graph
        #: the VM charges each rebuild's size and stride walk to max_container_items (a
        #: memo-shared shape is walked once per rebuild): charged here too, before the walk
        self.items_left = ctx.limits.max_container_items

    def find_class(self, module: str, name: str) -> Any:
        stub = self.stubs.get((module, name))
        if stub is not None:
            return stub
        if module == _OWN_NAME:
            stub = {"D": FastDict, "L": FastList, "S": _SENTINEL, "Z": _NO_ITEMS_DICT,
                    "Y": _NO_ITEMS_LIST}.get(name)
            if stub is None:
                raise _Decline("unknown own stub")
            self.stubs[(module, name)] = stub
            return stub
        g = _understood_global(module, name, self.proto, self.ctx)
        if g is None:
            raise _Decline(f"global {module}.{name} is not one the fast path understands "
                           "and allows")
        raw = g.full
        self.globals[raw] = g
        if raw == "collections.OrderedDict":
            stub = FastOrderedDict
        elif raw == "torch._utils._rebuild_tensor_v2":
            self.g_v2 = g
            stub = self._rebuild_v2
        elif raw == "torch._utils._rebuild_parameter":
            stub = self._rebuild_parameter
        else:  # a typed storage class: only ever a component of a persistent id
            stub = g
        self.stubs[(module, name)] = stub
        return stub

    def persistent_load(self, pid: Any) -> StorageRef:
        if type(pid) is not tuple or len(pid) != 5:
            raise _Decline("persistent id that is not a storage reference")
        tag, stype, key, location, numel = pid
        if tag != "storage" or type(tag) is not str or type(stype) is not Global or \
                type(key) is not str or type(location) is not str or \
                type(numel) is not int or not 0 <= numel < (1 << 62):
            raise _Decline("malformed storage persistent id")
        if not location.startswith(LOCATION_PREFIXES):
            raise _Decline("unknown storage location")
        dtype, itemsize = STORAGE_DTYPES[stype.name]
        prev = self.seen.get(key)
        if prev is not None:
            if prev.dtype != dtype or prev.numel != numel:
                raise _Decline("storage referenced with two types or sizes")
            return prev
        rec = self.records.get(key)
        if rec is None:
            raise _Decline("storage without a record")
        member, data_off, size = rec
        if size != numel * itemsize:
            raise _Decline("storage size differs from its record")
        st = StorageRef(key, dtype, itemsize, numel, location, 0, member, data_off, size)
        self.seen[key] = st
        return st

    def _rebuild_v2(self, *args: Any) -> FastTensor:
        # torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
        #                                 requires_grad, backward_hooks[, metadata])
        # (the hot path of a scan: one call per tensor, checks inlined)
        if len(args) == 6:
            st, offset, size, stride, rg, hooks = args
        elif len(args) == 7 and args[6] is None:
            st, offset, size, stride, rg, hooks = args[:6]
        else:
            raise _Decline("rebuild arity or metadata")
        if type(st) is not StorageRef or type(offset) is not int or type(rg) is not bool or \
                type(size) is not tuple or type(stride) is not tuple or \
                type(hooks) is not FastOrderedDict or hooks or hooks.state is not None or \
                hooks.hooks or \
                len(size) != len(stride):
            raise _Decline("rebuild arguments")
        self.items_left -= 2 * len(size)
        if self.items_left < 0:
            raise _Decline("size and stride walks over the items budget")
        hooks.hooks = True
        for x in size:
            if type(x) is not int:
                raise _Decline("size is not a tuple of ints")
        for x in stride:
            if type(x) is not int:
                raise _Decline("stride is not a tuple of ints")
        if size:
            dims = size + stride
            if min(dims) < 0 or max(dims) >= (1 << 62):
                raise _Decline("negative or huge size or stride")
        if not 0 <= offset < (1 << 62):
            raise _Decline("negative or huge storage offset")
        dtype = st.dtype
        if rg and dtype not in GRAD_DTYPES:
            raise _Decline("requires_grad on a dtype without gradients")
        if dtype in QUANTIZED_DTYPES:
            raise _Decline("plain rebuild over a quantized storage")
        if 0 not in size:
            last = offset
            for n, sd in zip(size, stride, strict=True):
                last += (n - 1) * sd
            if last >= st.numel:
                raise _Decline("view outside its storage")
        c = _new_tensor(FastTensor)
        c.func = self.g_v2
        c.args = args if self.keep_args else None
        c.tensor = TensorRecord(st, offset, size, stride, dtype, rg, 0, "tensor")
        return c

    def _rebuild_parameter(self, *args: Any) -> FastTensor:
        # torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)
        if len(args) != 3 or type(args[0]) is not FastTensor or type(args[1]) is not bool or \
                not _empty_od(args[2]) or args[2].hooks:
            raise _Decline("parameter arguments")
        args[2].hooks = True
        t = args[0].tensor
        assert t is not None
        if t.kind != "tensor":
            raise _Decline("parameter of a parameter")
        rg = args[1]
        if rg and t.dtype not in GRAD_DTYPES:
            raise _Decline("requires_grad on a dtype without gradients")
        c = _new_tensor(FastTensor)
        c.func = self.globals["torch._utils._rebuild_parameter"]
        c.args = args
        c.tensor = TensorRecord(t.storage, t.storage_offset, t.shape, t.stride, t.dtype, rg,
                                0, "parameter")
        return c


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, run: _Run) -> None:
        super().__init__(io.BytesIO(data))
        self.find_class = run.find_class  # type: ignore[method-assign]
        self.persistent_load = run.persistent_load  # type: ignore[method-assign]


class _Sentinel:
    __slots__ = ()


_SENTINEL = _Sentinel()


def _rewrite(data: bytes) -> tuple[bytes, int] | None:
    """The program made safe for the C unpickler and its number of BUILD opcodes, or None
    when ``data`` is not ``PROTO 2|3, accepted opcodes..., STOP``: EMPTY_DICT/EMPTY_LIST
    become calls of our own classes and the program is wrapped as
    ``(SENTINEL, (MARK program TUPLE))``, so values or MARKs left over at STOP show."""
    n = len(data)
    if n < 4 or data[0] != 0x80 or data[1] not in (2, 3) or data[-1] != 0x2E:
        return None
    view = memoryview(data)  # the runs are joined without a copy of each
    parts: list[bytes | memoryview] = [data[:2], _HEAD]
    pos, end = 2, n - 1
    builds = 0
    match = _run_pattern().match
    while True:
        m = match(data, pos, end)
        assert m is not None  # the pattern matches the empty string
        run_end, op_end = m.end(1), m.end()
        parts.append(view[pos:run_end])
        run_start, pos = pos, op_end
        if op_end == run_end:
            break
        op = data[run_end]
        if op == 0x62:  # BUILD
            builds += 1
            parts.append(b"b")
        elif op in (0x75, 0x65):  # SETITEMS / APPENDS
            if data[run_end - 1] == 0x28 and _last_token(data, run_start, run_end) == \
                    run_end - 1:
                # MARK then SETITEMS/APPENDS: no items, so the C unpickler would not look
                # at the target; BUILD with our marker checks its type instead
                parts[-1] = view[run_start : run_end - 1]
                parts.append(_NO_ITEMS[op])
            else:
                parts.append(view[run_end:op_end])
        else:
            parts.append(_NEW[data[run_end : op_end]])
    if pos != end:
        return None
    parts.append(_TAIL)
    return b"".join(parts), builds


def _depth(root: object, cap: int) -> int:
    """The longest chain of nested containers under ``root`` (lists, tuples, dicts and
    OrderedDict items/state), each node counted once (memoised, so a DAG costs its size;
    a cycle counts as nothing). Stops early once ``cap`` is exceeded."""
    if type(root) not in _CONTAINER_TYPES:
        return 0
    done: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[object, list[object] | None]] = [(root, None)]
    while stack:
        v, kids = stack[-1]
        if kids is None:
            vid = id(v)
            if vid in done or vid in active:
                stack.pop()
                continue
            active.add(vid)
            if type(v) is FastOrderedDict and v.state is not None and \
                    not _plain_meta(v.state, 4):
                # BUILD checked the state; the program may have filled it in afterwards
                raise _Decline("OrderedDict state changed after BUILD")
            ks = list(v.values()) if isinstance(v, dict) else list(v)  # type: ignore[call-overload]
            kids = [k for k in ks if type(k) in _CONTAINER_TYPES]
            stack[-1] = (v, kids)
            if len(active) > cap:
                return len(active)
            for k in kids:
                stack.append((k, None))
            continue
        stack.pop()
        vid = id(v)
        active.discard(vid)
        done[vid] = 1 + max((done.get(id(k), 0) for k in kids), default=0)
    return done.get(id(root), 0)


_CONTAINER_TYPES = frozenset({tuple, FastDict, FastList, FastOrderedDict})


# --- the native core (src/ckptguard/_native/picklecore.c) -----------------------------------

#: the TensorInfo fields the native core fills (any other shape: it leaves them to Python)
_INFO_FIELDS = ("name", "dtype", "shape", "stride", "storage", "storage_offset", "nbytes",
                "storage_nbytes", "data_offset", "device", "requires_grad", "file")
_core_state: list[Any] = []  # [module or None], once


def _core() -> Any:
    """The native core, initialised with the classes it builds, or None (not built,
    CKPTGUARD_PURE=1, or classes it cannot fill)."""
    core = native("picklecore")
    if core is None:
        return None
    if not _core_state:
        info: Any = TensorInfo if tuple(f.name for f in fields(TensorInfo)) == \
            _INFO_FIELDS else None
        try:
            core.init(StorageRef, TensorRecord, info, FastDict, FastList, FastOrderedDict,
                      FastTensor)
        except (TypeError, AttributeError):
            _core_state.append(None)
        else:
            _core_state.append(core)
    return _core_state[0]


_core()  # loaded and initialised with this module, as zipfast loads zipcore (a dlopen)


def _try_native(core: Any, ctx: AuditContext, data: bytes,
                catalog: StorageCatalog) -> FastResult | None:
    """The native core's proof, as a FastResult identical to the Python path's, or None."""
    proto = data[1] if len(data) > 1 else 0
    gobjs = _native_gobjs(core, proto, ctx.policy)
    lim = ctx.limits
    maker = getattr(_tls, "maker", None) if ctx.keep_graph else None
    # with a maker (a meta load) the report's 50k TensorInfo rows are not built, and the
    # (name, record) pairs are freed before the object is built (``result.tensors`` is
    # empty): the load returns the object, and the report is handed out only by an audit
    # without a maker
    out = core.scan(data, catalog.records, tuple(gobjs.values),
                    (lim.max_stack, lim.max_container_items, lim.max_memo,
                     lim.max_mark_depth, lim.max_tensors, lim.max_objects,
                     lim.max_memo_index), ctx.keep_graph, maker is None,
                    maker, None if maker is None else OrderedDict, gobjs.resolve)
    if out is None:
        return None
    order, tensors, infos, seen, root = out
    built = None
    if maker is not None:
        built, root = root, None  # the loaded object (or None: its build failed)
    ctx.source.check_time()
    if catalog.seen:
        catalog.seen.update(seen)
    else:
        catalog.seen = seen  # the core's dict, sized for the archive (no 50k-item copy)
    keep = root if ctx.keep_graph else None
    result = PickleResult(end=len(data), complete=True, root=keep,
                          globals=[gobjs.values[i] for i in order], tensors=tensors)
    if maker is not None:
        return FastResult(result, keep, seen, [], built, rows_skipped=True)
    return FastResult(result, keep, seen, infos, built)


def set_maker(maker: Any) -> Any:
    """Until set back (returns the previous one; None: none), a native proof of a kept
    graph (``ctx.keep_graph``) on this thread builds the loaded object itself, with
    ``maker(TensorRecord)`` per tensor, instead of the graph (``FastResult.built``),
    and leaves the report's tensor rows out (``FastResult.rows_skipped``):
    loaders/direct.py's meta loads."""
    prev = getattr(_tls, "maker", None)
    _tls.maker = maker
    return prev


_globals_cache: list[tuple[tuple[str, str], ...]] = []


class _Gobjs:
    """The core's globals under one (policy, protocol), resolved when a program first names
    one (``core.scan`` calls :meth:`resolve`; a state dict names 2-4 of the ~20): ``values``
    holds ``...`` for those not resolved yet. A resolution reads only static tables and the
    (immutable) policy, and a Global is never changed after it is made."""

    __slots__ = ("names", "policy", "proto", "values")

    def __init__(self, names: tuple[tuple[str, str], ...], proto: int, policy: Policy) -> None:
        self.names, self.proto, self.policy = names, proto, policy
        self.values: list[Global | EllipsisType | None] = [...] * len(names)

    def resolve(self, i: int) -> Global | None:
        module, name = self.names[i]
        got = _resolve_global(module, name, self.proto, self.policy)
        self.values[i] = got
        return got


#: (policy, protocol) -> its globals (a Global resolves in ~6 us on a first call)
_gobjs_cache: dict[tuple[object, int], _Gobjs] = {}


def _native_gobjs(core: Any, proto: int, policy: Policy) -> _Gobjs:
    key = (policy, proto)
    got = _gobjs_cache.get(key)
    if got is None:
        got = _Gobjs(_native_globals(core), proto, policy)
        if len(_gobjs_cache) >= 16:
            _gobjs_cache.clear()
        _gobjs_cache[key] = got
    return got


def _native_globals(core: Any) -> tuple[tuple[str, str], ...]:
    """(module, name) of the globals the core knows, in the order of its ids."""
    if not _globals_cache:
        _globals_cache.append(tuple((m, n) for m, n in (full.rsplit(".", 1)
                                                        for full in core.tables()[0])))
    return _globals_cache[0]


def try_fast(ctx: AuditContext, data: bytes, catalog: StorageCatalog) -> FastResult | None:
    """Prove the torch-zip ``data.pkl`` program ``data`` SAFE, or return None (decline).

    The native core runs first where it is built; when it declines (or is absent, or
    ``CKPTGUARD_PURE=1``), the Python path below. On acceptance ``catalog.seen`` is filled
    exactly as the VM fills it; on decline nothing in ``ctx`` or ``catalog`` has
    changed."""
    if catalog.deferred:
        return None
    core = _core()
    if core is not None:
        fast = _try_native(core, ctx, data, catalog)
        if fast is not None:
            return fast
    return _try_python(ctx, data, catalog)


def _try_python(ctx: AuditContext, data: bytes, catalog: StorageCatalog) -> FastResult | None:
    """The Python fast path (CPython's C unpickler over checking stubs)."""
    limits = ctx.limits
    if catalog.deferred or _OWN in data:
        return None
    # Bounds the VM enforces, met for certain here (else the VM decides): every value on
    # the stack and every container item needs an opcode, every memo entry a PUT.
    n = len(data)
    n_ops = n - len(data.translate(None, _STARTS))
    n_puts = n - len(data.translate(None, b"qr"))
    if n_ops > min(limits.max_stack, limits.max_container_items) or \
            n_puts > limits.max_memo or limits.max_memo_index < (1 << 22):
        return None
    rewritten = _rewrite(data)
    if rewritten is None:
        return None
    prog, builds = rewritten
    run = _Run(ctx, catalog, data[1])
    _tls.builds = 0
    _tls.budget = 8 * n + 1024
    blocks = sys.getallocatedblocks()
    try:
        out = _Unpickler(prog, run).load()
    except Exception:  # noqa: BLE001 - anything the C unpickler or a stub raises: decline
        return None
    if _tls.builds != builds:
        return None  # a BUILD applied to something else than an OrderedDict
    # the VM's allocation bound, with room for the VM's own records
    if 2 * (sys.getallocatedblocks() - blocks) > limits.max_objects:
        return None
    if type(out) is not tuple or len(out) != 2 or out[0] is not _SENTINEL or \
            type(out[1]) is not tuple or len(out[1]) != 1:
        return None  # MARKs or values left over at STOP (the VM reports CKG204)
    root = out[1][0]
    # MARK nesting: every MARK level but those inside the checked rebuild arguments (at
    # most 3) nests a container, and ours wraps the program
    try:
        if _depth(root, limits.max_mark_depth) + 5 > limits.max_mark_depth:
            return None
    except _Decline:
        return None
    try:
        tensors = name_tensors(root, limits.max_tensors, limits.max_mark_depth)
    except LimitExceeded:
        return None
    ctx.source.check_time()
    catalog.seen.update(run.seen)
    # The graph is dropped here unless engine="ckptguard" will build from it: the tensor
    # records are all a scan needs (a 50k-tensor graph is ~40 MB of peak memory).
    keep = root if ctx.keep_graph else None
    result = PickleResult(end=len(data), complete=True, root=keep,
                          globals=list(run.globals.values()), tensors=tensors)
    return FastResult(result, keep, run.seen)


__all__ = ["FastDict", "FastList", "FastOrderedDict", "FastResult", "FastTensor", "set_maker",
           "try_fast"]
