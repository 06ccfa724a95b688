"""The audit context: one file being audited, the descriptor it is read through, and the
findings, tensors and regions gathered so far.

Every reader and the pickle VM report into an ``AuditContext``; only the engine turns it
into a ``Report``. ``Source`` reads through one open descriptor with ``os.pread`` so the
loader can later load *the same inode* and re-check the exact regions the audit relied on.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._version import __version__
from .model import (
    FileIdentity,
    Finding,
    Format,
    Location,
    Problem,
    Region,
    Report,
    Severity,
    TensorInfo,
    combine_verdicts,
)
from .policy import DEFAULT_LIMITS, Limits, Policy


class LimitExceeded(Exception):
    """Raised inside a loop over untrusted input when a ``Limits`` bound is reached."""

    def __init__(self, limit: str, value: int | float, detail: str = "") -> None:
        self.limit = limit
        self.value = value
        self.detail = detail
        super().__init__(f"limit {limit}={value} reached" + (f": {detail}" if detail else ""))


def _builtin_sha256() -> Callable[[bytes], Any] | None:
    for name in ("_sha256", "_sha2"):  # CPython's own SHA-256: 3.11, then 3.12+
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return None


_SHA256_BUILTIN = _builtin_sha256()
#: regions up to this size are hashed by CPython's own SHA-256 (no OpenSSL to load: ~2 ms of
#: a scan's start-up); larger ones by hashlib's (OpenSSL: ~5x faster per byte)
SMALL_REGION = 64 << 10


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` in hex, the same digest whichever implementation computes it."""
    if _SHA256_BUILTIN is not None and len(data) <= SMALL_REGION:
        return str(_SHA256_BUILTIN(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()


#: the audited bytes a ``Source(keep=True)`` keeps (instead of hashing them as they are
#: read), in all: the loader's identity check compares them with the file after the load,
#: and the SHA-256 of each region is computed only when something reads it. Past this
#: budget a region is hashed as it is read (a 50k-tensor archive records ~22 MB: its
#: digests, not its bytes, are kept). Only ``open_audited`` keeps bytes (one file, for the
#: length of a load); scans hash as they read, so a folder's reports hold digests only.
KEEP_BYTES = 4 << 20

_OFFSET_SLOT = Region.__dict__["offset"].__set__
_LENGTH_SLOT = Region.__dict__["length"].__set__
_SHA_SLOT = Region.__dict__["sha256"].__set__


class AuditedRegion(Region):
    """A :class:`~ckptguard.model.Region` that still holds the bytes the audit read there:
    its ``sha256`` is computed on first access (then the bytes are let go), and the loader's
    identity check compares the bytes themselves (``audited``) while they are held. Equal to,
    hashed as, copied and pickled as the plain ``Region`` with the same digest."""

    __slots__ = ("audited",)

    audited: bytes | None

    def __init__(self, offset: int, data: bytes) -> None:
        _OFFSET_SLOT(self, offset)
        _LENGTH_SLOT(self, len(data))
        object.__setattr__(self, "audited", data)

    def __getattr__(self, name: str) -> str:
        # only reached while the sha256 slot is still empty (a slot read raised)
        if name != "sha256":
            raise AttributeError(name)
        data = self.audited
        if data is None:  # pragma: no cover - the slot is set before the bytes are dropped
            raise AttributeError(name)
        digest = sha256_hex(data)
        _SHA_SLOT(self, digest)
        object.__setattr__(self, "audited", None)
        return digest

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Region):
            return (self.offset, self.length, self.sha256) == \
                (other.offset, other.length, other.sha256)
        return NotImplemented

    __hash__ = Region.__hash__

    def __repr__(self) -> str:
        return f"Region(offset={self.offset!r}, length={self.length!r}, sha256={self.sha256!r})"

    def __reduce__(self) -> tuple[type[Region], tuple[int, int, str]]:
        return Region, (self.offset, self.length, self.sha256)


class SourceError(Exception):
    """A read failed for a reason the source can name (a remote server changed the file
    between two ranges, refused a range, timed out...). The engine records it as the
    source's own finding instead of an internal error."""

    def __init__(self, rule_id: str, message: str, evidence: dict[str, str] | None = None) -> None:
        self.rule_id = rule_id
        self.message = message
        self.evidence = dict(evidence or {})
        super().__init__(message)


def limit_text(value: float) -> str:
    """A limit as people write it: ``2147483648``, ``120`` or ``0.5``, never ``2.14748e+09``."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Source:
    """Random-access reads of one open file, counted and bounded."""

    def __init__(self, fd: int, size: int, *, deadline: float | None = None,
                 keep: bool = False) -> None:
        self.fd = fd
        self.size = size
        self.bytes_read = 0
        self.deadline = deadline
        self.depth = 0  # how many files this one is nested in (nested.py)
        #: (offset, length) -> the recorded region: an ``AuditedRegion`` holding its bytes
        #: while ``_room`` lasts (``keep``: ``KEEP_BYTES``), else a ``Region`` (hashed)
        self._regions: dict[tuple[int, int], Region] = {}
        self._room = KEEP_BYTES if keep else 0

    @classmethod
    def from_bytes(cls, data: bytes, *, keep: bool = False) -> Source:
        src = _BytesSource(data)
        src._room = KEEP_BYTES if keep else 0
        return src

    def _clip(self, offset: int, length: int) -> int:
        """The length of a read at ``offset`` that stays inside the file (0 past its end)."""
        if offset < 0 or length < 0:
            raise ValueError("negative read")
        return max(0, min(length, self.size - offset))

    def _record(self, offset: int, data: bytes) -> None:
        """Keep the region for the same-bytes check at load time: its bytes while the
        budget lasts (a ``keep`` source), else its SHA-256."""
        n = len(data)
        if n <= self._room:
            self._room -= n
            self._regions[(offset, n)] = AuditedRegion(offset, data)
        else:
            self._regions[(offset, n)] = Region(offset, n, sha256_hex(data))

    def record_all(self, regions: list[tuple[tuple[int, int], AuditedRegion]],
                   nbytes: int) -> None:
        """Record the zip prover's regions (``((offset, length), region)`` in read order,
        ``nbytes`` in all) as ``_record`` would, one by one."""
        if nbytes <= self._room:
            self._room -= nbytes
            self._regions.update(regions)
            return
        for (offset, _), region in regions:
            data = region.audited
            assert data is not None
            self._record(offset, data)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            # the source knows the deadline, not the limit: the report names the limit
            # (AuditContext.limit_hit)
            raise LimitExceeded("max_seconds", 0, "wall-time budget spent")

    def read(self, offset: int, length: int, *, record: bool = False) -> bytes:
        """Read ``length`` bytes at ``offset`` (fewer at end of file). ``record=True`` keeps
        the region's SHA-256 for the same-bytes check at load time."""
        length = self._clip(offset, length)
        if length == 0:
            return b""
        chunks = []
        got = 0
        while got < length:
            b = os.pread(self.fd, min(length - got, 1 << 26), offset + got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        self.bytes_read += len(data)
        if record:
            self._record(offset, data)
        return data

    def regions(self) -> tuple[Region, ...]:
        """Every recorded region in offset order; those whose bytes are kept are
        :class:`AuditedRegion` (their digest computed when first read)."""
        regions = self._regions
        return tuple(map(regions.__getitem__, sorted(regions)))


class _BytesSource(Source):
    def __init__(self, data: bytes) -> None:
        super().__init__(-1, len(data))
        self._data = memoryview(data)

    def read(self, offset: int, length: int, *, record: bool = False) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative read")
        data = bytes(self._data[offset : offset + length])
        self.bytes_read += len(data)
        if record:
            self._record(offset, data)
        return data


class SliceSource(Source):
    """A byte range of another source, read as a file of its own (a torch.save archive
    stored inside a .distcp file or a .pt2 member). Reads go through the parent, so the
    regions the nested audit relies on are recorded in the outer file's coordinates."""

    def __init__(self, parent: Source, offset: int, length: int) -> None:
        super().__init__(parent.fd, max(0, min(length, parent.size - offset)),
                         deadline=parent.deadline)
        self.parent = parent
        self.base = offset
        self.depth = parent.depth + 1

    def read(self, offset: int, length: int, *, record: bool = False) -> bytes:
        length = self._clip(offset, length)
        if length == 0:
            return b""
        data = self.parent.read(self.base + offset, length, record=record)
        self.bytes_read += len(data)
        return data

    def regions(self) -> tuple[Region, ...]:
        return self.parent.regions()


@dataclass
class AuditContext:
    """Mutable state of one file's audit."""

    path: str
    source: Source
    policy: Policy
    limits: Limits = DEFAULT_LIMITS
    findings: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    #: audits ``source`` as one file called ``name`` and returns its format: the engine
    #: sets itself here, so the format auditors below it that meet files inside files (a
    #: .pt2 member, a .distcp byte range: ``analysis/nested.py``) never import it
    audit_file: Callable[[AuditContext, str], Format] | None = field(
        default=None, repr=False, compare=False)
    _seen: set[tuple[str, str | None, int | None, str]] = field(default_factory=set)
    #: keep the fast path's symbolic graph of an accepted data.pkl (engine="ckptguard"
    #: loads it); a scan lets it go as soon as the tensors are recorded
    keep_graph: bool = False
    graph: object = None

    def loc(self, member: str | None = None, offset: int | None = None) -> Location:
        return Location(self.path, member, offset)

    def add(
        self,
        rule_id: str,
        message: str,
        *,
        member: str | None = None,
        offset: int | None = None,
        evidence: dict[str, str] | None = None,
        severity: Severity | None = None,
    ) -> None:
        """Record a finding (identical rule+place+message is recorded once)."""
        key = (rule_id, member, offset, message)
        if key in self._seen:
            return
        self._seen.add(key)
        from .rules import make_finding  # the rule table: imported by the first finding

        self.findings.append(
            make_finding(rule_id, message, self.loc(member, offset), evidence=evidence,
                         severity=severity)
        )

    def limit_hit(self, exc: LimitExceeded, *, member: str | None = None,
                  offset: int | None = None) -> None:
        value = self.limits.max_seconds if exc.limit == "max_seconds" else exc.value
        self.add(
            "CKG901",
            f"audit stopped: limit {exc.limit}={limit_text(value)} reached"
            + (f" ({exc.detail})" if exc.detail else ""),
            member=member, offset=offset, evidence={"limit": exc.limit},
        )

    def problem(self, message: str, *, member: str | None = None,
                offset: int | None = None) -> None:
        self.problems.append(Problem(message, self.loc(member, offset)))
        self.add("CKG902", message, member=member, offset=offset)

    def parent_report(self, fmt: Format, children: tuple[Report, ...] = (), *,
                      metadata: dict[str, str] | None = None,
                      tensors: tuple[TensorInfo, ...] = (), bytes_read: int = 0) -> Report:
        """The report of a unit made of files (a model folder, a DCP folder, a hub repo):
        its own findings, and the worst of its own verdict and its children's."""
        findings = tuple(self.findings)
        problems = tuple(self.problems)
        return Report(path=self.path, format=fmt,
                      verdict=combine_verdicts(findings, problems, children),
                      findings=findings, problems=problems, tensors=tensors,
                      metadata=tuple(sorted((metadata or {}).items())),
                      bytes_read=bytes_read, limits=self.limits.as_items(),
                      tool_version=__version__, children=children)


def identity_of(fd: int, regions: tuple[Region, ...] = ()) -> FileIdentity:
    st = os.fstat(fd)
    return FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                        regions)


__all__ = ["AuditContext", "AuditedRegion", "LimitExceeded", "SliceSource", "Source", "SourceError",
           "identity_of"]
