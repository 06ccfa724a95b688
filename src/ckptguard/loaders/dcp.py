"""Loading torch.distributed.checkpoint (DCP) folders, and the gate's DCP hook.

``load_dcp(folder)``: the folder is audited (``analysis.dcp_folder.audit_dcp``) and must be SAFE;
then every file the audit read is opened once, checked against the audit's identity (same
inode, size, mtime, ctime, and the SHA-256 of every region the audit relied on: the whole
``.metadata``, each torch.save archive's directory and pickle), and torch's own DCP
reader (``FileSystemReader`` + ``_EmptyStateDictLoadPlanner``, what ``dcp_to_torch_save``
uses) loads through those descriptors. Differences from torch's reader:

- ``read_metadata`` unpickles the audited bytes with an unpickler that resolves only the
  weights-only allowlist, the DCP-scoped benign list and the policy's globals;
- non-tensor items load with ``torch.load(weights_only=True)`` (torch's default planner
  uses ``weights_only=False``; a SAFE item needs no more);
- identities are checked again after the load. Same-bytes deviation: the audit opens the
  files itself, the loader re-opens them and proves they are the audited ones (inode and
  region digests) before and after reading; tensors are copies, never maps of the files.

``install_gate``/``uninstall_gate``: while a ``guard_torch_load`` guard is active,
``FileSystemReader.read_metadata`` (what ``dcp.load`` / ``dcp_to_torch_save`` call) audits
first: a local folder is audited whole (ranges, paths, every payload), any other storage
(fsspec) has its metadata bytes audited; the torch.load calls ``read_data`` makes go
through the torch.load gate as usual.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import FileChangedError, LoaderError, ScanInputError
from ..model import Format, Report
from ..policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from ..policy.benign_formats import FormatScope, allowance_for
from ..policy.policy import GlobalStatus, classify_global
from ..primitives import open_readonly, or_default
from ._torch import extra_safe_globals, safe_globals, single_device, torch, torch_load
from .base import check_stat, pread_all, require_safe, verify_identity

_MAX_METADATA = 1 << 30


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only what the audit allows in a DCP ``.metadata``."""

    def __init__(self, data: bytes, policy: Policy) -> None:
        super().__init__(io.BytesIO(data))
        self._policy = policy
        self._scoped = allowance_for(FormatScope.DCP_METADATA)
        self._extra = {name: obj for obj, name in extra_safe_globals(policy)}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in self._extra:
            return self._extra[full]
        decision = classify_global(full, self._policy)
        if decision.status is GlobalStatus.ALLOW or self._scoped.reason([full]) is not None:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"ckptguard: {full} is not allowed in DCP metadata")


def unpickle_metadata(data: bytes, policy: Policy) -> Any:
    return _MetadataUnpickler(data, policy).load()


# --- audited descriptors ------------------------------------------------------------------

class _Opened:
    """The folder's audited files, opened once and checked against their reports."""

    def __init__(self, folder: str, report: Report) -> None:
        self.folder = folder
        self.fds: dict[str, int] = {}
        self.reports: dict[str, Report] = {}
        try:
            for child in report.children:
                rel = os.path.relpath(child.path, folder)
                fd = open_readonly(child.path)
                self.fds[rel] = fd
                self.reports[rel] = child
                verify_identity(child.path, fd, child.identity)
        except OSError as e:
            self.close()
            raise FileChangedError(folder, f"a file of the checkpoint cannot be opened "
                                   f"({e.strerror or e})") from None
        except BaseException:
            self.close()
            raise

    def verify(self) -> None:
        for rel, fd in self.fds.items():
            verify_identity(os.path.join(self.folder, rel), fd, self.reports[rel].identity)

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            os.close(fd)

    def metadata_bytes(self, name: str) -> bytes:
        fd = self.fds.get(name)
        if fd is None:
            raise LoaderError(f"{self.folder}: {name} was not audited")
        size = os.fstat(fd).st_size
        return pread_all(fd, 0, size)

    @contextmanager
    def stream(self, path: str | os.PathLike[str]) -> Iterator[io.BufferedReader]:
        rel = os.path.relpath(os.fspath(path), self.folder)
        fd = self.fds.get(rel)
        if fd is None:
            raise LoaderError(f"{self.folder}: torch's reader asked for {rel!r}, which the "
                              "audit did not cover")
        check_stat(os.path.join(self.folder, rel), fd, self.reports[rel].identity)
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(0)
            yield f


