"""The gate's torch.export hook: ``torch.export.load`` and ``load_pt2`` audit first.

While a ``guard_torch_load`` guard is active, ``torch.export.load`` and
``torch.export.pt2_archive._package.load_pt2`` (which ``torch.export.load`` and
``torch._inductor.aoti_load_package`` call) read the archive once (a path through one
descriptor, a file-like object with one ``read()``), audit those bytes (the .pt2 auditor:
nested pickles, expressions, AOTInductor members) and, when SAFE, hand torch a
``BytesIO`` of exactly those bytes. The nested ``torch.load`` calls inside then go through
the torch.load gate as well. A file whose verdict is not SAFE raises
:class:`~ckptguard.UnsafeCheckpointError` before torch reads a byte.

Not covered: references taken before the guard was enabled (``from torch.export import
load``), and the C++ loaders (``AOTIModelPackageLoader`` opened directly).

``ckptguard.safe_load`` does not load .pt2 archives: they are programs, not state dicts
(it raises ``UnsupportedFormatError`` saying so).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from typing import Any

from ..errors import FileChangedError, ScanInputError
from ..model import Report
from .base import check_stat, open_audited, pread_all, require_safe

_saved: dict[str, Any] = {}


def _audited_bytes(f: Any, cfg: Any) -> tuple[bytes, Report]:
    from ..analysis.engine import audit_bytes

    if isinstance(f, (str, os.PathLike)):
        path = os.fspath(f)
        try:
            af = open_audited(path, policy=cfg.policy, limits=cfg.limits)
        except ScanInputError:
            if not os.path.lexists(path):
                raise FileNotFoundError(path) from None
            raise
        with af:
            require_safe(af.report)
            size = os.fstat(af.fd).st_size
            data = pread_all(af.fd, 0, size)
            check_stat(af.path, af.fd, af.report.identity)
            ident = af.report.identity
            assert ident is not None
            for r in ident.regions:
                if hashlib.sha256(data[r.offset:r.offset + r.length]).hexdigest() != r.sha256:
                    raise FileChangedError(path, f"bytes {r.offset}..{r.offset + r.length} "
                                           "differ from the audited ones")
            return data, af.report
    data = f.read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("torch.export.load: the file-like object must be opened in binary mode")
    data = bytes(data)
    raw_name = getattr(f, "name", None)
    name = os.fsdecode(raw_name) if isinstance(raw_name, (str, bytes, os.PathLike)) \
        else "<file-like object>.pt2"
    report = audit_bytes(data, name, policy=cfg.policy, limits=cfg.limits)
    require_safe(report)
    return data, report


def _gated(key: str) -> Any:
    def gated(f: Any, *args: Any, **kwargs: Any) -> Any:
        from . import gate

        original = _saved[key][2]
        cfg = gate.current()
        if cfg is None:
            return original(f, *args, **kwargs)
        if cfg.refusal is not None:  # a gate that had to fail closed refuses every load
            raise cfg.refusal
        data, _ = _audited_bytes(f, cfg)
        return original(io.BytesIO(data), *args, **kwargs)

    gated.__name__ = key.rsplit(".", 1)[-1]
    gated.__doc__ = "(Guarded by ckptguard: the archive is audited before torch reads it.)"
    return gated


#: ``(key, module, attribute)`` of each function the gate wraps. The guard hooks each module
#: once torch has imported it (guard.py): ``torch.export`` comes with ``import torch``, while
#: ``_package`` pulls in torch._dynamo and the export serializer (~0.9 s of CPU), which a
#: gated process that never reads a .pt2 must not pay.
TARGETS: tuple[tuple[str, str, str], ...] = (
    ("torch.export.load", "torch.export", "load"),
    ("torch.export.pt2_archive._package.load_pt2", "torch.export.pt2_archive._package",
     "load_pt2"),
)
MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for _, m, _ in TARGETS))


def install_gate(module_name: str) -> None:
    """Route the functions of ``module_name`` (one of :data:`MODULES`) through the audit
    (idempotent)."""
    for key, name, attr in TARGETS:
        if name == module_name and key not in _saved:
            module = importlib.import_module(name)
            fn = _gated(key)
            _saved[key] = (module, attr, getattr(module, attr), fn)
            setattr(module, attr, fn)


def uninstall_gate() -> None:
    for key in list(_saved):
        module, attr, original, fn = _saved.pop(key)
        if getattr(module, attr) is fn:
            setattr(module, attr, original)


__all__ = ["MODULES", "TARGETS", "install_gate", "uninstall_gate"]
