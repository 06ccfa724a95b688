"""Optional C accelerators: each one proves a fast case, never decides anything else.

``native(name)`` returns the built module ``ckptguard._native.<name>`` or None when it was
not built (no compiler) or ``CKPTGUARD_PURE=1`` is set; callers then take the pure-Python
path, which stays the reference (differential tests pin the two to the same answers).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_cache: dict[str, ModuleType | None] = {}


def pure() -> bool:
    """True when the pure-Python path is forced (``CKPTGUARD_PURE=1``)."""
    return os.environ.get("CKPTGUARD_PURE", "") not in ("", "0")


def native(name: str) -> ModuleType | None:
    """The built accelerator ``name``, or None (not built, or CKPTGUARD_PURE=1)."""
    if pure():
        return None
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"{__name__}.{name}")
        except ImportError:
            _cache[name] = None
    return _cache[name]


__all__ = ["native", "pure"]