def _reader_classes() -> tuple[type, type]:
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _FdFileSystem(FileSystem):
        def __init__(self, opened: _Opened) -> None:
            super().__init__()
            self._opened = opened

        @contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            if "r" not in mode or any(c in mode for c in "wa+x"):
                raise LoaderError("ckptguard's DCP loader only reads")
            with self._opened.stream(path) as f:
                yield f

    class AuditedReader(FileSystemReader):
        def __init__(self, opened: _Opened, policy: Policy) -> None:
            super().__init__(opened.folder)
            self.fs = _FdFileSystem(opened)
            self._opened = opened
            self._policy = policy

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            name = ".metadata" if rank is None else f"__{rank}.metadata"
            metadata = unpickle_metadata(self._opened.metadata_bytes(name), self._policy)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class AuditedPlanner(_EmptyStateDictLoadPlanner):
        def __init__(self, policy: Policy) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self._policy = policy

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            with safe_globals(self._policy):
                obj = torch_load(value, weights_only=True)
            from torch.distributed.checkpoint._traverse import set_element

            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn],
                            obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return AuditedReader, AuditedPlanner


def load_dcp(folder: str | os.PathLike[str], map_location: Any = "cpu", *,
             policy: Policy | None = None, limits: Limits | None = None) -> dict[str, Any]:
    """Audit a DCP folder, then load its state dict with torch's DCP reader (see above)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from ..analysis.dcp import is_dcp_dir
    from ..analysis.dcp_folder import audit_dcp

    path = os.fspath(folder)
    pol = or_default(policy, DEFAULT_POLICY)
    lim = or_default(limits, DEFAULT_LIMITS)
    if not os.path.isdir(path) or not is_dcp_dir(path):
        raise ScanInputError(path, "not a torch.distributed.checkpoint folder (no .metadata)")
    device = single_device(map_location)
    report = audit_dcp(path, policy=pol, limits=lim)
    require_safe(report)
    if report.format is not Format.DCP_CHECKPOINT:
        raise LoaderError(f"{path}: not a DCP checkpoint")
    opened = _Opened(path, report)
    try:
        reader_cls, planner_cls = _reader_classes()
        state: dict[str, Any] = {}
        _load_state_dict(state, storage_reader=reader_cls(opened, pol),
                         planner=planner_cls(pol), no_dist=True)
        opened.verify()
    finally:
        opened.close()
    if device.type != "cpu":
        state = _to_device(state, device)
    return state


def _to_device(value: Any, device: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return type(value)((k, _to_device(v, device)) for k, v in value.items())
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


# --- the gate's hook ------------------------------------------------------------------------

_saved: dict[str, Any] = {}


def _gated_read_metadata(self: Any, *args: Any, **kwargs: Any) -> Any:
    from . import gate

    original = _saved["read_metadata"]
    cfg = gate.current()
    if cfg is None:
        return original(self, *args, **kwargs)
    if cfg.refusal is not None:  # a gate that had to fail closed refuses every load
        raise cfg.refusal
    from torch.distributed.checkpoint.metadata import StorageMeta

    from ..analysis.dcp_folder import audit_dcp
    from ..analysis.engine import audit_bytes

    rank = kwargs.get("rank")
    path = self._get_metadata_path(rank)
    folder = os.fspath(self.path)
    name = os.path.basename(os.fspath(path))
    folder_report = None
    if os.path.isdir(folder):
        folder_report = audit_dcp(folder, policy=cfg.policy, limits=cfg.limits)
        require_safe(folder_report)
    with self.fs.create_stream(path, "rb") as f:
        data = f.read(_MAX_METADATA + 1)
    if len(data) > _MAX_METADATA:
        raise LoaderError(f"{path}: DCP metadata larger than {_MAX_METADATA} bytes")
    if folder_report is not None:
        # the metadata unpickled below must be the one whose paths and ranges were checked
        audited = next((c for c in folder_report.children
                        if os.path.basename(c.path) == name), None)
        digest = hashlib.sha256(data).hexdigest()
        if audited is None or audited.identity is None or not any(
                r.offset == 0 and r.length == len(data) and r.sha256 == digest
                for r in audited.identity.regions):
            raise FileChangedError(os.fspath(path), "the metadata differs from the audited one")
    report = audit_bytes(data, name, policy=cfg.policy, limits=cfg.limits)
    require_safe(report)
    metadata = unpickle_metadata(data, cfg.policy)
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


#: the module whose ``FileSystemReader`` the gate hooks (guard.py hooks it once torch has
#: imported it: the gate never imports torch.distributed.checkpoint itself)
MODULES: tuple[str, ...] = ("torch.distributed.checkpoint.filesystem",)


def install_gate(module_name: str = MODULES[0]) -> None:
    """Route ``FileSystemReader.read_metadata`` through the audit (idempotent)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    if "read_metadata" not in _saved:
        _saved["read_metadata"] = FileSystemReader.read_metadata
        FileSystemReader.read_metadata = _gated_read_metadata  # type: ignore[method-assign]


def uninstall_gate() -> None:
    original = _saved.pop("read_metadata", None)
    if original is None:  # never hooked: nothing to import
        return
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    if FileSystemReader.read_metadata is _gated_read_metadata:
        FileSystemReader.read_metadata = original  # type: ignore[method-assign]


__all__ = ["MODULES", "install_gate", "load_dcp", "uninstall_gate", "unpickle_metadata"]
