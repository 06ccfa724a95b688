"""Audit-then-load plumbing that needs no torch: open once, audit from that descriptor,
refuse anything not SAFE, and re-check the file's identity around the load.

The same-bytes rule (DESIGN.md "Same bytes"): the file is opened once; the audit reads it
through that descriptor with ``pread``; the loader reads the *same inode* through
``/proc/self/fd/N`` (or ``/dev/fd/N``); before tensors are handed out the descriptor's
``fstat`` (device, inode, size, mtime, ctime) and the SHA-256 of every region the audit relied
on are compared with the audit's :class:`~ckptguard.model.FileIdentity`, and the original
path must still name that inode. Any difference raises :class:`FileChangedError`.

Where the kernel grants it (Linux, a local file system, a file this process owns or
``CAP_LEASE``, nobody holding it open for writing), ``safe_load`` and the gate also take a
read lease on the descriptor right after opening it (:func:`~ckptguard.primitives.take_read_lease`),
before the audit reads a byte. While the lease is held, a writer's ``open`` waits until the
load is over (a truncate too), so the bytes ``torch.load`` parses *are* the audited
ones; :meth:`AuditedFile.verify` then finds the lease unbroken and only compares the
``fstat`` (nothing to re-read, nothing of the loaded object to compare: SECURITY.md "Same
bytes"). A broken or refused lease leaves every check of the paragraph above in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from .._native import native
from ..context import AuditedRegion
from ..errors import (
    FileChangedError,
    IncompleteScanError,
    LoaderError,
    ScanInputError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from ..model import FileIdentity, Format, Region, Report, Verdict
from ..policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from ..primitives import (
    open_readonly,
    or_default,
    read_lease_held,
    release_lease,
    take_read_lease,
)

if TYPE_CHECKING:
    from ..analysis.tensors import StorageRef

logger = logging.getLogger("ckptguard")

with contextlib.suppress(ImportError):  # the lease helpers' module (POSIX only): loaded
    import fcntl  # noqa: F401  with the loaders, not by the first load (~0.2 ms)

#: Formats the torch-backed loader reads with ``torch.load(weights_only=True)``.
TORCH_FORMATS = frozenset({Format.TORCH_ZIP, Format.TORCH_LEGACY})
#: Every format :func:`ckptguard.safe_load` can hand tensors out for.
LOADABLE_FORMATS = TORCH_FORMATS | {Format.SAFETENSORS, Format.JSON}


def require_safe(report: Report) -> None:
    """Raise unless the verdict is SAFE: UNSAFE -> UnsafeCheckpointError, INCOMPLETE ->
    IncompleteScanError. Both carry the report; every refusal is logged at WARNING on the
    ``ckptguard`` logger first."""
    if report.verdict is Verdict.SAFE:
        return
    err: UnsafeCheckpointError = (IncompleteScanError(report)
                                  if report.verdict is Verdict.INCOMPLETE
                                  else UnsafeCheckpointError(report))
    # Logged at WARNING on the "ckptguard" logger so that a framework that catches the
    # exception (accelerate logs its own at INFO) cannot hide the refusal.
    logger.warning("refused to load %s", err)
    raise err


def fd_path(fd: int, st_fd: os.stat_result | None = None) -> str | None:
    """A path that opens the same open file as ``fd`` (same inode), or None on platforms
    without one (then loaders read through a duplicate of the descriptor). ``st_fd``: the
    descriptor's ``fstat`` when the caller just took it (:func:`check_stat` returns it)."""
    base = "/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd"
    candidate = f"{base}/{fd}"
    try:
        st_link = os.stat(candidate)
    except OSError:
        return None
    if st_fd is None:
        st_fd = os.fstat(fd)
    if (st_link.st_dev, st_link.st_ino) != (st_fd.st_dev, st_fd.st_ino):
        return None
    return candidate


#: regions up to this size are re-read with one ``pread`` (``pread_all`` finishes a short one)
_ONE_PREAD = 1 << 26


