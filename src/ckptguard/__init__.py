"""ckptguard: prove a checkpoint is only weights before loading it, then load exactly that.

    >>> import ckptguard
    >>> report = ckptguard.scan("model.bin")          # never imports torch, never executes
    >>> tensors = ckptguard.safe_load("model.bin")    # audit, then torch.load(weights_only)

Importing this package never imports torch; the loaders import it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CkptGuardError,
    FileChangedError,
    IncompleteScanError,
    LoaderUnavailableError,
    PolicyError,
    ScanInputError,
    UnsafeCheckpointError,
)
from .model import Finding, Format, Location, Problem, Report, Severity, TensorInfo, Verdict
from .policy import Limits, Policy
from .scan_api import scan

if TYPE_CHECKING:
    from .api import iter_state_dict, load_state_dict, safe_load
    from .guard import guard_torch_load

_LAZY = {
    "safe_load": "api",
    "load_state_dict": "api",
    "iter_state_dict": "api",
    "guard_torch_load": "guard",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ckptguard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)


__all__ = [
    "CkptGuardError",
    "FileChangedError",
    "Finding",
    "Format",
    "IncompleteScanError",
    "Limits",
    "LoaderUnavailableError",
    "Location",
    "Policy",
    "PolicyError",
    "Problem",
    "Report",
    "ScanInputError",
    "Severity",
    "TensorInfo",
    "UnsafeCheckpointError",
    "Verdict",
    "__version__",
    "guard_torch_load",
    "iter_state_dict",
    "load_state_dict",
    "safe_load",
    "scan",
]


def _install_gate_from_env() -> None:
    """``CKPTGUARD_GUARD_TORCH_LOAD=1`` turns the torch.load gate on for the whole process
    (it hooks torch as soon as torch is imported; importing ckptguard never imports it)."""
    import os

    if os.environ.get("CKPTGUARD_GUARD_TORCH_LOAD", "").strip().lower() in {"1", "true", "yes",
                                                                             "on"}:
        from .guard import install_from_env

        install_from_env(strict=False)  # a bad policy file: every torch.load refuses


_install_gate_from_env()
