"""Public face of the pickle VM for the other layers (readers, folder audit).

    result = audit_pickle(ctx, data, member="archive/data.pkl", base_offset=off,
                          mode=PickleMode.TORCH_ZIP, storages=catalog)

Findings go into ``ctx`` with byte offsets relative to the file (``base_offset`` + offset
in ``data``). ``result.end`` is the offset in ``data`` just past STOP (or where decoding
stopped); ``result.tensors`` are reconstructed tensor records.
"""

from __future__ import annotations

from .vm import PickleMode, PickleResult, StorageCatalog, audit_pickle

__all__ = ["PickleMode", "PickleResult", "StorageCatalog", "audit_pickle"]
