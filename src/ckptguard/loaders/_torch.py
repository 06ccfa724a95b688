"""The one place torch is imported, plus the helpers every torch-backed loader shares:
the original ``torch.load`` (never the guarded one), dtype names, ``map_location`` and
the policy's extra globals for ``torch.serialization.safe_globals``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import LoaderUnavailableError
from ..model import Report
from ..policy import Policy, used_entries
from .base import LoaderError

try:
    import torch
    import torch.serialization
except ImportError as _e:  # pragma: no cover - exercised only without torch
    raise LoaderUnavailableError(
        "loading checkpoints needs PyTorch, which is not installed: "
        "pip install 'ckptguard[torch]' (scanning works without it)"
    ) from _e

#: Marker attribute set on the guard's wrapper so the original can always be found.
WRAPPED_ATTR = "__ckptguard_original__"


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    while hasattr(fn, WRAPPED_ATTR):
        fn = getattr(fn, WRAPPED_ATTR)
    return fn


#: torch's own ``torch.load``, captured before any guard wraps it. Loaders call it only
#: after a SAFE verdict (tests replace it to prove hostile files never reach it).
ORIGINAL_LOAD: Callable[..., Any] = _unwrap(torch.serialization.load)


def torch_load(f: Any, **kwargs: Any) -> Any:
    """Call the original ``torch.load`` (looked up at call time, so tests can replace it)."""
    return ORIGINAL_LOAD(f, **kwargs)


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


def safe_globals(policy: Policy | None, report: Report | None = None) -> Any:
    """``torch.serialization.safe_globals`` with the policy's extras and nothing else."""
    return torch.serialization.safe_globals(extra_safe_globals(policy, report))


__all__ = [
    "ORIGINAL_LOAD",
    "WRAPPED_ATTR",
    "dtype_of",
    "extra_safe_globals",
    "is_meta",
    "resolve_global",
    "safe_globals",
    "single_device",
    "torch",
    "torch_load",
]
