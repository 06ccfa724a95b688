"""The one place torch is imported, plus the helpers every torch-backed loader shares:
the original ``torch.load`` (never the gated one), dtype names, ``map_location`` and
the policy's extra globals for torch's weights-only unpickler (registered thread-safely).

Importing torch can fail for reasons other than its absence (an address-space limit, a
broken install); :func:`import_failure` names the real cause.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import LoaderUnavailableError
from ..model import Report
from ..policy import Policy, used_entries
from .base import LoaderError

_MEMORY_HINTS = ("cannot allocate memory", "failed to map segment", "out of memory",
                 "std::bad_alloc", "memoryerror")


def import_failure(exc: BaseException) -> LoaderUnavailableError:
    """A :class:`LoaderUnavailableError` that says why ``import torch`` failed: missing,
    out of memory (``MemoryError``, ``ENOMEM``, a shared library that cannot be mapped under
    ``RLIMIT_AS``) or otherwise broken. Only a missing ``torch`` module says "not installed"."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == "torch":
        return LoaderUnavailableError(
            "loading checkpoints needs PyTorch, which is not installed: "
            "pip install 'ckptguard[torch]' (scanning works without it)")
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    memory = (isinstance(exc, MemoryError)
              or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
              or any(h in low for h in _MEMORY_HINTS))
    if memory:
        limit = ""
        try:
            import resource

            soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
            if soft != resource.RLIM_INFINITY:
                limit = f" (the address-space limit RLIMIT_AS is {soft} bytes)"
        except (ImportError, OSError, ValueError):  # pragma: no cover - no resource module
            pass
        return LoaderUnavailableError(
            f"PyTorch is installed but could not be imported: out of memory{limit} ({text}). "
            "Free memory or raise the limit; scanning works without torch.")
    return LoaderUnavailableError(
        f"PyTorch is installed but could not be imported ({text}); fix the installation "
        "(scanning works without torch)")


try:
    import torch
    import torch.serialization
except (ImportError, MemoryError, OSError) as _e:
    raise import_failure(_e) from _e

#: The name in ``torch.serialization``'s namespace that keeps torch's own ``load`` code
#: (so a second import of ckptguard never mistakes the gate's trampoline for it).
ORIGINAL_CODE_NAME = "_ckptguard_original_load_code"
_ns = vars(torch.serialization)
#: The code object of torch's own ``torch.serialization.load`` (the gate swaps the
#: function's code; this keeps the original even if ckptguard is imported again).
ORIGINAL_CODE: types.CodeType = _ns.setdefault(ORIGINAL_CODE_NAME,
                                               torch.serialization.load.__code__)


def _pristine_load() -> Callable[..., Any]:
    fn = torch.serialization.load
    copy = types.FunctionType(ORIGINAL_CODE, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__ = dict(fn.__kwdefaults__ or {})
    copy.__doc__ = fn.__doc__
    copy.__qualname__ = fn.__qualname__
    copy.__module__ = fn.__module__
    return copy


#: torch's own ``torch.load`` (a private copy of the function with torch's code, never the
#: gate's). Loaders call it only after a SAFE verdict (tests replace it to prove hostile
#: files never reach it).
ORIGINAL_LOAD: Callable[..., Any] = _pristine_load()

#: True while this context is inside one of ckptguard's own audited loads (the gate's
#: backstop on torch's internal loaders lets exactly those through).
INSIDE_AUDITED_LOAD: ContextVar[bool] = ContextVar("ckptguard_inside_audited_load",
                                                   default=False)


def torch_load(f: Any, **kwargs: Any) -> Any:
    """Call the original ``torch.load`` (looked up at call time, so tests can replace it),
    marked as an audited load for the gate's backstop."""
    token = INSIDE_AUDITED_LOAD.set(True)
    try:
        return ORIGINAL_LOAD(f, **kwargs)
    finally:
        INSIDE_AUDITED_LOAD.reset(token)


# --- torch's computed storage offsets (loaders/offsets.py) ------------------------------------

#: a zip holding one stored member ``a/version`` (``3\n``): the smallest archive
#: ``PyTorchFileReader`` opens, for :func:`_offsets_model_holds`
_PROBE_ARCHIVE = bytes.fromhex(
    "504b030414000000000000002100d19e6755020000000200000009000000612f76657273696f6e330a"
    "504b0102140314000000000000002100d19e67550200000002000000090000000000000000000000"
    "800100000000612f76657273696f6e504b0506000000000100010037000000290000000000")
#: (cursor, record name, size, alignment): every branch of getRecordOffsetNoRead
_PROBES = ((0, "data/0", 24, 64), (100, "data/7", 10, 64), (161, "data/12", 0, 64),
           (1000, "data/3", 8, 1), (4011, "data/3", 8, 4096), (26, "data/99", 5, 3),
           (0xFFFFFFFF, "data/5", 24, 64), (0xFFFFFF00, "data/5", 0xFFFFFFFF, 64),
           (1 << 40, "data/123456", 1 << 33, 64), (7, "data/1", 0xFFFFFFFE, 4096))


def _offsets_model_holds() -> bool:
    """Whether this torch computes record offsets as :mod:`.offsets` models them: its own
    ``get_record_offset_no_read`` on every branch, once per process (with ckptguard's
    import of torch, ~0.1 ms). False (torch always reads the headers) on a torch with
    another formula. Whether torch has the option at all is asked at the first load
    (:func:`computed_storage_offsets`): importing its config module here would make every
    :func:`mmap_opens_for_writing` take its slow path."""
    import io

    from .offsets import record_offset_no_read

    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(_PROBE_ARCHIVE))
        computed = getattr(reader, "get_record_offset_no_read")  # noqa: B009 - not in the stubs
        return all(computed(c, name, size, a) == record_offset_no_read(c, 2 + len(name), size, a)
                   for c, name, size, a in _PROBES)
    except Exception:  # noqa: BLE001 - any failure: torch reads the headers, as by default
        return False


