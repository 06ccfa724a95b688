"""Sharded checkpoints (``*.index.json`` with a ``weight_map``) and one-at-a-time iteration.

The index is audited as the formats layer audits it (``analysis.folder.audit_index``:
weight map, shard names and links, every shard, index/shard cross-checks) and must be
SAFE before the first tensor is handed out. Each shard is then opened once and checked to
be the very bytes its audit saw (inode, size, mtime, ctime, SHA-256 of the audited regions); the
descriptors stay open so each shard is later loaded through that inode. Shards are then
loaded one after the other: the iterator keeps at most one shard mapped (tensors it
already handed out keep their own shard's pages alive, as usual).
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import weakref
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..errors import FileChangedError
from ..model import Format, Report
from ..primitives import open_readonly
from ._torch import MapLocation, is_meta, torch
from .base import (
    TORCH_FORMATS,
    AuditedFile,
    LoaderError,
    UnsupportedFormatError,
    pread_all,
    require_safe,
    take_load_lease,
    verify_identity,
)
from .meta import iter_meta
from .safetensors import iter_safetensors
from .torchfile import load_torch, state_dict_items


@dataclass(frozen=True)
class ShardIndex:
    """A parsed index: shard file names in first-use order and the tensor -> shard map."""

    shards: tuple[str, ...]
    weight_map: dict[str, str]


def _valid_shard_name(name: str) -> bool:
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        return False
    if len(name) > 1 and name[1] == ":":  # a Windows drive
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def parse_index(af: AuditedFile) -> ShardIndex:
    """Read the audited index json through its descriptor and validate its weight map."""
    size = af.report.identity.size if af.report.identity is not None else 0
    if size > af.limits.max_header_bytes:
        raise LoaderError(f"{af.path}: index json is {size} bytes, over max_header_bytes")
    raw = pread_all(af.fd, 0, size)
    af.verify()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UnsupportedFormatError(af.report, f"{af.path}: not a valid index json ({e})") \
            from None
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise UnsupportedFormatError(
            af.report, f"{af.path}: a JSON file without a 'weight_map' is not a sharded "
            "checkpoint index; nothing to load")
    shards: dict[str, None] = {}
    for key, shard in wm.items():
        if not isinstance(shard, str) or not _valid_shard_name(shard):
            raise LoaderError(f"{af.path}: weight_map[{key!r}] names an invalid shard path "
                              f"{shard!r} (must be relative, inside the index's folder)")
        shards.setdefault(posixpath.normpath(shard), None)
    return ShardIndex(tuple(shards), {k: posixpath.normpath(v) for k, v in wm.items()})


def audit_index_for(af: AuditedFile) -> Report:
    """Audit the index as the formats layer does (``audit_index``: the weight map, every
    shard, the cross-checks) and make sure it describes the index ``af`` holds open."""
    from ..analysis.folder import audit_index

    report = audit_index(af.path, policy=af.policy, limits=af.limits)
    verify_identity(af.path, af.fd, report.identity)
    return report


def open_shards(index_af: AuditedFile, index_report: Report, index: ShardIndex, *,
                lease: bool = False) -> list[AuditedFile]:
    """Open every shard the SAFE ``index_report`` audited and check that each descriptor
    holds exactly the audited bytes (inode, size, mtime, ctime, audited regions); returns them
    in weight-map order. On any failure all are closed. ``lease``: take a read lease on each
    shard before that check (a caller that loads them all right away): from the check on,
    an unbroken lease proves the bytes (loaders/base.py)."""
    require_safe(index_report)
    folder = os.path.dirname(index_af.path)
    children = {os.path.normpath(c.path): c for c in index_report.children}
    opened: list[AuditedFile] = []
    try:
        for shard in index.shards:
            path = os.path.join(folder, *shard.split("/"))
            child = children.get(os.path.normpath(path))
            if child is None:
                raise LoaderError(f"{index_af.path}: shard {shard!r} has no audit report")
            require_safe(child)
            if child.format not in TORCH_FORMATS | {Format.SAFETENSORS}:
                raise UnsupportedFormatError(child)
            try:
                fd = open_readonly(path)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):  # nothing changed: a process limit
                    raise LoaderError(
                        f"{index_af.path}: cannot hold {len(index.shards)} shards open at "
                        f"once ({e.strerror}): every shard stays open from its audit to its "
                        "load (same bytes); raise the open-file limit (ulimit -n)") from None
                raise FileChangedError(path, f"cannot reopen the shard ({e.strerror or e})") \
                    from None
            leased = lease and take_load_lease(fd)
            af = AuditedFile(path, fd, child, index_af.policy, index_af.limits)
            opened.append(af)
            af.verify()  # the full re-read: the lease was taken after the shard's audit
            af.leased = leased  # from that re-read on, an unbroken lease proves the bytes
            names = {t.name for t in child.tensors}
            missing = sorted(k for k, v in index.weight_map.items()
                             if v == shard and k not in names)
            if names and missing:
                raise LoaderError(
                    f"{index_af.path}: the index places {len(missing)} tensor(s) in "
                    f"{shard} that the shard does not hold (first: {missing[0]!r})")
    except BaseException:
        for af in opened:
            af.close()
        raise
    return opened


def _close_all(files: list[AuditedFile]) -> None:
    for af in files:
        af.close()


class StateDictIterator(Iterator[tuple[str, "torch.Tensor"]]):
    """Yields ``(name, tensor)`` from already-audited files, one file loaded at a time.

    Use it as an iterator; ``close()`` (or ``with``) releases the descriptors early.
    """

    def __init__(self, files: list[AuditedFile], map_location: MapLocation, *,
                 mmap: bool | None = True, copy: bool = False) -> None:
        self._files = list(files)
        self._map_location = map_location
        self._mmap = mmap
        self._copy = copy
        self._finalizer = weakref.finalize(self, _close_all, self._files)
        self._gen: Generator[tuple[str, torch.Tensor], None, None] = self._run()

    def _run(self) -> Generator[tuple[str, torch.Tensor], None, None]:
        meta = is_meta(self._map_location)
        for af in self._files:
            if meta:
                af.verify()
                yield from iter_meta(af.report.tensors)
            elif af.report.format is Format.SAFETENSORS:
                yield from iter_safetensors(af, self._map_location, copy=self._copy)
            else:
                obj: Any = load_torch(af, self._map_location, mmap=self._mmap,
                                      copy=self._copy)
                yield from state_dict_items(af, obj)
                del obj
            af.close()

    def __iter__(self) -> StateDictIterator:
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()
        self._finalizer()

    def __enter__(self) -> StateDictIterator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ShardIndex", "StateDictIterator", "audit_index_for", "open_shards", "parse_index"]
