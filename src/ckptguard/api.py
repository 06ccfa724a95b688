"""Audit-then-load entry points: ``safe_load``, ``load_state_dict``, ``iter_state_dict``.

Each one opens the file once, audits it from that descriptor, refuses anything whose
verdict is not SAFE (:class:`UnsafeCheckpointError` / :class:`IncompleteScanError`, both
carrying the report), loads the *same inode* and re-checks the file's identity before
returning (:class:`FileChangedError` when it changed). There is no unsafe fallback.

Importing this module does not import torch; the first load does (and raises
:class:`LoaderUnavailableError` with an install hint when torch is missing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import LoaderUnavailableError
from .model import Engine, Format
from .policy import DEFAULT_LIMITS, Limits, Policy, ProfileName, effective_policy
from .primitives import gc_paused, or_default

if TYPE_CHECKING:
    from .loaders import StateDictIterator

PathLike = str | os.PathLike[str]


def _loaders() -> Any:
    try:
        from . import loaders
    except LoaderUnavailableError:
        raise
    except ImportError as e:  # pragma: no cover - torch importable but broken
        raise LoaderUnavailableError(
            f"loading needs PyTorch and safetensors ({e}); pip install 'ckptguard[torch]'"
        ) from e
    return loaders


def safe_load(
    path: PathLike,
    map_location: Any = "cpu",
    *,
    mmap: bool = True,
    copy: bool = False,
    policy: Policy | None = None,
    limits: Limits | None = None,
    profiles: Iterable[str | ProfileName] | None = None,
    engine: Engine | str = Engine.TORCH,
) -> Any:
    """Audit ``path``, then load it; raises unless the verdict is SAFE.

    Returns:
        - torch zip / legacy torch: exactly what ``torch.load(weights_only=True)`` returns
          (a state dict is usually a ``dict``/``OrderedDict`` of tensors; nested
          structures are kept). torch zips load with ``mmap=True`` by default; legacy
          files load without mmap (torch does not support it for them).
        - safetensors: ``{name: tensor}``, zero-copy views of a private memory map for CPU.
        - a sharded checkpoint's ``*.index.json``: ``{name: tensor}`` over all shards
          (every shard audited before anything is loaded).
        - a torch.distributed.checkpoint folder (``dcp.save``): its state dict, loaded by
          torch's own DCP reader through the audited files (non-tensor items with
          ``weights_only=True``); ``map_location`` a device string or ``torch.device``.
        - ``map_location="meta"``: no tensor byte is read. A torch zip gives what
          ``torch.load(weights_only=True, map_location="meta")`` gives (same containers,
          ``_metadata``, tensor classes, dtypes, shapes, strides, storage offsets and sizes,
          ``requires_grad``), built straight from the audit when its fast path proved the
          pickle, else by that ``torch.load`` after the audit; safetensors and legacy
          torch files give a flat ``{name: meta tensor}`` built from the audit's records.

    ``map_location`` is torch's: ``"cpu"``, ``"cuda"``/``"cuda:N"``, ``"meta"``, a
    ``torch.device``, a dict remap (and, for torch files only, a callable). The policy's
    user-allowed globals are the only ones added to torch's weights-only set. The default
    policy is ``Policy()`` (torch's weights-only allowlist only); ``profiles`` adds shipped
    profiles (``["hf-trainer"]``) to it.

    ``copy=False`` (the default) keeps CPU tensors on memory maps of the file: cheap, but
    the tensors keep following the file after this returns (a rewrite changes them, a
    truncation makes the next read die with SIGBUS). Pass ``copy=True`` when the file may
    change or be truncated while you still use the tensors (a shared or network folder, a
    cache that other processes update, a long-running server): every tensor then owns its
    memory (torch files load without mmap; safetensors are read with ``pread``).

    Every returned tensor is checked for the invariants torch skips (sparse indices,
    quantization parameters, nested offsets); a violation raises
    :class:`~ckptguard.errors.TensorInvariantError` (a subclass of
    :class:`UnsafeCheckpointError`, rules CKG420-CKG423). A file that changes under the load
    raises :class:`~ckptguard.FileChangedError`.

    ``engine``: ``"torch"`` (default) loads a SAFE torch file with
    ``torch.load(weights_only=True, mmap=...)`` after the audit. ``"ckptguard"`` builds a
    torch zip's object from the audit itself (one private map of the audited file, the
    audited tensor records, containers rebuilt with OrderedDict/dict/list/tuple only) when
    the audit's fast path proved it and the load is a CPU mmap load -- the same object,
    bit for bit, without a second parse -- and falls back to ``"torch"`` otherwise.
    """
    eng = Engine(engine)
    ld = _loaders()
    pol = effective_policy(policy, profiles)
    lim = or_default(limits, DEFAULT_LIMITS)
    if os.path.isdir(path):
        from .analysis.dcp import is_dcp_dir

        if is_dcp_dir(os.fspath(path)):
            from .loaders.dcp import load_dcp

            return load_dcp(path, map_location, policy=pol, limits=lim)
    # The audit and the load each build up to millions of objects that form no cycles
    # (records, tensors, containers); the cyclic collector would re-walk them over and
    # over (~20% of a 50k-tensor torch.load). It is paused for the call and restored after.
    # a read lease makes a writer's open wait until this load is over (loaders/base.py),
    # unless torch will open the file for writing itself (a shared mmap)
    lease = not ld.mmap_opens_for_writing(mmap and not copy)
    with gc_paused():
        if ld.is_meta(map_location):
            from .loaders.direct import open_audited_meta

            af = open_audited_meta(path, policy=pol, limits=lim, lease=lease)
        else:
            af = ld.open_audited(path, policy=pol, limits=lim,
                                 keep_graph=eng is Engine.CKPTGUARD, lease=lease)
        try:
            ld.require_safe(af.report)
            if af.report.format is Format.TORCH_EXPORT:
                raise ld.UnsupportedFormatError(af.report, (
                    f"{af.path}: a torch.export archive is a program, not a state dict; "
                    "ckptguard.scan() audits it and torch.export.load() loads it (audited "
                    "first under ckptguard.guard_torch_load())"))
            if af.report.format is Format.JSON:
                it = ld.iterate_audited(af, map_location, mmap=mmap, copy=copy, lease=lease)
                with it:
                    return dict(it)
            return ld.load_audited(af, map_location, mmap=mmap, copy=copy, engine=eng)
        finally:
            af.close()
            # the fast path's graph (~4 objects a tensor) dies while the collector is
            # still paused: else its first pass after the pause walks it (~20 ms at 50k)
            af.graph = af.values_graph = None


def load_state_dict(
    checkpoint_file: PathLike,
    is_quantized: bool = False,
    map_location: Any = "cpu",
    weights_only: bool = True,
    *,
    copy: bool = False,
    policy: Policy | None = None,
    limits: Limits | None = None,
    profiles: Iterable[str | ProfileName] | None = None,
) -> Any:
    """Drop-in for ``transformers.modeling_utils.load_state_dict``: same argument names,
    audited like :func:`safe_load`.

    ``is_quantized`` is accepted for compatibility and changes nothing here.
    ``weights_only`` is accepted but cannot be turned off: a file that is not SAFE is never
    loaded, and a SAFE one is always loaded with ``weights_only=True``. ``copy`` as in
    :func:`safe_load`.
    """
    del is_quantized, weights_only
    return safe_load(checkpoint_file, map_location=map_location, copy=copy, policy=policy,
                     limits=limits, profiles=profiles)


def iter_state_dict(
    path_or_index: PathLike,
    map_location: Any = "cpu",
    *,
    mmap: bool = True,
    copy: bool = False,
    policy: Policy | None = None,
    limits: Limits | None = None,
    profiles: Iterable[str | ProfileName] | None = None,
) -> StateDictIterator:
    """Yield ``(name, tensor)`` one at a time from a file or a sharded checkpoint's index.

    The audit happens when this is called: every shard is opened and audited (and must be
    SAFE) before the iterator is returned, so no tensor is handed out from a checkpoint
    with any unsafe shard. Shards then load one at a time, at most one mapped by the
    iterator. Names are the safetensors names, or the dotted key paths of the state dict
    a torch file holds (dict keys and list/tuple positions, as the audit's report names
    them, the same on the CPU and on meta; non-tensor entries are skipped). ``close()``
    the iterator (or use it in a ``with``) to release the shard descriptors early. ``copy`` as in
    :func:`safe_load` (tensors own their memory instead of following the file).
    """
    ld = _loaders()
    pol = effective_policy(policy, profiles)
    lim = or_default(limits, DEFAULT_LIMITS)
    af = ld.open_audited(path_or_index, policy=pol, limits=lim)
    it: StateDictIterator = ld.iterate_audited(af, map_location, mmap=mmap, copy=copy)
    return it


__all__ = ["iter_state_dict", "load_state_dict", "safe_load"]
