"""The torch.load gate's machinery (:mod:`ckptguard.guard` is the public face).

Where it hooks: not the public *names* ``torch.load`` / ``torch.serialization.load`` (code
that took a reference before the gate was enabled -- ``from torch import load``, a default
argument, a ``functools.partial`` -- would walk around a replaced name), but the *function
object* they all name. While a guard is active, the code of ``torch.serialization.load`` is
swapped for a trampoline with the same signature that calls :func:`dispatch`; every
reference to that function, however old, runs the trampoline at call time. torch's
internal loaders ``torch.serialization._load`` / ``_legacy_load`` (which ``torch.load``
looks up at call time) get a backstop: called while a guard is active and not from one of
ckptguard's own audited loads, they raise :class:`UnauditedLoadError` instead of
unpickling. When the last guard ends, torch's code and internals are put back.

A guarded load:

- a path: opened once, audited from that descriptor, loaded through the same inode with
  ``weights_only=True`` and the caller's ``map_location`` / ``mmap`` / pickle arguments,
  identity re-checked (``.safetensors`` paths go to the zero-copy safetensors loader, as
  ``torch.load`` itself dispatches them to safetensors);
- a file-like object: read once into memory, audited, loaded from those bytes.

Differences from plain ``torch.load``: a file whose verdict is not SAFE raises
:class:`UnsafeCheckpointError` / :class:`IncompleteScanError`; ``pickle_module`` and
``weights_only=False`` are ignored (a SAFE file only needs the weights-only unpickler,
plus the policy's user-allowed globals). Everything else is torch's.

Which policy: the one the *calling context* entered (a :class:`contextvars.ContextVar`
holds each context's stack of guards, so threads and asyncio tasks keep their own). A
context with no guard of its own, while any guard is active anywhere in the process, gets
the process-wide guard's policy (the environment switch's) or else the default policy.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import threading
import types
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import CkptGuardError, ScanInputError, UnauditedLoadError
from ..model import Format
from ..policy import DEFAULT_LIMITS, Limits, Policy, with_caller_globals
from . import _torch
from ._torch import INSIDE_AUDITED_LOAD, ORIGINAL_CODE, mmap_opens_for_writing, safe_globals, torch
from .base import open_audited, require_safe
from .invariants import check_loaded
from .safetensors import load_safetensors
from .torchfile import check_encoding, load_torch


@dataclass(frozen=True, eq=False)
class GuardConfig:
    """One active guard: the policy and limits its audits use. ``refusal``, when set, is
    raised for every load instead (a gate that had to fail closed, e.g. the environment
    named a policy file that cannot be read)."""

    policy: Policy
    limits: Limits
    refusal: CkptGuardError | None = None


#: What a context without a guard of its own gets while some guard is active.
DEFAULT_CONFIG = GuardConfig(Policy(), DEFAULT_LIMITS)

_lock = threading.RLock()
_active: dict[GuardConfig, None] = {}   # every enabled guard in the process (ordered set)
_everywhere: list[GuardConfig] = []     # process-wide guards (the environment switch)
_stack: ContextVar[tuple[GuardConfig, ...]] = ContextVar("ckptguard_guards", default=())

#: The name under which :func:`dispatch` is reachable from torch.serialization's namespace
#: (the trampoline's code runs with that module's globals).
DISPATCH_NAME = "_ckptguard_gate"
#: torch's internal loaders that get the backstop.
BACKSTOPPED = ("_load", "_legacy_load")
_saved_internals: dict[str, Any] = {}


def current() -> GuardConfig | None:
    """The guard that applies to a load started in this context now, or None when no
    guard is active anywhere (then ``torch.load`` is torch's own)."""
    for cfg in reversed(_stack.get()):
        if cfg in _active:
            return cfg
    if not _active:
        return None
    everywhere = list(_everywhere)  # a snapshot: another thread may remove one meanwhile
    return everywhere[-1] if everywhere else DEFAULT_CONFIG


def is_installed() -> bool:
    return torch.serialization.load.__code__ is TRAMPOLINE_CODE


def is_active() -> bool:
    return is_installed() and current() is not None


def push(cfg: GuardConfig, *, everywhere: bool = False) -> None:
    """Enable ``cfg``: for this context (and contexts copied from it later), or with
    ``everywhere`` as the fallback of every context without a guard of its own."""
    with _lock:
        if not _active:
            _install()
        _active[cfg] = None
        if everywhere:
            _everywhere.append(cfg)
        else:
            _stack.set((*_stack.get(), cfg))


def remove(cfg: GuardConfig) -> None:
    """Disable ``cfg`` (from any thread); the gate comes off with the last guard."""
    with _lock:
        _active.pop(cfg, None)
        if cfg in _everywhere:
            _everywhere.remove(cfg)
        stack = _stack.get()
        if cfg in stack:
            _stack.set(tuple(c for c in stack if c is not cfg))
        if not _active:
            _uninstall()


# --- the hook ------------------------------------------------------------------------------

def _trampoline(f: Any, map_location: Any = None, pickle_module: Any = None, *,
                weights_only: bool | None = None, mmap: bool | None = None,
                **pickle_load_args: Any) -> Any:
    # This code runs as torch.serialization.load's own code, with that module's globals:
    # the dispatcher is looked up there by name (DISPATCH_NAME).
    return _ckptguard_gate(f, map_location, pickle_module, weights_only, mmap,
                           pickle_load_args)


def _code_shape(code: types.CodeType) -> tuple[Any, ...]:
    return (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
            code.co_varnames[:code.co_argcount + code.co_kwonlyargcount + 1],
            code.co_flags & 0x0C, len(code.co_freevars))


def _named_like_torch(code: types.CodeType) -> types.CodeType:
    if sys.version_info >= (3, 11):
        return code.replace(co_name=ORIGINAL_CODE.co_name,
                            co_qualname=ORIGINAL_CODE.co_qualname)
    return code.replace(co_name=ORIGINAL_CODE.co_name)  # pragma: no cover - Python 3.10


#: The code ``torch.serialization.load`` runs while the gate is installed.
TRAMPOLINE_CODE: types.CodeType = _named_like_torch(_trampoline.__code__)


def _install() -> None:
    load = torch.serialization.load
    ns = vars(torch.serialization)
    if load.__code__ is not TRAMPOLINE_CODE:
        if load.__code__ is not ORIGINAL_CODE:
            raise UnauditedLoadError(
                "cannot enable the torch.load gate: torch.serialization.load's code was "
                "replaced by something else, so the gate could not cover every caller")
        if _code_shape(load.__code__) != _code_shape(TRAMPOLINE_CODE):
            raise UnauditedLoadError(
                "cannot enable the torch.load gate: this torch's torch.load signature "
                f"{_code_shape(load.__code__)} is not the one the gate was written for")
    ns[DISPATCH_NAME] = dispatch
    for name in BACKSTOPPED:
        real = ns.get(name)
        if real is None or getattr(real, "__ckptguard_backstop__", False):
            continue
        _saved_internals[name] = real
        ns[name] = _backstop(name, real)
    load.__code__ = TRAMPOLINE_CODE


def _uninstall() -> None:
    ns = vars(torch.serialization)
    torch.serialization.load.__code__ = ORIGINAL_CODE
    for name, real in list(_saved_internals.items()):
        if getattr(ns.get(name), "__ckptguard_backstop__", False):
            ns[name] = real
        del _saved_internals[name]
    # ns[DISPATCH_NAME] stays: a thread already inside the trampoline still finds it.


def _backstop(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def backstop(*args: Any, **kwargs: Any) -> Any:
        if INSIDE_AUDITED_LOAD.get() or current() is None:
            return real(*args, **kwargs)
        raise UnauditedLoadError(
            f"torch.serialization.{name} was called directly while the torch.load gate is "
            "active; only audited loads may unpickle (call torch.load or "
            "ckptguard.safe_load instead)")

    backstop.__ckptguard_backstop__ = True  # type: ignore[attr-defined]
    backstop.__wrapped__ = real  # type: ignore[attr-defined]
    backstop.__name__ = backstop.__qualname__ = name
    return backstop


# --- the guarded load ----------------------------------------------------------------------

def _load_path(f: Any, cfg: GuardConfig, map_location: Any, mmap: bool | None,
               pickle_load_args: dict[str, Any]) -> Any:
    path = os.fspath(f)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        af = open_audited(path, policy=cfg.policy, limits=cfg.limits,
                          lease=not mmap_opens_for_writing(mmap))
    except ScanInputError:
        if not os.path.lexists(path):  # torch.load's own error type for a missing file
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        raise
    with af:
        require_safe(af.report)
        if af.report.format is Format.SAFETENSORS and path.endswith(".safetensors"):
            if isinstance(map_location, dict) or (
                    callable(map_location) and not isinstance(map_location, torch.device)):
                raise RuntimeError(
                    "Loading safetensors file with dict or callable map_location is not "
                    "supported. Use a device string or torch.device instead.")
            return load_safetensors(af, "cpu" if map_location is None else map_location)
        return load_torch(af, map_location, mmap=mmap, exact_mmap=True, **pickle_load_args)


def _load_filelike(f: Any, cfg: GuardConfig, map_location: Any, mmap: bool | None,
                   pickle_load_args: dict[str, Any]) -> Any:
    from ..analysis.engine import audit_bytes

    data = f.read()
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"torch.load: the file-like object returned {type(data).__name__} "
                        "from read(); open it in binary mode")
    data = bytes(data)
    raw_name = getattr(f, "name", None)
    name = os.fsdecode(raw_name) if isinstance(raw_name, (str, bytes, os.PathLike)) \
        else "<file-like object>"
    report = audit_bytes(data, name, policy=cfg.policy, limits=cfg.limits)
    require_safe(report)
    check_encoding(name, pickle_load_args.get("encoding"), False)
    with safe_globals(cfg.policy, report):
        obj = _torch.torch_load(io.BytesIO(data), map_location=map_location,
                                weights_only=True, mmap=mmap, **pickle_load_args)
    check_loaded(obj, report)
    return obj


def _caller_safe_global_names() -> list[str]:
    """``module.name`` of every global the caller allowed with
    ``torch.serialization.safe_globals`` / ``add_safe_globals`` (torch's own naming)."""
    names = []
    for g in _torch.callers_safe_globals():
        if isinstance(g, tuple) and len(g) == 2 and isinstance(g[1], str):
            names.append(g[1])
        else:
            module, qual = getattr(g, "__module__", None), getattr(g, "__qualname__", None)
            if isinstance(module, str) and isinstance(qual, str):
                names.append(f"{module}.{qual}")
    return names


def _with_caller_safe_globals(cfg: GuardConfig) -> GuardConfig:
    """The guard's policy plus the caller's BENIGN safe globals (never HIGH/CRITICAL)."""
    policy = with_caller_globals(cfg.policy, _caller_safe_global_names())
    return cfg if policy is cfg.policy else GuardConfig(policy, cfg.limits,
                                                         cfg.refusal)


def dispatch(f: Any, map_location: Any, pickle_module: Any, weights_only: bool | None,
             mmap: bool | None, pickle_load_args: dict[str, Any]) -> Any:
    """What ``torch.load`` does while the gate is installed: torch's own load when no
    guard applies, else audit first (see the module docstring)."""
    cfg = current()
    if cfg is None:  # the last guard ended while this call was on its way
        return _torch.ORIGINAL_LOAD(f, map_location=map_location,
                                    pickle_module=pickle_module, weights_only=weights_only,
                                    mmap=mmap, **pickle_load_args)
    if cfg.refusal is not None:
        raise cfg.refusal
    del pickle_module, weights_only  # a SAFE file needs only the weights-only unpickler
    cfg = _with_caller_safe_globals(cfg)
    if isinstance(f, (str, os.PathLike)):
        return _load_path(f, cfg, map_location, mmap, pickle_load_args)
    return _load_filelike(f, cfg, map_location, mmap, pickle_load_args)


#: The trampoline finds the dispatcher under this name in its globals (torch.serialization's
#: namespace once installed; this module's, which is never used, keeps linters honest).
_ckptguard_gate = dispatch

__all__ = ["BACKSTOPPED", "DEFAULT_CONFIG", "GuardConfig", "current", "dispatch",
           "is_active", "is_installed", "push", "remove"]
