"""ckptguard: prove a checkpoint is only weights before loading it, then load exactly that.

    >>> import ckptguard
    >>> report = ckptguard.scan("model.bin")          # never imports torch, never executes
    >>> tensors = ckptguard.safe_load("model.bin")    # audit, then torch.load(weights_only)

Importing this package never imports torch; the loaders import it on first use. The
public API is imported explicitly, except ``guard_torch_load``: :mod:`.guard` is an import
hook, whose finder base classes pull in the standard library's resources, tempfile and
shutil modules (~5 ms in a fresh interpreter), so it is imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .api import iter_state_dict, load_state_dict, safe_load
from .errors import (
    CkptGuardError,
    FileChangedError,
    IncompleteScanError,
    LoaderUnavailableError,
    PolicyError,
    ScanInputError,
    UnsafeCheckpointError,
)
from .model import (
    Engine,
    Finding,
    Format,
    Location,
    Problem,
    Report,
    Severity,
    TensorInfo,
    Verdict,
)
from .policy import Limits, Policy
from .scan_api import scan

if TYPE_CHECKING:
    from .guard import guard_torch_load

__all__ = [
    "CkptGuardError",
    "Engine",
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


def __getattr__(name: str) -> Any:
    """``guard_torch_load``, imported on first access (see the module docstring)."""
    if name == "guard_torch_load":
        from .guard import guard_torch_load

        globals()[name] = guard_torch_load
        return guard_torch_load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _install_gate_from_env() -> None:
    """``CKPTGUARD_GUARD_TORCH_LOAD=1`` turns the torch.load gate on for the whole process
    (it hooks torch as soon as torch is imported; importing ckptguard never imports it)."""
    import os

    if os.environ.get("CKPTGUARD_GUARD_TORCH_LOAD", "").strip().lower() in {"1", "true", "yes",
                                                                             "on"}:
        from .guard import install_from_env

        install_from_env(strict=False)  # a bad policy file: every torch.load refuses


_install_gate_from_env()
