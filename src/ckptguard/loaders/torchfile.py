"""torch zip and legacy torch files, loaded with ``torch.load(weights_only=True)``
through the audited descriptor's inode (``/proc/self/fd/N``).

- torch zip: ``mmap=True`` by default (storages map the file; no host copy for CPU).
- legacy torch (the pre-1.6 stream format): ``weights_only=True`` *without* mmap, since
  torch refuses mmap for it.

The only globals beyond torch's weights-only set are the policy's user entries, passed
through ``torch.serialization.safe_globals`` for the duration of the call. The return
value is whatever ``torch.load`` returns (a state dict is usually a dict/OrderedDict).
"""

from __future__ import annotations

import codecs
import os
import pickle
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from ..analysis.fastpath import FastResult
from ..errors import FileChangedError
from ..model import Format
from ._torch import (
    OFFSETS_MODEL_HOLDS,
    MapLocation,
    computed_storage_offsets,
    is_meta,
    mmap_opens_for_writing,
    safe_globals,
    sparse_checks_deferred,
    torch,
    torch_load,
)
from .base import AuditedFile, LoaderError, fd_path
from .invariants import check_loaded
from .offsets import DEFAULT_ALIGNMENT, computed_offsets_hold
from .structure import NOT_EXACT, graph_difference, structure_difference

#: What torch raises when the bytes under it change mid-load (a torn or truncated file):
#: translated to FileChangedError when the file's identity no longer matches the audit.
LOAD_FAILURES: tuple[type[BaseException], ...] = (
    RuntimeError, OSError, EOFError, ValueError, LookupError, TypeError, AttributeError,
    pickle.UnpicklingError)


def translate_if_changed(af: AuditedFile, error: BaseException) -> None:
    """After a load failed with ``error``: if the file is no longer the audited one, raise
    :class:`FileChangedError` (chained to ``error``); otherwise return (re-raise it)."""
    try:
        af.verify()
    except FileChangedError as changed:
        raise changed from error


def check_encoding(path: str, encoding: object, proven: bool) -> None:
    """torch.load's ``encoding=`` (the gate passes the caller's through) decodes the pickle's
    Python 2 strings; the audit reads them as torch does by default, as UTF-8. Another
    encoding can turn a storage key into the name of another record, so it is refused
    unless the fast path ``proven`` the pickle (it holds no Python 2 string)."""
    if encoding is None or proven:
        return
    try:
        name = codecs.lookup(str(encoding)).name
    except LookupError:
        return  # torch raises its own error for it
    if name != "utf-8":
        raise LoaderError(
            f"{path}: torch.load(encoding={encoding!r}): the audit read this pickle's "
            "Python 2 strings as torch.load decodes them by default (UTF-8), and another "
            "encoding can make a storage key name another record; load it without "
            "encoding=, or re-save the checkpoint with torch.save")


def check_meta_byteorder(af: AuditedFile, map_location: MapLocation) -> None:
    """Refuse a meta load torch itself would die of: for a torch zip whose byte order is
    not this machine's, ``torch.load`` byte-swaps every storage, and on the meta device (or
    under a fake-tensor mode) those hold no data: SIGSEGV (torch 2.13). The audit calls
    such an archive SAFE (it is, for every other load); the loaders and the gate refuse
    this one load instead of letting the process crash."""
    if af.report.format is not Format.TORCH_ZIP or \
            af.report.meta("torch.byteorder", "little") == sys.byteorder:
        return
    guards = getattr(torch, "_guards", None)
    fake = guards is not None and guards.detect_fake_mode(None) is not None
    if fake or is_meta(map_location):
        raise LoaderError(f"{af.path}: a meta load of a checkpoint saved with the other byte "
                          "order crashes torch.load itself; load it on the CPU instead")