def pread_all(fd: int, offset: int, length: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        b = os.pread(fd, min(length - got, 1 << 26), offset + got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def check_stat(path: str, fd: int, ident: FileIdentity | None) -> os.stat_result:
    """Cheap identity check: the descriptor's fstat and the path's stat. Returns the
    descriptor's fstat (:func:`fd_path` takes it: one fstat fewer per load)."""
    if ident is None:
        raise FileChangedError(path, "the audit recorded no file identity")
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (ident.device, ident.inode):
        raise FileChangedError(path, "the descriptor no longer refers to the audited inode")
    if st.st_size != ident.size:
        raise FileChangedError(path, f"size changed from {ident.size} to {st.st_size} bytes")
    if st.st_mtime_ns != ident.mtime_ns:
        raise FileChangedError(path, "modification time changed (the file was written to)")
    if st.st_ctime_ns != ident.ctime_ns:
        # a write, truncate, chmod or utime since the audit: the mtime may have been put
        # back with os.utime, the change time cannot be
        raise FileChangedError(path, "inode change time changed (the file was written to or "
                               "its times were reset since the audit)")
    try:
        sp = os.stat(path)
    except OSError as e:
        raise FileChangedError(path, f"the path can no longer be opened ({e.strerror or e})") \
            from None
    if (sp.st_dev, sp.st_ino) != (ident.device, ident.inode):
        raise FileChangedError(path, "the path now names a different file (it was replaced)")
    return st


def verify_identity(path: str, fd: int, ident: FileIdentity | None) -> None:
    """Full same-bytes check: stat as in :func:`check_stat`, then every region the audit
    relied on, re-read through the same descriptor: compared byte for byte with the bytes
    the audit read where the report still holds them (``context.AuditedRegion``), else
    by SHA-256."""
    check_stat(path, fd, ident)
    assert ident is not None
    regions: tuple[Region, ...] | list[Region] = ident.regions
    core = native("zipcore")
    if core is not None and type(regions) is tuple:
        # the kept bytes compared in C (one pread per run of nearby regions); the others
        # come back for their digests
        bad, rest = core.same_bytes(fd, regions, AuditedRegion)
        if bad >= 0:
            r = regions[bad]
            raise FileChangedError(
                path, f"bytes {r.offset}..{r.offset + r.length} differ from the audited ones")
        regions = [regions[i] for i in rest]
    pread = os.pread
    for r in regions:
        offset, length = r.offset, r.length
        data = pread(fd, length, offset) if length <= _ONE_PREAD else b""
        if len(data) != length:  # a long region, or a short read: read the rest
            data = pread_all(fd, offset, length)
        kept = r.audited if type(r) is AuditedRegion else None
        if len(data) != length or (data != kept if kept is not None else
                                   hashlib.sha256(data).hexdigest() != r.sha256):
            raise FileChangedError(
                path, f"bytes {offset}..{offset + length} differ from the audited ones")


@dataclass
class AuditedFile:
    """An open descriptor and the report of its audit. Close it (or use ``with``)."""

    path: str
    fd: int
    report: Report
    policy: Policy = field(default_factory=Policy)
    limits: Limits = DEFAULT_LIMITS
    #: the fast path's symbolic graph of the audited data.pkl, when it proved it and the
    #: caller asked to keep it (``open_audited(keep_graph=True)``)
    graph: object = None
    #: the audit's fast path proved data.pkl (analysis/fastpath.py): every tensor in it is
    #: a dense strided ``_rebuild_tensor_v2`` / ``_rebuild_parameter`` rebuild whose view
    #: lies inside its storage, and the only other objects are plain containers and scalars
    proven: bool = False
    #: a read lease was taken on ``fd`` before the audit read anything (``open_audited(
    #: lease=True)``): while it stays unbroken, nobody has opened the file for writing
    leased: bool = False
    #: the fast path's graph, kept where no lease was taken: a load that cannot count on
    #: the lease compares the values torch built with it (``structure.graph_difference``)
    values_graph: object = None
    #: the fast path's storage references in the order the pickle first names them (when
    #: it proved the file): whether torch may compute their offsets (loaders/offsets.py)
    storages: Mapping[str, StorageRef] | None = None

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            # given back explicitly: a lease lives as long as its open file description,
            # which a memory map of this descriptor (the safetensors loader's) keeps open
            # after close -- the caller's own later write would wait on it
            self.drop_lease_of(fd)
            os.close(fd)

    def __enter__(self) -> AuditedFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def check_stat(self) -> os.stat_result:
        return check_stat(self.path, self.fd, self.report.identity)

    def verify(self) -> bool:
        """The same-bytes check after a load. True when the kernel proved it: the read
        lease taken before the audit is unbroken, so no one has opened the file for writing
        or truncated it since, and only the ``fstat`` and the path are compared (nothing is
        re-read, and what torch parsed were the audited bytes). False when every audited
        region was re-read (:func:`verify_identity`). Raises :class:`FileChangedError`."""
        if self.leased and read_lease_held(self.fd):
            self.check_stat()
            return True
        verify_identity(self.path, self.fd, self.report.identity)
        return False

    def drop_lease(self) -> None:
        """Give the read lease back before this process opens the file for writing
        itself (a shared torch mmap does): else that open would wait on our own lease.
        The checks after the load then re-read and compare, as without a lease."""
        self.drop_lease_of(self.fd)

    def drop_lease_of(self, fd: int) -> None:
        if self.leased:
            self.leased = False
            release_lease(fd)


def take_load_lease(fd: int) -> bool:
    """:func:`~ckptguard.primitives.take_read_lease` for a load, where a lease cannot stall
    this process: only while one Python thread runs. Another thread that opens the file for
    writing from C++ while holding the GIL (``torch.save(path)``, a shared torch mmap) would
    wait on our lease while the loading thread waits for the GIL, until the kernel's
    lease-break time (45 s). Processes with more threads keep the checks after the load."""
    return _one_python_thread() and take_read_lease(fd)


def _one_python_thread() -> bool:
    return threading.active_count() == 1


def open_audited(path: str | os.PathLike[str], *, policy: Policy | None = None,
                 limits: Limits | None = None, keep_graph: bool = False,
                 lease: bool = False) -> AuditedFile:
    """Open ``path`` once and audit it from that descriptor. Does not judge the verdict.

    ``keep_graph``: keep the fast path's graph for ``engine="ckptguard"`` and meta loads
    (else it is freed with the audit; :attr:`AuditedFile.proven` says either way whether
    the fast path proved the file). ``lease``: take a read lease on the descriptor before
    the audit (:attr:`AuditedFile.leased`, :func:`take_load_lease`), for a caller that
    loads and closes the file right after and whose load will not open the file for writing
    itself (a shared torch mmap): a writer waits for it while it is held."""
    from ..analysis.engine import audit_fd

    p = os.fspath(path)
    pol = or_default(policy, DEFAULT_POLICY)
    lim = or_default(limits, DEFAULT_LIMITS)
    try:
        fd = open_readonly(p)
    except FileNotFoundError:
        raise ScanInputError(p, "no such file or directory") from None
    except OSError as e:
        raise ScanInputError(p, e.strerror or str(e)) from None
    leased = lease and take_load_lease(fd)
    graph: list[object] = []
    try:
        report = audit_fd(p, fd, policy=pol, limits=lim, graph_out=graph, keep_bytes=True)
    except BaseException:
        if leased:
            release_lease(fd)
        os.close(fd)
        raise
    g = graph[0] if graph else None
    return AuditedFile(p, fd, report, pol, lim, g if keep_graph else None, g is not None,
                       leased, None if leased else g,
                       getattr(g, "storages", None))


__all__ = [
    "LOADABLE_FORMATS",
    "TORCH_FORMATS",
    "AuditedFile",
    "LoaderError",
    "UnsupportedFormatError",
    "check_stat",
    "fd_path",
    "open_audited",
    "pread_all",
    "require_safe",
    "take_load_lease",
    "verify_identity",
]
