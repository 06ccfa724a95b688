"""The torch.load gate's machinery: a replacement for ``torch.load`` that audits first.

:mod:`ckptguard.guard` is the public face; this module holds the patch because it touches
torch. While at least one guard is active, ``torch.load`` and ``torch.serialization.load``
are replaced by :func:`guarded_load`:

- a path: opened once, audited from that descriptor, loaded through the same inode with
  ``weights_only=True`` and the caller's ``map_location`` / ``mmap`` / pickle arguments,
  identity re-checked (``.safetensors`` paths go to the zero-copy safetensors loader, as
  ``torch.load`` itself dispatches them to safetensors);
- a file-like object: read once into memory, audited, loaded from those bytes.

Differences from plain ``torch.load``: a file whose verdict is not SAFE raises
:class:`UnsafeCheckpointError` / :class:`IncompleteScanError`; ``pickle_module`` and
``weights_only=False`` are ignored (a SAFE file only needs the weights-only unpickler,
plus the policy's user-allowed globals). Everything else is torch's.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import ScanInputError
from ..model import Format
from ..policy import Limits, Policy, with_caller_globals
from . import _torch
from ._torch import WRAPPED_ATTR, safe_globals, torch
from .base import open_audited, require_safe
from .safetensors import load_safetensors
from .torchfile import load_torch


@dataclass(frozen=True, eq=False)
class GuardConfig:
    """One active guard: the policy and limits its audits use."""

    policy: Policy
    limits: Limits


_lock = threading.RLock()
_active: list[GuardConfig] = []
_PATCHED = (("torch", "load"), ("torch.serialization", "load"))
_saved: dict[tuple[str, str], Any] = {}


def current() -> GuardConfig | None:
    with _lock:
        return _active[-1] if _active else None


def is_active() -> bool:
    return getattr(torch.load, WRAPPED_ATTR, None) is not None and current() is not None


def push(cfg: GuardConfig) -> None:
    with _lock:
        _active.append(cfg)
        if len(_active) == 1:
            _install()


def remove(cfg: GuardConfig) -> None:
    with _lock:
        for i in range(len(_active) - 1, -1, -1):
            if _active[i] is cfg:
                del _active[i]
                break
        if not _active:
            _uninstall()


def _module(name: str) -> Any:
    return torch if name == "torch" else torch.serialization


def _install() -> None:
    for mod, attr in _PATCHED:
        m = _module(mod)
        current_fn = getattr(m, attr)
        if getattr(current_fn, WRAPPED_ATTR, None) is None:
            _saved[(mod, attr)] = current_fn
            setattr(m, attr, guarded_load)


def _uninstall() -> None:
    for mod, attr in _PATCHED:
        m = _module(mod)
        saved = _saved.pop((mod, attr), None)
        if getattr(m, attr) is guarded_load and saved is not None:
            setattr(m, attr, saved)


def _load_path(f: Any, cfg: GuardConfig, map_location: Any, mmap: bool | None,
               pickle_load_args: dict[str, Any]) -> Any:
    path = os.fspath(f)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        af = open_audited(path, policy=cfg.policy, limits=cfg.limits)
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
    with safe_globals(cfg.policy, report):
        return _torch.torch_load(io.BytesIO(data), map_location=map_location,
                                 weights_only=True, mmap=mmap, **pickle_load_args)


def _caller_safe_global_names() -> list[str]:
    """``module.name`` of every global the caller allowed with
    ``torch.serialization.safe_globals`` / ``add_safe_globals`` (torch's own naming)."""
    names = []
    for g in torch.serialization.get_safe_globals():
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
    return cfg if policy is cfg.policy else GuardConfig(policy, cfg.limits)


@functools.wraps(_torch.ORIGINAL_LOAD)
def guarded_load(f: Any, map_location: Any = None, pickle_module: Any = None, *,
                 weights_only: bool | None = None, mmap: bool | None = None,
                 **pickle_load_args: Any) -> Any:
    """``torch.load``, audited first by ckptguard (see :mod:`ckptguard.guard`)."""
    cfg = current()
    if cfg is None:  # a stale reference kept after every guard ended: plain torch.load
        return _torch.torch_load(f, map_location=map_location, pickle_module=pickle_module,
                                 weights_only=weights_only, mmap=mmap, **pickle_load_args)
    del pickle_module, weights_only  # a SAFE file needs only the weights-only unpickler
    cfg = _with_caller_safe_globals(cfg)
    if isinstance(f, (str, os.PathLike)):
        return _load_path(f, cfg, map_location, mmap, pickle_load_args)
    return _load_filelike(f, cfg, map_location, mmap, pickle_load_args)


setattr(guarded_load, WRAPPED_ATTR, _torch.ORIGINAL_LOAD)
guarded_load.__doc__ = (_torch.ORIGINAL_LOAD.__doc__ or "") + (
    "\n\n(Guarded by ckptguard: the file is audited before loading; a file whose verdict "
    "is not SAFE raises ckptguard.UnsafeCheckpointError.)")

__all__ = ["GuardConfig", "current", "guarded_load", "is_active", "push", "remove"]