#: :func:`_offsets_model_holds`, decided with the import
OFFSETS_MODEL_HOLDS = _offsets_model_holds()


@contextlib.contextmanager
def computed_storage_offsets(on: bool) -> Iterator[None]:
    """Let the ``torch.load`` in this block compute storage offsets instead of reading every
    storage's local header (``config.load.calculate_storage_offsets``), when ``on`` -- the
    audit proved the computation exact for this file (:func:`.offsets.computed_offsets_hold`)
    -- and this torch computes them as modelled. The caller holds the read lease (torch
    computes from the file as it reads it then). The option is process-wide, so it is only
    set while one Python thread runs (no other ``torch.load`` can see it), and put back
    after."""
    if not (on and OFFSETS_MODEL_HOLDS and threading.active_count() == 1):
        yield
        return
    # (torch.load imports this module itself; importing it here moves that, adds nothing)
    from torch.utils.serialization import config

    cfg = config.load
    if not hasattr(cfg, "calculate_storage_offsets") or cfg.calculate_storage_offsets:
        yield  # a torch without the option, or the caller already turned it on
        return
    cfg.calculate_storage_offsets = True
    try:
        yield
    finally:
        cfg.calculate_storage_offsets = False


_UNCHANGED: contextlib.nullcontext[None] = contextlib.nullcontext()


def sparse_checks_deferred(on: bool) -> contextlib.AbstractContextManager[None]:
    """:func:`_sparse_checks_off` when ``on`` (a file the fast path did not prove), else a
    shared no-op (a proven file holds no sparse tensor: nothing to set up per load)."""
    return _sparse_checks_off() if on else _UNCHANGED


@contextlib.contextmanager
def _sparse_checks_off() -> Iterator[None]:
    """Turn torch's own sparse invariant checking off for the ``torch.load`` in this block,
    when the caller enabled it (``torch.sparse.check_sparse_tensor_invariants``). torch 2.13's
    validator reads compressed indices without bounds checks (``crow_indices=[0, 3, 0]``
    with no column: SIGSEGV inside torch.load); ckptguard's own walk
    (``invariants.check_loaded``) checks the same invariants safely right after the load,
    before anything is handed out. The flag is process-wide, so it is only touched while
    one Python thread runs, and put back after."""
    get = getattr(torch._C, "_check_sparse_tensor_invariants", None)
    put = getattr(torch._C, "_set_check_sparse_tensor_invariants", None)
    if not (get is not None and put is not None and get() and threading.active_count() == 1):
        yield
        return
    put(False)
    try:
        yield
    finally:
        put(True)


#: safetensors dtype codes -> torch dtype attribute names.
_SAFETENSORS_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "C128": "complex128",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}


def mmap_opens_for_writing(mmap: bool | None) -> bool:
    """Would ``torch.load(..., mmap=mmap)`` open the file for writing? It does to map it
    shared (``torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)``), and with
    ``mmap=None`` when torch's config turns mmap on; torch builds without the option map
    privately."""
    if mmap is False:
        return False
    if "torch.utils.serialization.config" not in sys.modules:
        # the option lives there, and nothing changed it before the module was imported
        # (no environment variable feeds it): MAP_PRIVATE. Not importing it here keeps its
        # first import (~0.2 ms) inside torch.load, where it happens anyway
        return False
    get = getattr(torch.serialization, "get_default_mmap_options", None)
    if get is None:
        return False
    import mmap as _mmap

    return bool(get() == getattr(_mmap, "MAP_SHARED", None))


def dtype_of(name: str) -> torch.dtype:
    """A torch dtype from a torch name (``float32``, ``torch.bfloat16``) or a safetensors
    code (``F32``, ``BF16``, ``F8_E4M3``)."""
    text = name.removeprefix("torch.")
    attr = _SAFETENSORS_DTYPES.get(text, text)
    dt = getattr(torch, attr, None)
    if not isinstance(dt, torch.dtype):
        raise LoaderError(f"unknown dtype {name!r} in the audit's tensor records")
    return dt


MapLocation = Any  # str | torch.device | dict[str, str] | Callable | None


