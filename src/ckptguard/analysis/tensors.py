"""torch's tensor logic, as the pickle VM meets it (CKG401-408, CKG421, CKG440-442).

The VM hands torch-specific work here through two seams, the way CPython's ``Unpickler``
hands persistent ids to ``persistent_load``: a persistent id (``persistent_load``: it must
name a storage record of the container, with a storage class, a device and a size that
agree with the record) and a call of a tensor rebuild function (``rebuild`` and the call
models' tensor effects: sizes, strides and offsets inside the storage, dtypes that may
require gradients, state torch would set on the tensor). What comes out is a
``TensorRecord`` on the ``Call``; ``name_tensors`` names the records by their key paths
once the program has run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..context import LimitExceeded
from ..policy import GlobalStatus
from ..primitives import clip
from .callmodels import TENSOR_TYPES, Effect
from .qparams import qparams_problem
from .values import (
    USER_ALLOWED,
    Blob,
    Call,
    Global,
    Opaque,
    PersRef,
    PickleMode,
    describe_value,
    int_tuple,
    numel,
    plain,
)

#: dtypes that may require gradients (torch raises for the others at load time)
GRAD_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "complex128",
                          "complex64", "complex32", "float8_e4m3fn", "float8_e5m2",
                          "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"})

#: quantized dtypes: only ``_rebuild_qtensor`` gives a tensor of these its quantizer; a plain
#: rebuild over such a storage makes a quantized tensor with none (torch asserts on its use)
QUANTIZED_DTYPES = frozenset({"qint8", "qint32", "quint8", "quint4x2", "quint2x4"})

#: the block-sparse layouts, as torch.save names them for ``_get_layout``
_BLOCK_LAYOUTS = frozenset({"torch.sparse_bsr", "torch.sparse_bsc"})
#: positional arity (min, max) of torch's tensor rebuild functions
_REBUILD_ARITY = {"_rebuild_tensor": (4, 4), "_rebuild_tensor_v2": (6, 7),
                  "_rebuild_tensor_v3": (7, 8), "_rebuild_qtensor": (7, 7)}

#: storage class name -> (dtype name, itemsize)
STORAGE_DTYPES: dict[str, tuple[str, int]] = {
    "DoubleStorage": ("float64", 8), "FloatStorage": ("float32", 4),
    "HalfStorage": ("float16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1), "BFloat16Storage": ("bfloat16", 2),
    "ComplexDoubleStorage": ("complex128", 16), "ComplexFloatStorage": ("complex64", 8),
    "QInt8Storage": ("qint8", 1), "QInt32Storage": ("qint32", 4), "QUInt8Storage": ("quint8", 1),
    "QUInt4x2Storage": ("quint4x2", 1), "QUInt2x4Storage": ("quint2x4", 1),
    "UntypedStorage": ("uint8", 1), "TypedStorage": ("uint8", 1),
}

#: torch dtype name (as in ``torch.<name>``) -> itemsize
DTYPE_SIZES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16, "complex64": 8,
    "complex32": 4, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2,
    "uint32": 4, "uint64": 8, "bool": 1, "qint8": 1, "qint32": 4, "quint8": 1, "quint4x2": 1,
    "quint2x4": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1, "bits8": 1,
    "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    **{f"uint{i}": 1 for i in range(1, 8)}, **{f"int{i}": 1 for i in range(1, 8)},
}

LOCATION_PREFIXES = ("cpu", "cuda", "meta", "mps", "xpu", "hpu", "xla", "privateuseone",
                      "mtia", "ipu", "lazy", "vulkan", "hip", "ve", "fpga", "maia")


@dataclass(slots=True)
class StorageRef:
    key: str
    dtype: str
    itemsize: int
    numel: int
    location: str
    offset: int  # of the persistent id in the pickle (file-absolute)
    member: str | None = None
    data_offset: int | None = None
    record_size: int | None = None

@dataclass(slots=True)
class TensorRecord:
    storage: StorageRef | None
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None
    dtype: str
    requires_grad: bool
    offset: int
    kind: str = "tensor"

@dataclass
class StorageCatalog:
    """What the container says about storage records: key -> (member, data offset, size).

    For torch zips the engine fills it from the archive; for legacy streams storage data
    follows the pickles and sizes are checked afterwards (``records`` stays empty and
    ``deferred`` is True)."""

    records: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    deferred: bool = False
    seen: dict[str, StorageRef] = field(default_factory=dict)


#: Tensor properties whose setters change what the tensor is.
_TENSOR_PROPERTIES = frozenset({
    "data", "grad", "requires_grad", "device", "dtype", "shape", "layout", "names", "real",
    "imag", "T", "mT", "H", "mH", "is_leaf", "grad_fn", "retains_grad", "output_nr",
})
_REBUILD_STORAGE_FNS = frozenset({
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_qtensor",
})
_PARAM_FNS = frozenset({"torch._utils._rebuild_parameter",
                        "torch._utils._rebuild_parameter_with_state"})


class TorchTensors:
    """The tensor side of one pickle run. ``add``, ``call`` and ``count_items`` are the
    VM's (findings at a position in the pickle, the modelled call of a nested rebuild, the
    container-items budget)."""

    def __init__(self, *, add: Callable[..., None],
                 call: Callable[[object, object, int, str], Call],
                 count_items: Callable[[int], None], base: int, mode: PickleMode,
                 catalog: StorageCatalog | None) -> None:
        self.add = add
        self.call = call
        self._count_items = count_items
        self.base = base
        self.mode = mode
        self.torch = mode is not PickleMode.RAW
        self.catalog = catalog
        self._copied: dict[int, int] = {}  # id(StorageRef) -> bytes copied out of it
        # backward-hooks containers already handed to a tensor rebuild (id -> container,
        # kept alive): torch attaches that very object, so items the VM adds later
        # (SETITEMS) are hooks too
        self.hooks: dict[int, object] = {}

    # -- seam 1: persistent ids -----------------------------------------------------------
    def persistent_load(self, pid: object, pos: int) -> PersRef:
        ref = PersRef(pid, self.base + pos)
        if not self.torch:
            self.add("CKG109", "persistent id in a plain pickle: pickle.load has no "
                     "persistent_load and the loading application decides what it means",
                     pos, {"pid": clip(repr(plain(pid)))})
            return ref
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            self.add("CKG109", "persistent id that is not a storage reference", pos,
                     {"pid": clip(repr(plain(pid)))})
            return ref
        ref.storage = self._storage(pid, pos)
        return ref

    def _storage(self, pid: tuple[Any, ...], pos: int) -> StorageRef | None:
        legacy = self.mode is PickleMode.TORCH_LEGACY
        want = 6 if legacy else 5
        if len(pid) != want:
            self.add("CKG401", f"storage persistent id has {len(pid)} fields, expected {want}",
                     pos)
            return None
        stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if legacy and pid[5] is not None:
            # torch's legacy loader slices the storage by (view key, offset, size); torch.save
            # always writes None, and the audit's records would not describe the slice.
            self.add("CKG430", "legacy storage persistent id carries view metadata (view key, "
                     "offset, size) that torch.save never writes", pos,
                     {"view": clip(repr(plain(pid[5])))})
        if not isinstance(stype, Global) or stype.status not in (GlobalStatus.ALLOW,
                                                                   GlobalStatus.POLICY):
            self.add("CKG401", "storage persistent id does not name an allowlisted storage "
                     "type", pos)
            return None
        sname = stype.full.rsplit(".", 1)[-1]
        dt = STORAGE_DTYPES.get(sname)
        if dt is None:
            self.add("CKG401", f"storage type {clip(stype.full)} is not a storage class", pos)
            return None
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if isinstance(location, bytes):
            location = location.decode("ascii", "replace")
        if not isinstance(key, str) or not isinstance(location, str) or \
                not isinstance(numel, int) or isinstance(numel, bool) or numel < 0 or \
                numel >= (1 << 62):
            self.add("CKG401", "storage persistent id has a malformed key, location or size",
                     pos, {"pid": clip(repr(plain(pid)))})
            return None
        if not location.startswith(LOCATION_PREFIXES):
            self.add("CKG407", f"storage location {clip(location)!r} is not a known device",
                     pos, {"location": clip(location)})
        dtype, itemsize = dt
        ref = StorageRef(key, dtype, itemsize, numel, location, self.base + pos)
        cat = self.catalog
        if cat is None:
            return ref
        prev = cat.seen.get(key)
        if prev is not None:
            if (prev.dtype, prev.numel) != (dtype, numel):
                self.add("CKG406", f"storage {clip(key)} referenced as {prev.dtype}[{prev.numel}] "
                         f"and {dtype}[{numel}]", pos, {"key": clip(key)})
            return prev
        cat.seen[key] = ref
        if cat.deferred:
            return ref
        rec = cat.records.get(key)
        if rec is None:
            self.add("CKG402", f"storage {clip(key)} has no data/{clip(key)} record in the "
                     "archive", pos, {"key": clip(key)})
            return ref
        member, data_off, size = rec
        ref.member, ref.data_offset, ref.record_size = member, data_off, size
        if size != numel * itemsize:
            self.add("CKG403", f"storage {clip(key)} declares {numel} x {itemsize} bytes but its "
                     f"record holds {size}", pos, {"key": clip(key)})
        return ref

    # -- seam 2: the rebuild call ---------------------------------------------------------
    def rebuild(self, c: Call, func: Global, args: object, pos: int) -> None:
        full = func.full
        if not isinstance(args, tuple):
            return
        if full in _REBUILD_STORAGE_FNS:
            self._tensor_from_storage(c, full, args, pos)
        elif full in _PARAM_FNS:
            if full.endswith("_with_state") and len(args) >= 4:
                self.check_tensor_state(args[3], full, pos)
            # (data, requires_grad, backward_hooks[, state]): torch sets the hooks as given
            self.check_hooks(args[2] if len(args) > 2 else None, pos)
            if args and isinstance(args[0], Call) and args[0].tensor is not None:
                t = args[0].tensor
                rg = bool(args[1]) if len(args) > 1 and isinstance(args[1], bool) else False
                if rg and t.dtype not in GRAD_DTYPES:
                    self.add("CKG408", f"requires_grad on a {t.dtype} parameter: torch refuses "
                             "to load it", pos)
                    return
                c.tensor = TensorRecord(t.storage, t.storage_offset, t.shape, t.stride, t.dtype,
                                        rg, t.offset, "parameter")
        elif full == "torch._utils._rebuild_meta_tensor_no_storage" and len(args) >= 3 and \
                isinstance(args[0], Global) and int_tuple(args[1]) and int_tuple(args[2]):
                dtype = args[0].full.rsplit(".", 1)[-1]
                c.tensor = TensorRecord(None, 0, tuple(args[1]), tuple(args[2]), dtype,
                                        bool(args[3]) if len(args) > 3 else False,
                                        self.base + pos, "meta")

    def block_sides(self, args: tuple[Any, ...], pos: int) -> None:
        """A BSR / BSC rebuild whose values record gives a block a zero side: torch's own
        validator accepts it and ``to_dense`` divides by the block size (SIGFPE). The block
        shape is a record (values: ``(*batch, nnz, rows, columns, *dense)``), so the scan
        names it; everything that needs index values is checked at load (CKG420 there)."""
        if len(args) < 2 or not isinstance(args[1], tuple) or len(args[1]) < 3:
            return
        lay = args[0]
        if not (isinstance(lay, Call) and isinstance(lay.func, Global)
                and lay.func.full == "torch.serialization._get_layout"
                and isinstance(lay.args, tuple) and len(lay.args) == 1
                and isinstance(lay.args[0], str) and lay.args[0] in _BLOCK_LAYOUTS):
            return
        comp, values = args[1][0], args[1][2]
        if not (isinstance(comp, Call) and comp.tensor is not None
                and isinstance(values, Call) and values.tensor is not None):
            return  # CKG441 already, or nothing to read
        b = len(comp.tensor.shape) - 1
        shape = values.tensor.shape
        if len(shape) >= b + 3 and (shape[b + 1] <= 0 or shape[b + 2] <= 0):
            self.add("CKG420", f"{lay.args[0]} tensor with {shape[b + 1]}x{shape[b + 2]} "
                     "blocks: torch loads it and divides by the block size on first use",
                     pos)

    def _tensor_from_storage(self, c: Call, full: str, args: tuple[Any, ...], pos: int) -> None:
        v3 = full.endswith("_v3")
        lo, hi = _REBUILD_ARITY.get(full.rsplit(".", 1)[-1], (4, 8))
        if not lo <= len(args) <= hi:  # torch raises TypeError on any other arity
            self.add("CKG408", f"{full.rsplit('.', 1)[-1]} called with {len(args)} arguments",
                     pos)
            return
        sref, offset, size, stride = args[0], args[1], args[2], args[3]
        storage = sref.storage if isinstance(sref, PersRef) else None
        if not isinstance(sref, PersRef):
            self.add("CKG408", f"{full.rsplit('.', 1)[-1]}: first argument is not a storage "
                     "reference", pos)
            return
        if storage is None:
            return  # the persistent id was malformed: already reported
        if isinstance(size, Call) and isinstance(size.func, Global) and \
                size.func.full == "torch.Size" and isinstance(size.args, tuple) and size.args:
            size = size.args[0]
        if type(size) is tuple and type(stride) is tuple:
            # a memoised shape may be reused by every rebuild: its walk is charged
            self._count_items(len(size) + len(stride))
        if not int_tuple(size) or not int_tuple(stride) or not isinstance(offset, int) or \
                isinstance(offset, bool):
            self.add("CKG405", "tensor size, stride or offset is not a tuple of integers", pos)
            return
        if len(size) != len(stride):
            self.add("CKG405", f"tensor has {len(size)} sizes but {len(stride)} strides", pos)
            return
        dims = size + stride  # min/max are C loops: this runs once per tensor
        if offset < 0 or (dims and min(dims) < 0):
            self.add("CKG405", "negative tensor size, stride or storage offset", pos,
                     {"size": clip(repr(plain(size))),
                      "stride": clip(repr(plain(stride)))})
            return
        if offset >= (1 << 62) or (dims and max(dims) >= (1 << 62)):
            self.add("CKG405", "tensor size, stride or offset overflows 62 bits", pos)
            return
        dtype, itemsize = storage.dtype, storage.itemsize
        if v3:
            dt = args[6] if len(args) > 6 else None
            if not isinstance(dt, Global) or dt.full.rsplit(".", 1)[-1] not in DTYPE_SIZES:
                self.add("CKG408", "_rebuild_tensor_v3 without a known dtype", pos)
                return
            dtype = dt.full.rsplit(".", 1)[-1]
            itemsize = DTYPE_SIZES[dtype]
        elif full.endswith("_rebuild_qtensor"):
            bad = qparams_problem(args[4], tuple(size), dtype)  # gate helper's CKG421
            if bad is not None:
                self.add("CKG421", bad, pos)
                return
        if dtype in QUANTIZED_DTYPES and not full.endswith("_rebuild_qtensor"):
            self.add("CKG421", f"plain tensor rebuild over a {dtype} storage: torch makes a "
                     "quantized tensor without a quantizer (it asserts on first use); "
                     "torch.save writes quantized tensors with _rebuild_qtensor", pos)
            return
        rg = bool(args[4]) if len(args) > 4 and isinstance(args[4], bool) else False
        if rg and dtype not in GRAD_DTYPES:
            self.add("CKG408", f"requires_grad on a {dtype} tensor: torch refuses to load it "
                     "(only floating point and complex tensors can require gradients)", pos)
            return
        # (..., requires_grad, backward_hooks, ...); _rebuild_qtensor has its quantizer
        # parameters first: (..., qparams, requires_grad, backward_hooks)
        h = 6 if full.endswith("_rebuild_qtensor") else 5
        self.check_hooks(args[h] if len(args) > h else None, pos)
        numel = 1
        for s in size:
            numel *= s
        if numel > 0:
            last = offset
            for s, st in zip(size, stride, strict=True):
                last += (s - 1) * st
            storage_elems = (storage.numel * storage.itemsize) // itemsize
            if last >= storage_elems:
                self.add("CKG404", f"tensor view reaches element {last} of a storage holding "
                         f"{storage_elems} {dtype} elements", pos,
                         {"storage": clip(storage.key)})
                return
        c.tensor = TensorRecord(storage, offset, tuple(size), tuple(stride), dtype, rg,
                                self.base + pos, "qtensor" if "qtensor" in full else "tensor")

    def check_hooks(self, hooks: object, pos: int) -> None:
        """A rebuild's backward hooks must be None or an empty mapping, and stay empty:
        torch attaches that very object to the tensor (``tensor._backward_hooks = hooks``,
        whatever it is), so items added later (setitems) are hooks too. A mapping built
        any other way -- ``OrderedDict([(k, f)])``, ``Counter(...)``, a call result, a
        persistent id -- or anything else but None is refused as a filled one is."""
        if isinstance(hooks, (Call, dict)):
            self.hooks[id(hooks)] = hooks
        if hooks is None or mapping_empty(hooks):
            return
        self.add("CKG408", f"tensor with backward hooks ({describe_value(hooks)}, not an empty "
                 "mapping): torch.save never writes them and the loader would attach "
                 "callables to the tensor", pos)

    def check_tensor_state(self, state: object, full: str, pos: int) -> None:
        """The state torch applies with setattr on a rebuilt tensor (``_set_obj_state``: a
        (dict state, slots state) pair, or one mapping; every item of any truthy mapping
        is set, an OrderedDict or a Counter as well as a dict): user attributes are fine;
        private names and tensor properties (data, grad, __class__...) would change the
        tensor after the audit recorded it. A state the audit cannot see into is refused."""
        short = clip(full.rsplit(".", 1)[-1])
        if isinstance(state, tuple):
            if len(state) != 2:
                self.add("CKG408", f"{short} state is a {len(state)}-tuple (torch takes a "
                         "mapping or a (dict state, slots state) pair)", pos)
                return
            parts: tuple[object, ...] = state
        else:
            parts = (state,)
        for d in parts:
            if not isinstance(d, _SYMBOLIC) and not d:
                continue  # None, {}: torch skips a falsy state
            keys = mapping_keys(d)
            if keys is None:
                self.add("CKG408", f"{short} sets the state {describe_value(d)} on the "
                         "rebuilt tensor: torch setattr's every item of it and the audit "
                         "cannot see its keys", pos)
                continue
            self._count_items(len(keys))  # a memoised state may be applied many times
            for k in keys:
                if not isinstance(k, str) or k.startswith("_") or k in _TENSOR_PROPERTIES:
                    self.add("CKG408", f"{short} sets attribute {clip(repr(plain(k)))} on the "
                             "rebuilt tensor", pos)

    def tensor_arg(self, v: object, name: str, i: int, pos: int,
                    allow_none: bool = False) -> TensorRecord | None:
        """An argument a rebuild function treats as a tensor must be an audited record."""
        if isinstance(v, Call) and v.tensor is not None:
            return v.tensor
        if v is None and allow_none:
            return None
        if isinstance(v, tuple) and name.endswith(("_rebuild_sparse_tensor",)):
            for x in v:
                if isinstance(x, Call) and isinstance(x.func, Global) and \
                        x.func.full == "torch.Size":
                    continue  # the size
                if isinstance(x, (Call, PersRef, Opaque, list, dict)):
                    self.tensor_arg(x, name, i, pos)
            return None
        self.add("CKG441", f"{name} argument {i} is {describe_value(v)}, not an audited tensor "
                 "record: the loader would treat whatever it is as a tensor", pos,
                 {"global": name, "argument": str(i)})
        return None

    def copy_call(self, c: Call, func: Global, args: tuple[Any, ...], pos: int) -> None:
        """_rebuild_device_tensor_from_cpu_tensor(data, dtype, device, requires_grad) copies
        ``data`` (``data.to(dtype, device)``): the copy must be backed by the storage bytes
        ``data`` views, once."""
        name = func.full.rsplit(".", 1)[-1]
        src = args[0].tensor if args and isinstance(args[0], Call) else None
        if src is None:
            return  # CKG441 already
        if len(args) != 4:
            self.add("CKG408", f"{name} called with {len(args)} arguments", pos)
            return
        dt = args[1]
        dtype = dt.full.rsplit(".", 1)[-1] if isinstance(dt, Global) else None
        if dtype not in DTYPE_SIZES:
            self.add("CKG441", f"{name} without a known dtype", pos)
            return
        need = numel(src.shape) * DTYPE_SIZES[dtype]
        st = src.storage
        have = st.numel * st.itemsize if st is not None else 0
        used = self._copied.get(id(st), 0) + need if st is not None else need
        if need > have or used > have or dtype != src.dtype:
            self.add("CKG440", f"{name} copies a {src.dtype}{list(src.shape)} tensor into "
                     f"{need} bytes of {dtype}, but it views "
                     f"{'no storage' if st is None else f'a {have}-byte storage'}"
                     f"{' copied before' if used > need else ''}: memory not backed by the "
                     "file (torch.save writes one copy of a same-dtype tensor)", pos,
                     {"global": clip(func.full)})
            return
        if st is not None:
            self._copied[id(st)] = used
        rg = bool(args[3]) if isinstance(args[3], bool) else False
        c.tensor = TensorRecord(src.storage, src.storage_offset, src.shape, src.stride, dtype,
                                rg, self.base + pos, src.kind)

    def from_type_call(self, c: Call, func: Global, args: tuple[Any, ...], pos: int) -> None:
        """_rebuild_from_type_v2(func, new_type, args, state): ``func(*args)``, converted to
        ``new_type``, then the state applied. The inner call is modelled like a REDUCE; it
        must be a tensor rebuild function and ``new_type`` a tensor class."""
        if len(args) != 4:
            self.add("CKG408", f"_rebuild_from_type_v2 called with {len(args)} arguments", pos)
            return
        inner_f, new_type, inner_args, state = args
        self.check_tensor_state(state, func.full, pos)
        if not (isinstance(new_type, Global) and (new_type.full in TENSOR_TYPES or
                                                  new_type.status in USER_ALLOWED)):
            self.add("CKG113", f"_rebuild_from_type_v2 converts to {describe_value(new_type)}, "
                     "which is not a tensor class", pos, {"new_type": describe_value(new_type)})
        if not isinstance(inner_f, Global):
            self.add("CKG113", f"_rebuild_from_type_v2 calls {describe_value(inner_f)}, not an "
                     "imported tensor rebuild function", pos)
            return
        inner = self.call(inner_f, inner_args, pos, "_rebuild_from_type_v2")
        m = inner_f.model
        makes = m.makes_tensor if m is not None else inner_f.status in USER_ALLOWED
        if not makes or (m is not None and m.effect is Effect.ALLOCATE):
            self.add("CKG113", f"_rebuild_from_type_v2 calls {clip(inner_f.full)}, which is "
                     "not a tensor rebuild function (the call runs before the result is "
                     "checked)", pos, {"callable": clip(inner_f.full)})
            return
        c.tensor = inner.tensor

    def quantized(self, c: Call, name: str, args: tuple[Any, ...], pos: int) -> None:
        """_rebuild_qtensor: the quantized tensor torch allocates must be backed by its
        storage, and its scale / zero-point tensors must be audited records."""
        t = c.tensor
        if t is not None and t.storage is not None:
            need = numel(t.shape) * DTYPE_SIZES.get(t.dtype, 1)
            have = t.storage.numel * t.storage.itemsize
            if need > have:
                self.add("CKG440", f"_rebuild_qtensor allocates {need} bytes for a "
                         f"{t.shape} quantized tensor before viewing a {have}-byte "
                         "storage: memory not backed by the file", pos,
                         {"storage": clip(t.storage.key)})
        if len(args) > 4 and isinstance(args[4], tuple):
            for j, q in enumerate(args[4][1:3], 1):
                if isinstance(q, (Call, PersRef, Opaque)):
                    self.tensor_arg(q, name, j, pos)

    def no_data(self, name: str, args: tuple[Any, ...], pos: int) -> None:
        """A wrapper subclass rebuilt with no storage bytes: only on the meta device."""
        dev = args[6] if len(args) > 6 else None
        if not (isinstance(dev, str) and dev.startswith("meta")):
            self.add("CKG442", f"{name} builds a tensor with no storage bytes on device "
                     f"{clip(repr(plain(dev)))}: its data is whatever the subclass "
                     "computes, not bytes ckptguard audited", pos, {"global": name})


# --- mappings a loader builds ------------------------------------------------------------

#: dict subclasses on the allowlist: a call of one is a mapping (its items: args + SETITEMS)
DICT_LIKE = frozenset({"collections.OrderedDict", "collections.Counter"})
_SYMBOLIC = (Call, Global, PersRef, Opaque, Blob)
_MAX_MAPPING_DEPTH = 32


def _dict_like(v: object) -> bool:
    return isinstance(v, Call) and isinstance(v.func, Global) and v.func.full in DICT_LIKE


def mapping_empty(v: object) -> bool:
    """Is ``v`` a mapping the loader builds empty (a ``{}``, an ``OrderedDict()``, a dict
    subclass called with an empty literal and given no items)? Cheap: no key is walked."""
    if type(v) is dict:
        return not v
    if not isinstance(v, Call) or not _dict_like(v):
        return False
    if v.items:
        return False
    args = v.args
    return args == () or (type(args) is tuple and len(args) == 1 and
                          type(args[0]) in (dict, list, tuple, str, bytes) and not args[0])


def mapping_keys(v: object, _depth: int = 0) -> list[object] | None:
    """The keys of the mapping a loader builds from ``v``: a dict literal (however built:
    DICT, SETITEMS, through the memo), or an OrderedDict / Counter call (its argument's
    keys -- a mapping, pairs for OrderedDict, elements for Counter -- then the items
    SETITEM(S) added). None where the audit cannot see the keys (a value computed at load
    time, a persistent id, a literal that is not a mapping)."""
    if type(v) is dict:
        return list(v)
    if not isinstance(v, Call) or not isinstance(v.func, Global) or \
            v.func.full not in DICT_LIKE or _depth > _MAX_MAPPING_DEPTH:
        return None
    counter = v.func.full == "collections.Counter"
    args = v.args
    if type(args) is not tuple or len(args) > 1:
        return None
    keys: list[object] = []
    if args:
        a = args[0]
        if type(a) is dict or _dict_like(a):
            inner = mapping_keys(a, _depth + 1)
            if inner is None:
                return None
            keys.extend(inner)
        elif type(a) in (list, tuple):
            if counter:
                keys.extend(a)
            else:
                for pair in a:
                    if type(pair) not in (tuple, list, str, bytes) or len(pair) != 2:
                        return None
                    keys.append(pair[0])
        elif type(a) is str and counter:
            keys.extend(a)
        elif not (type(a) in (str, bytes) and not a):
            return None
    if v.items:
        keys.extend(k for k, _ in v.items)
    return keys


# --- naming tensors ----------------------------------------------------------------------

def name_tensors(root: object, max_tensors: int,
                 max_depth: int = 10_000) -> list[tuple[str, TensorRecord]]:
    """Walk the unpickled structure and name every tensor record by its key path.

    Depth-first with one lazy iterator per open container and the path kept as a list of
    keys: memory grows with the nesting depth, not with the number of items, and a name is
    joined only when a tensor is found (a pickle nesting a million one-byte tuples must not
    cost a million names of a million characters). Names are bounded in total and the
    walk in depth (``max_depth``: containers nested deeper are a limit, CKG901)."""
    out: list[tuple[str, TensorRecord]] = []
    visited: set[int] = set()
    path: list[str] = []
    name_chars = 0
    if isinstance(root, Call) and root.tensor is not None:
        return [("", root.tensor)]
    if not isinstance(root, _WALKED):
        return out
    visited.add(id(root))
    frames: list[Iterator[tuple[object, object]]] = [_children(root)]
    while frames:
        nxt = next(frames[-1], None)
        if nxt is None:
            frames.pop()
            if path:
                path.pop()
            continue
        key, v = nxt
        if isinstance(v, Call) and v.tensor is not None:
            name = _path_name(path, _key_text(key))
            name_chars += len(name)
            if name_chars > _MAX_NAME_CHARS:
                raise LimitExceeded("max_tensors", max_tensors,
                                    f"tensor names longer than {_MAX_NAME_CHARS} characters "
                                    "in total")
            out.append((name, v.tensor))
            if len(out) > max_tensors:
                raise LimitExceeded("max_tensors", max_tensors)
            continue
        if id(v) in visited or (not v and not isinstance(v, Call)):
            continue  # seen, or an empty container (holds nothing to name)
        if len(frames) >= max_depth:
            raise LimitExceeded("max_mark_depth", max_depth,
                                "containers nested deeper while naming tensors")
        visited.add(id(v))
        path.append(_key_text(key))
        frames.append(_children(v))
    return out


_WALKED = (Call, dict, list, tuple)
_MAX_NAME_CHARS = 64 * 1024 * 1024


def _children(v: object) -> Iterator[tuple[object, object]]:
    """(key, child) pairs of a container that may hold tensor records, in pickle order."""
    if isinstance(v, Call):
        if v.items:
            # the loader builds a real dict: a repeated key keeps its first position and
            # its last value (the overwritten value is not in the loaded object)
            merged: dict[Any, object] = {}
            try:
                for k, x in v.items:
                    merged[k] = x
                pairs: Any = merged.items()
            except TypeError:
                pairs = v.items
            for k, x in pairs:
                if isinstance(x, _WALKED):
                    yield k, x
        elif isinstance(v.args, tuple) and isinstance(v.func, Global) and \
                v.func.full.startswith("torch."):
            for i, x in enumerate(v.args):
                if isinstance(x, _WALKED):
                    yield i, x
        if isinstance(v.state, dict):
            for k, x in v.state.items():
                if isinstance(x, _WALKED):
                    yield k, x
    elif isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, _WALKED):
                yield k, x
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            if isinstance(x, _WALKED):
                yield i, x


def _path_name(path: list[str], last: str) -> str:
    """What folding ``_join`` over the path gives: leading empty keys vanish."""
    parts = [*path, last]
    for i, p in enumerate(parts):
        if p:
            return ".".join(parts[i:])
    return ""


def _key_text(key: object) -> str:
    return _join("", key)


def _join(prefix: str, key: object) -> str:
    k = key if isinstance(key, str) else (key.decode("utf-8", "replace") if isinstance(key, bytes)
                                          else str(key) if isinstance(key, (int, float)) else "?")
    return k if not prefix else f"{prefix}.{k}"


__all__ = ["DICT_LIKE", "DTYPE_SIZES", "GRAD_DTYPES", "LOCATION_PREFIXES", "QUANTIZED_DTYPES",
           "STORAGE_DTYPES", "StorageCatalog", "StorageRef", "TensorRecord", "TorchTensors",
           "mapping_empty", "mapping_keys", "name_tensors"]