def load_torch(af: AuditedFile, map_location: MapLocation = "cpu", *, mmap: bool | None = True,
               exact_mmap: bool = False, copy: bool = False, **pickle_load_args: Any) -> Any:
    """``torch.load`` the audited file through the same inode, verify its identity, that
    torch built the tensors the audit saw (:mod:`.structure`) and, unless that comparison
    was exact on a fast-path-proven zip, the tensor invariants torch skips
    (:mod:`.invariants`); then return what torch returned.

    Under an unbroken read lease (``af.leased``: no one opened the file for writing since
    before the audit, so torch parsed the audited bytes) the identity check is the
    ``fstat`` alone and the comparison with the audit is not needed; the invariants are
    still checked unless the fast path proved the zip.

    ``mmap`` is dropped for legacy files unless ``exact_mmap`` (the guard passes the
    caller's value through unchanged, so torch's own rules and errors apply). ``copy``
    loads without mmap, so the tensors own their memory and no longer follow the file.
    A load that fails because the file changed under it, or that built tensors other than
    the audited ones, raises :class:`FileChangedError`.
    """
    legacy = af.report.format is Format.TORCH_LEGACY
    check_encoding(af.path, pickle_load_args.get("encoding"), af.proven)
    check_meta_byteorder(af, map_location)
    use_mmap: bool | None = mmap if exact_mmap else (bool(mmap) and not legacy and not copy)
    path = fd_path(af.fd, af.check_stat())
    if af.leased and path is not None and mmap_opens_for_writing(use_mmap):
        af.drop_lease()  # torch opens the file read-write to map it shared
    # only under the lease: torch computes from the file as it reads it then (its pickle,
    # its .storage_alignment), which only the lease keeps equal to what the audit proved
    calc = OFFSETS_MODEL_HOLDS and af.leased and bool(use_mmap) and path is not None and \
        _offsets_hold(af)
    try:
        with safe_globals(af.policy, af.report), computed_storage_offsets(calc), \
                sparse_checks_deferred(not af.proven):
            if path is not None:
                obj = torch_load(path, map_location=map_location, weights_only=True,
                                 mmap=use_mmap, **pickle_load_args)
            else:  # no fd path on this platform: read through a duplicate descriptor
                with os.fdopen(os.dup(af.fd), "rb") as fh:
                    obj = torch_load(fh, map_location=map_location, weights_only=True,
                                     mmap=False, **pickle_load_args)
    except LOAD_FAILURES as e:
        translate_if_changed(af, e)
        raise
    zipped = af.report.format is Format.TORCH_ZIP
    if af.verify():
        # the lease held from before the audit to now: the bytes torch parsed are the
        # audited ones, so it built what the audit saw
        if not (af.proven and zipped):
            check_loaded(obj, af.report)
        return obj
    # The file holds the audited bytes again, but torch parsed data.pkl by reading the file
    # a second time: prove that what it built is what the audit saw (.structure).
    diff = structure_difference(obj, af.report.tensors, storages=zipped,
                                offsets=zipped and bool(use_mmap) and path is not None)
    if isinstance(diff, str):
        raise FileChangedError(af.path, f"what torch.load built differs from the audited "
                               f"pickle: {diff}")
    graph = af.values_graph
    if diff is None and zipped and isinstance(graph, FastResult) and graph.root is not None:
        # ... and the values around the tensors (ints, strings, flags, keys, sharing); no
        # root: a meta build used the graph up during the audit, then failed
        values = graph_difference(obj, graph.root)
        if isinstance(values, str):
            raise FileChangedError(af.path, f"what torch.load built differs from the "
                                   f"audited pickle: {values}")
    if diff is NOT_EXACT or not (af.proven and zipped):
        # A data.pkl the fast path proved holds only dense strided rebuilds whose views it
        # checked against their storages (and torch's set_ checks them again), and the
        # comparison just proved torch built exactly those: nothing the walk could find.
        # Anything else -- the VM's files, legacy streams, a load the comparison cannot
        # model -- is walked.
        check_loaded(obj, af.report)
    return obj


def _offsets_hold(af: AuditedFile) -> bool:
    """torch may compute this proven torch zip's storage offsets (loaders/offsets.py)."""
    if af.storages is None or af.report.format is not Format.TORCH_ZIP:
        return False
    folder = af.report.meta("torch.archive_folder")
    align = af.report.meta("torch.storage_alignment")
    return folder is not None and computed_offsets_hold(
        af.storages.values(), folder, DEFAULT_ALIGNMENT if align is None else int(align))


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` for the tensors of a (possibly nested) state dict: dict
    keys, and list and tuple positions, joined with dots, as the audit names them (a meta
    load's names); other leaves are skipped. Iterative, each container once (a dict that
    holds itself, which torch.load returns as it is, raised RecursionError)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
        return
    if not isinstance(obj, _CONTAINERS):
        return

    def items(at: str, c: Any) -> Iterator[tuple[str, Any]]:
        pairs = c.items() if isinstance(c, Mapping) else enumerate(c)
        return ((f"{at}.{k}" if at else str(k), v) for k, v in pairs)

    seen = {id(obj)}
    stack = [items(prefix, obj)]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        name, value = nxt
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, _CONTAINERS) and id(value) not in seen:
            seen.add(id(value))
            stack.append(items(name, value))


_CONTAINERS = (Mapping, list, tuple)


def state_dict_items(af: AuditedFile, obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if not isinstance(obj, Mapping):
        raise LoaderError(f"{af.path}: torch.load returned a {type(obj).__name__}, not a "
                          "state dict")
    return iter_tensors(obj)


__all__ = ["LOAD_FAILURES", "check_encoding", "iter_tensors", "load_torch", "state_dict_items",
           "translate_if_changed"]