def single_device(map_location: MapLocation, *, saved: str = "cpu") -> torch.device:
    """The device a storage saved at ``saved`` goes to under ``map_location`` (torch's
    rules for None / str / torch.device / dict). Callables are not supported here."""
    if map_location is None:
        return torch.device(saved)
    if isinstance(map_location, torch.device):
        return map_location
    if isinstance(map_location, (str, bytes)):
        text = map_location.decode() if isinstance(map_location, bytes) else map_location
        return torch.device(text)
    if isinstance(map_location, dict):
        target = map_location.get(saved, saved)
        return target if isinstance(target, torch.device) else torch.device(str(target))
    raise LoaderError(
        f"map_location {map_location!r} is not supported for this format; pass a device "
        "string, a torch.device or a dict"
    )


def is_meta(map_location: MapLocation) -> bool:
    """True when ``map_location`` sends every tensor to the meta device."""
    if map_location == "cpu" and type(map_location) is str:
        return False  # the default: no torch.device is built (~20 us on a first call)
    if isinstance(map_location, (str, bytes, torch.device)):
        try:
            return single_device(map_location).type == "meta"
        except (RuntimeError, LoaderError):
            return False
    return False


def resolve_global(full_path: str) -> Any:
    """The object a policy entry ``module.name`` (or ``module.Class.attr``) names."""
    parts = full_path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        modname = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(modname)
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise LoaderError(f"policy allows {full_path!r}, but it cannot be imported here")


def extra_safe_globals(policy: Policy | None, report: Report | None = None) -> list[Any]:
    """``(object, "module.name")`` pairs for the policy's own entries, plus (with a report)
    the rows of chosen profiles that the audited file uses: a profile's other rows are
    never imported."""
    if policy is None:
        return []
    entries = {e.full_path: e for e in policy.extra}
    if report is not None:
        for e in used_entries(policy, report.all_findings()):
            entries.setdefault(e.full_path, e)
    return [(resolve_global(name), name) for name in entries]


# torch keeps its user-allowed globals in ONE process-wide set; its ``safe_globals``
# context manager adds on entry and removes on exit, so the first of two concurrent loads
# to finish removes entries the other still needs. Registration here is reference-counted
# under a lock: an entry stays in torch's set while any load needs it, and an entry that
# was already there (the user's own ``add_safe_globals``) is never removed.
_sg_lock = threading.Lock()
_sg_counts: dict[Any, int] = {}
_sg_ours: set[Any] = set()


def _torch_remove_safe_globals(entries: list[Any]) -> None:
    # torch has no public "remove"; its context manager's exit is the removal every
    # supported torch version provides.
    cm: Any = torch.serialization.safe_globals(entries)
    cm.__exit__(None, None, None)


def callers_safe_globals() -> list[Any]:
    """torch's weights-only extras that the *caller* added (``add_safe_globals`` or
    ``torch.serialization.safe_globals``), without the ones ckptguard registered for loads in
    flight: another thread's widened policy must never count as this caller's choice."""
    with _sg_lock:
        return [g for g in torch.serialization.get_safe_globals() if g not in _sg_ours]


def register_safe_globals(entries: list[Any]) -> None:
    """Add ``entries`` to torch's weights-only set (reference-counted, thread-safe)."""
    with _sg_lock:
        present = set(torch.serialization.get_safe_globals())
        new = []
        for e in entries:
            n = _sg_counts.get(e, 0)
            if n == 0 and e not in present:
                _sg_ours.add(e)
                new.append(e)
            _sg_counts[e] = n + 1
        if new:
            torch.serialization.add_safe_globals(new)


def release_safe_globals(entries: list[Any]) -> None:
    """Undo one :func:`register_safe_globals` of ``entries``."""
    with _sg_lock:
        gone = []
        for e in entries:
            n = _sg_counts.get(e, 0) - 1
            if n > 0:
                _sg_counts[e] = n
                continue
            _sg_counts.pop(e, None)
            if e in _sg_ours:
                _sg_ours.discard(e)
                gone.append(e)
        if gone:
            _torch_remove_safe_globals(gone)


@contextlib.contextmanager
def safe_globals(policy: Policy | None, report: Report | None = None) -> Iterator[None]:
    """The policy's extras (and nothing else; with ``report``, only those the file uses) in
    torch's weights-only set for the duration, safe to use from many threads at once
    (unlike ``torch.serialization.safe_globals``)."""
    entries = extra_safe_globals(policy, report)
    if not entries:
        yield
        return
    register_safe_globals(entries)
    try:
        yield
    finally:
        release_safe_globals(entries)


__all__ = [
    "INSIDE_AUDITED_LOAD",
    "OFFSETS_MODEL_HOLDS",
    "ORIGINAL_CODE",
    "ORIGINAL_LOAD",
    "computed_storage_offsets",
    "dtype_of",
    "extra_safe_globals",
    "import_failure",
    "is_meta",
    "mmap_opens_for_writing",
    "register_safe_globals",
    "release_safe_globals",
    "resolve_global",
    "safe_globals",
    "single_device",
    "sparse_checks_deferred",
    "torch",
    "torch_load",
]
