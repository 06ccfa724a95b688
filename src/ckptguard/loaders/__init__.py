"""Loaders: the ONLY modules that import torch / call ``torch.load`` (DESIGN.md).

Every entry point here takes a file that was opened once and audited from that
descriptor (:func:`open_audited`) and whose verdict was checked (:func:`require_safe`);
it loads the same inode and re-checks the file's identity before handing tensors out.

Importing this package imports torch; without torch it raises
:class:`~ckptguard.errors.LoaderUnavailableError` with the install hint.
"""

from __future__ import annotations

from typing import Any

from ..model import Engine, Format
from ._torch import MapLocation, is_meta, mmap_opens_for_writing
from .base import (
    LOADABLE_FORMATS,
    TORCH_FORMATS,
    AuditedFile,
    LoaderError,
    UnsupportedFormatError,
    open_audited,
    require_safe,
    verify_identity,
)
from .meta import load_meta
from .safetensors import load_safetensors
from .sharded import StateDictIterator, audit_index_for, open_shards, parse_index
from .torchfile import load_torch


def load_audited(af: AuditedFile, map_location: MapLocation = "cpu", *,
                 mmap: bool | None = True, copy: bool = False, engine: Engine = Engine.TORCH,
                 **pickle_load_args: Any) -> Any:
    """Load a single audited, SAFE file (not an index json).

    torch files return what ``torch.load`` returns (a torch zip on meta too: from the
    audit's graph when the fast path proved it and ``af`` kept it, else from
    ``torch.load(map_location="meta")``); safetensors files, and legacy torch files on
    meta, return a flat ``{name: tensor}`` dict built from the audit's records.
    ``copy``: tensors own their memory (nothing mapped).
    ``engine=Engine.CKPTGUARD`` builds a torch zip's object from the audit's own graph
    (loaders/direct.py) when the fast path proved it and the load is a plain CPU mmap load
    without ``copy``; otherwise, and for every other format, ``torch.load``.
    """
    require_safe(af.report)
    fmt = af.report.format
    if fmt not in TORCH_FORMATS and fmt is not Format.SAFETENSORS:
        raise UnsupportedFormatError(af.report)
    if is_meta(map_location):
        if fmt is Format.TORCH_ZIP:
            # what torch.load(map_location="meta") returns: built from the audit's graph
            # when the fast path proved data.pkl (and the caller kept the graph), else by
            # torch.load itself (it reads data.pkl, never tensor bytes, on meta)
            from .direct import FALLBACK, load_meta_direct

            obj = load_meta_direct(af)
            if obj is not FALLBACK:
                return obj
            return load_torch(af, map_location, mmap=mmap, copy=copy, **pickle_load_args)
        af.verify()
        return load_meta(af.report.tensors)
    if fmt is Format.SAFETENSORS:
        return load_safetensors(af, map_location, copy=copy)
    if engine is Engine.CKPTGUARD and mmap and not copy and not pickle_load_args:
        from .direct import FALLBACK, load_direct

        obj = load_direct(af, map_location)
        if obj is not FALLBACK:
            return obj
    return load_torch(af, map_location, mmap=mmap, copy=copy, **pickle_load_args)


def iterate_audited(af: AuditedFile, map_location: MapLocation = "cpu", *,
                    mmap: bool | None = True, copy: bool = False,
                    lease: bool = False) -> StateDictIterator:
    """An iterator over a single file or, for an index json, all of its shards (every
    shard audited and SAFE before this returns). Takes ownership of ``af`` (closes it).
    ``lease``: read leases on the shards, for a caller that exhausts the iterator at once
    (``safe_load``): a writer waits for it while they are held."""
    try:
        require_safe(af.report)
        if af.report.format is Format.JSON:
            index_report = audit_index_for(af)
            require_safe(index_report)
            index = parse_index(af)
            files = open_shards(af, index_report, index, lease=lease)
            af.close()
        elif af.report.format in TORCH_FORMATS or af.report.format is Format.SAFETENSORS:
            files = [af]
        else:
            raise UnsupportedFormatError(af.report)
    except BaseException:
        af.close()
        raise
    return StateDictIterator(files, map_location, mmap=mmap, copy=copy)


__all__ = [
    "LOADABLE_FORMATS",
    "AuditedFile",
    "LoaderError",
    "StateDictIterator",
    "UnsupportedFormatError",
    "iterate_audited",
    "load_audited",
    "mmap_opens_for_writing",
    "open_audited",
    "require_safe",
    "verify_identity",
]
